"""Ranker settings chosen on validation, never on test: one ranker per setting of the
grid (``--negatives-per-list`` x ``--missed-per-list`` x ``--residual`` x ``--losses`` x
``--ease-candidates`` x ``--signals``),
each on the same model's retrieval and the same held-out users, scored end to end on the
validation period of those users (the 20% of validation users not used to fit: their
top-``num_candidates`` retrieved titles, training titles excluded, ranked, against
their validation interactions).

    .venv/bin/python bench/ranker_settings.py --features data/features --model data/model \\
        [--negatives-per-list 5 10 20 40] [--missed-per-list 0 5] [--residual on off] \\
        [--losses approx_ndcg list_mle] [--ranking-epochs 20]

Prints one row per setting: NDCG@10 / Recall@10 / MRR, the ranked order against the
retrieval order of the same candidates (paired bootstrap 95% CI over users), and each
setting against the chosen one. The choice is the best validation NDCG@10
(``train_ranking.choose``); a gain inside the CI is called not significant. Only then
is the chosen ranker scored on test, once, reported only. The model directory is only
read: the rankers are trained in memory and never saved. The last line is the choice.
"""

import argparse
import dataclasses
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import _env  # noqa: E402,F401

from pipelines import artifact  # noqa: E402
from pipelines import train_ranking as trk  # noqa: E402
from pipelines.config import LOSS_NAMES, SIGNALS, RankingConfig  # noqa: E402
from pipelines.formatting import interval  # noqa: E402
from pipelines.tables import FeatureTables  # noqa: E402


