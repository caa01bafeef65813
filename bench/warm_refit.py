"""How many epochs a warm-started refit of the two-tower needs to match a cold one, chosen
on validation data only (the walk-forward test and the release refit warm: their epoch
count, ``walk_forward.WARM_EPOCHS``, comes from here).

    .venv/bin/python bench/warm_refit.py --db data/anirank.db --features data/features

The refits of ``walk-forward`` and ``release`` start from the model fitted one period
earlier. The same step one period earlier, where validation can judge it:

1. ``earlier``: feature tables with the cutoff moved back one period (``T - h``), and
   the two-tower fitted on them with early stopping (its validation is ``[T - h, T)``).
2. The selection tables at ``T`` with ``earlier``'s vocabularies (as a refit's are the
   model it starts from), and on them: a cold two-tower early-stopped on validation
   ``[T, T + h)`` (the epochs a cold refit would take; its best epoch chosen on this same
   validation, so the comparison favours it), and warm starts from ``earlier`` trained
   for K epochs each.
3. Each on validation ``[T, T + h)``: Recall@100 and NDCG@10 over every title, and the
   paired bootstrap CI (users) of warm minus cold. The last line: the smallest K from
   which every K tried is within noise of cold or above it on both metrics (each CI's
   upper end at or above 0), and its time against the cold fit's.
"""

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import _env  # noqa: E402,F401

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipelines import artifact, features, protocol, train_retrieval  # noqa: E402
from pipelines.config import FeatureConfig, RetrievalConfig  # noqa: E402
from pipelines.formatting import interval  # noqa: E402
from pipelines.tables import FeatureTables, load_schema  # noqa: E402


def validation(model, tables) -> dict:
    queries = train_retrieval.embed(model.query_tower, tables.user_raw)
    titles = train_retrieval.embed(model.candidate_tower, tables.anime_raw)
    per_user = {}
    protocol.rank_metrics(lambda r: queries[r] @ titles.T, tables, "validation", per_user=per_user)
    return per_user


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="data/anirank.db")
    parser.add_argument("--features", default="data/features",
                        help="the selection run's feature tables (their cutoff T and period h)")
    parser.add_argument("--epochs", default="2,3,4,6", help="warm epoch counts K to try")
    args = parser.parse_args()
    schema = load_schema(args.features)
    split = schema["split"]
    config = FeatureConfig.from_dict(schema["config"])
    as_of, h = int(split["as_of"]), int(round(split["horizon_days"] * 86_400))
    retrieval = RetrievalConfig()
    with tempfile.TemporaryDirectory(prefix="anirank-warm-") as work:
        work = Path(work)
        earlier = dataclasses.replace(
            config, as_of=pd.Timestamp(as_of - h, unit="s").isoformat(), horizon_days=h / 86_400)
        features.run(args.db, work / "earlier", earlier, progress=False)
        tick = time.perf_counter()
        train_retrieval.run(work / "earlier", work / "earlier_model", retrieval, progress=True,
                            input="memory")
        print(f"earlier model (cutoff T - h): {time.perf_counter() - tick:.0f} s")
        inputs = features.model_inputs(artifact.read_json(work / "earlier_model", artifact.CONFIG))
        pinned = dataclasses.replace(config, as_of=pd.Timestamp(as_of, unit="s").isoformat(),
                                     horizon_days=h / 86_400)
        features.run(args.db, work / "now", pinned, progress=False, inputs=inputs)
        tables = FeatureTables.load(work / "now")
        tick = time.perf_counter()
        cold, training = train_retrieval.train(tables, retrieval, progress=True)
        cold_seconds = time.perf_counter() - tick
        per_user = {"cold": validation(cold, tables)}
        seconds = {"cold": (training["best_epoch"], cold_seconds)}
        for k in (int(x) for x in args.epochs.split(",")):
            tick = time.perf_counter()
            warm, _ = train_retrieval.train(tables, retrieval, progress=False, epochs=k,
                                            warm_from=work / "earlier_model")
            seconds[f"warm {k}"] = (k, time.perf_counter() - tick)
            per_user[f"warm {k}"] = validation(warm, tables)
    users = int(np.isfinite(per_user["cold"]["recall@100"]).sum())
    print(f"\nvalidation [T, T+h), {users:,} users; cold = early-stopped (best epoch chosen "
          "on this validation)")
    print(f"{'model':10} {'epochs':>6} {'seconds':>8} {'R@100':>8} {'N@10':>8}  "
          "warm - cold R@100 (95% CI)        warm - cold N@10 (95% CI)")
    passing = {}
    for name, values in per_user.items():
        epochs, secs = seconds[name]
        line = (f"{name:10} {epochs:6d} {secs:8.1f} {protocol.mean(values['recall@100']):8.4f} "
                f"{protocol.mean(values['ndcg@10']):8.4f}")
        if name != "cold":
            d = {m: protocol.paired_bootstrap(values[m], per_user["cold"][m])
                 for m in ("recall@100", "ndcg@10")}
            line += f"  {interval(d['recall@100']):32} {interval(d['ndcg@10'])}"
            passing[name] = all(x["ci"][1] >= 0 for x in d.values())
        print(line)
    names = list(passing)
    chosen = next((n for i, n in enumerate(names) if all(passing[m] for m in names[i:])), None)
    if chosen:
        print(f"warm starts within noise of (or above) cold on both metrics from {chosen} "
              f"epochs on: {seconds[chosen][1] / seconds['cold'][1]:.2f}x the cold fit's time")
    else:
        print("no warm start tried matches the cold refit: keep cold refits")


if __name__ == "__main__":
    main()
