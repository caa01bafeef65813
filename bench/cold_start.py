"""Does training the candidate tower on titles made to look new (``RetrievalConfig.
cold_start_dropout``) let it serve titles first listed after the cutoff, and at what cost
to the titles it knows? Judged on validation only: the rate it picks is the default.

    .venv/bin/python bench/cold_start.py --features data/features --rates 0,0.1,0.25

For each rate, the two-tower is trained on the feature tables (the same seed, early
stopping as the pipeline does it) and measured on the validation period ``[T, T + h)``:

- every title it knows: Recall@100 and NDCG@10 of validation's interactions;
- the new-title slice (``protocol.new_title_slice``, the titles no one had listed before
  ``T``, embedded from their metadata): the shelf's hit@10 against the period's
  popularity (which counts the period itself) and random order, and the catalog's
  hit@100 (a new title among the 100 candidates at all).

- every title of the period, known and new ranked together (what a user is served):
  Recall@100 and NDCG@10 of all validation interactions.

Each rate's line gives paired bootstrap CIs (users) against rate 0. The verdict: the
rate with the best Recall@100 over known and new titles together whose CI against rate
0 is above zero and whose NDCG@10 CI reaches zero or above (no measurable loss at the
top of the list); rate 0 when none is.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import _env  # noqa: E402,F401

import numpy as np  # noqa: E402

from pipelines import protocol, train_retrieval  # noqa: E402
from pipelines.config import RetrievalConfig  # noqa: E402
from pipelines.formatting import interval  # noqa: E402
from pipelines.tables import FeatureTables  # noqa: E402


def measure(tables: FeatureTables, rate: float, seed: int) -> dict:
    model, summary = train_retrieval.train(
        tables, RetrievalConfig(cold_start_dropout=rate, seed=seed), progress=False)
    queries = train_retrieval.embed(model.query_tower, tables.user_raw)
    known = train_retrieval.embed(model.candidate_tower, tables.anime_raw)
    new = train_retrieval.embed(model.candidate_tower, tables.new_anime_raw)
    per_user = {}
    protocol.rank_metrics(lambda r: queries[r] @ known.T, tables, "validation", per_user=per_user)
    return {"epochs": summary["best_epoch"], "per_user": per_user,
            "slice": protocol.new_title_slice(queries, known, new, tables, "validation")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default="data/features",
                        help="feature tables with a cutoff (and so a new-title slice)")
    parser.add_argument("--rates", default="0,0.1,0.25", help="cold-start dropout rates to try")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tables = FeatureTables.load(args.features)
    if tables.new_entries is None:
        sys.exit(f"error: {args.features} has no new-title slice (new_entries.parquet); "
                 "rebuild it with `python -m pipelines features`.")
    rates = [float(r) for r in args.rates.split(",")]
    if rates[0] != 0:
        rates = [0.0, *rates]
    runs = {}
    for rate in rates:
        runs[rate] = measure(tables, rate, args.seed)
        s = runs[rate]["slice"]
        print(f"rate {rate:<5} best epoch {runs[rate]['epochs']}: validation R@100 "
              f"{np.nanmean(runs[rate]['per_user']['recall@100']):.4f} NDCG@10 "
              f"{np.nanmean(runs[rate]['per_user']['ndcg@10']):.4f} | new titles "
              f"({s['titles']} titles, {s['users']} users): shelf hit@10 "
              f"{s['hit@10']['two-tower']:.3f} (period popularity {s['hit@10']['period popularity']:.3f}, "
              f"random {s['hit@10']['random']:.3f}) | known and new titles together "
              f"({s['catalog']['users']} users): R@100 {s['catalog']['recall@100']:.4f} "
              f"NDCG@10 {s['catalog']['ndcg@10']:.4f}, a new title in the top 100 "
              f"{s['catalog']['new_hit@100']:.3f}, new share of the top 100 "
              f"{s['catalog']['new_share']:.3f}", flush=True)
    base = runs[0.0]
    chosen = 0.0
    best = base["slice"]["catalog"]["recall@100"]
    for rate in rates[1:]:
        run = runs[rate]
        d = {m: protocol.paired_bootstrap(run["per_user"][m], base["per_user"][m])
             for m in ("recall@100", "ndcg@10")}
        both = {m: protocol.paired_bootstrap(run["slice"]["catalog_per_user"][m],
                                             base["slice"]["catalog_per_user"][m])
                for m in ("recall@100", "ndcg@10")}
        shelf = protocol.paired_bootstrap(run["slice"]["per_user"]["two-tower"],
                                          base["slice"]["per_user"]["two-tower"])
        print(f"rate {rate} - rate 0: known titles R@100 {interval(d['recall@100'])}, "
              f"NDCG@10 {interval(d['ndcg@10'])}; shelf hit@10 {interval(shelf)}; known and "
              f"new together R@100 {interval(both['recall@100'])}, NDCG@10 "
              f"{interval(both['ndcg@10'])}")
        # What a user gets: every title of the period, known or new, ranked together.
        gain = both["recall@100"]["ci"][0] is not None and both["recall@100"]["ci"][0] > 0
        no_loss = both["ndcg@10"]["ci"][1] is not None and both["ndcg@10"]["ci"][1] >= 0
        score = run["slice"]["catalog"]["recall@100"]
        if gain and no_loss and score > best:
            chosen, best = rate, score
    print(f"verdict: cold_start_dropout={chosen}")


if __name__ == "__main__":
    main()