def ci(d: dict) -> str:
    """``+0.0065 [-0.0017, +0.0140]``, with "(n.s.)" when the interval holds 0."""
    if d["difference"] is None:
        return "-"
    return interval(d) + ("" if d["significant"] else " (n.s.)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--model", default="data/model",
                        help="model directory with a trained retrieval model (only read)")
    parser.add_argument("--negatives-per-list", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--missed-per-list", type=int, nargs="+",
                        default=[RankingConfig().missed_per_list],
                        help="scored titles retrieval missed, added per list (0 = only what "
                             "serving shows)")
    parser.add_argument("--residual", choices=("on", "off"), nargs="+", default=["on"],
                        help="the ranker's form: retrieval score x weight + a correction "
                             "(on), or a free scorer (off)")
    parser.add_argument("--losses", nargs="+", default=[RankingConfig().loss], choices=LOSS_NAMES)
    parser.add_argument("--ease-candidates", type=int, nargs="+",
                        default=[RankingConfig().ease_candidates],
                        help="titles EASE adds to the two-tower's candidates (0 = none)")
    parser.add_argument("--signals", nargs="+", default=[",".join(RankingConfig().signals)],
                        help="candidate signal sets, each comma-separated from "
                             f"{','.join(SIGNALS)}")
    parser.add_argument("--ranking-epochs", type=int, default=RankingConfig().max_epochs)
    parser.add_argument("--ranking-seed", type=int, default=RankingConfig().seed)
    args = parser.parse_args()

    default = RankingConfig()
    tick = time.perf_counter()
    tables = FeatureTables.load(args.features)
    retrieval = artifact.RetrievalArtifact(args.model).for_tables(tables)
    print(f"loaded {args.features} and the retrieval model of {args.model} "
          f"({time.perf_counter() - tick:.0f} s)", flush=True)

    grid = {"negatives_per_list": args.negatives_per_list, "missed_per_list": args.missed_per_list,
            "residual": [r == "on" for r in args.residual], "loss": args.losses,
            "ease_candidates": args.ease_candidates,
            "signals": [tuple(s.split(",")) if s else () for s in args.signals]}
    short = {"negatives_per_list": "{} negatives", "missed_per_list": "{} missed",
             "residual": "residual {}", "loss": "{}", "ease_candidates": "{} EASE candidates",
             "signals": "signals {}"}
    varied = [k for k, values in grid.items() if len(values) > 1] or ["negatives_per_list"]
    settings = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    configs, records, validation, rankers, training = {}, {}, {}, {}, {}
    for i, setting in enumerate(settings, 1):
        shown = {**setting, "residual": "on" if setting["residual"] else "off",
                 "signals": "+".join(setting["signals"]) or "none"}
        key = ", ".join(short[k].format(shown[k]) for k in varied)
        loss = setting["loss"]
        # One seed: the same held-out users in every setting, so they compare paired.
        # What this model cannot feed (EASE without its weights, the franchise signal
        # without relations) is left out, as the ranking stage leaves it out.
        config = trk.feasible(dataclasses.replace(
            default, **setting, max_epochs=args.ranking_epochs, seed=args.ranking_seed), retrieval)
        tick = time.perf_counter()
        metrics, trained, per_user = trk.fit_and_evaluate(tables, retrieval, config, [loss],
                                                          test=False, progress=False)
        configs[key], records[key], rankers[key] = config, per_user[loss], trained[loss]
        validation[key] = metrics["validation"]
        training[key] = metrics["losses"][loss]["training"]
        v = validation[key]["losses"][loss]
        print(f"[{i}/{len(settings)}] {key}: {training[key]['train_lists']:,} lists, "
              f"{training[key]['epochs']} epochs (best {training[key]['best_epoch']}), "
              f"{time.perf_counter() - tick:.0f} s; validation NDCG@10 {v['ranked']['ndcg@10']:.4f} "
              f"(retrieval order {v['retrieval_order']['ndcg@10']:.4f})", flush=True)

    # Paired comparisons need the same users in every setting.
    users = {(v["held_out_users"], v["users"]) for v in validation.values()}
    assert len(users) == 1, f"settings scored on different held-out users: {users}"
    choice = trk.choose(records)
    chosen = choice["chosen"]
    first = next(iter(validation.values()))
    held, scored = first["held_out_users"], first["users"]
    e2e = {key: validation[key]["losses"][configs[key].loss] for key in validation}

    print(f"\nvalidation (held-out users): end to end over each setting's candidates for "
          f"{scored:,} users with a validation interaction ({held:,} held out from fitting; "
          f"{first['fit_users']:,} fit the rankers)\n")
    print("| setting | NDCG@10 | Recall@10 | MRR | NDCG@10 - retrieval order [95% CI] "
          "| NDCG@10 - chosen [95% CI] | best epoch |")
    print("|---|---|---|---|---|---|---|")
    for key, m in e2e.items():
        label = key + (" (default)" if all(getattr(configs[key], k) == getattr(default, k)
                                           for k in grid) else "")
        label = f"**{label}** (chosen)" if key == chosen else label
        vs_chosen = "-" if key == chosen else ci(choice["differences"][f"{chosen} - {key}"])
        print(f"| {label} | {m['ranked']['ndcg@10']:.4f} | {m['ranked']['recall@10']:.4f} | "
              f"{m['ranked']['mrr']:.4f} | {ci(m['differences']['ranked - retrieval_order']['ndcg@10'])} "
              f"| {vs_chosen} | {training[key]['best_epoch']} |")
    base = e2e[chosen]
    for order in ("retrieval_order", "popularity_order"):
        print(f"| {order.replace('_', ' ')} | {base[order]['ndcg@10']:.4f} | "
              f"{base[order]['recall@10']:.4f} | {base[order]['mrr']:.4f} | | | |")
    print("\n(NDCG@10 - chosen: the chosen setting's gain over that row's, paired over the same "
          "users; n.s. = the 95% CI holds 0.)")

    # Test, once, for the chosen setting only: reported, nothing chosen from it.
    tick = time.perf_counter()
    test = trk.end_to_end_on_test(tables, retrieval, rankers[chosen].ranker, configs[chosen])
    print(f"\ntest, reporting only (computed once, after the choice; {test['users']:,} test users, "
          f"{time.perf_counter() - tick:.0f} s): {chosen}: ranked NDCG@10 "
          f"{test['ranked']['ndcg@10']:.4f} / Recall@10 {test['ranked']['recall@10']:.4f} / MRR "
          f"{test['ranked']['mrr']:.4f}; retrieval order {test['retrieval_order']['ndcg@10']:.4f} / "
          f"{test['retrieval_order']['recall@10']:.4f} / {test['retrieval_order']['mrr']:.4f}")

    ties = [f"{pair.split(' - ', 1)[1]} ({ci(d)})" for pair, d in choice["differences"].items()
            if not d["significant"]]
    verdict = ("the only setting" if not choice["differences"] else
               "significantly better than every other setting" if not ties else
               "not significantly better than " + ", ".join(ties))
    print(f"chosen on validation NDCG@10: {chosen} ({choice['means'][chosen]:.4f}), {verdict}; "
          "current default " + ", ".join(f"{k}={getattr(default, k)}" for k in grid))

if __name__ == "__main__":
    main()
