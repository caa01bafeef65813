"""The query tower's history, ablated: the two-tower model with and without it (same
seed, same data), Recall@100 and NDCG@10 on validation (every validation user) and on
test, the paired bootstrap CI of each difference, and the training cost.

    .venv/bin/python bench/history_ablation.py --features data/features [--seeds 0 1 2]

Settings are judged on validation; test is the one look at the chosen model (`make run`
reports the same test difference as "two-tower - without history"). Training cost:
epochs, fitting seconds (validation passes left out) and examples/s as the runs measured
them, and examples/s of both models in interleaved windows of the same steps (best of
three: the machine is shared, the fastest window is the least disturbed). The last line
is the test Recall@100 difference of the first seed.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import _env  # noqa: E402,F401

import tensorflow as tf  # noqa: E402

from pipelines import protocol  # noqa: E402
from pipelines.config import RetrievalConfig  # noqa: E402
from pipelines.formatting import interval, num  # noqa: E402
from pipelines.tables import FeatureTables  # noqa: E402
from pipelines.train_retrieval import embed, train, training_dataset, uses_history  # noqa: E402
from towers.model import TwoTowerModel  # noqa: E402

METRICS = ("recall@100", "ndcg@10")


def scores(model, tables: FeatureTables) -> dict:
    """``{split: (means, per-user values)}`` of a trained model on validation and test."""
    candidates = embed(model.candidate_tower, tables.anime_raw)
    queries = embed(model.query_tower, tables.user_raw)
    out = {}
    for split in ("validation", "test"):
        per_user = {}
        means = protocol.rank_metrics(lambda r: queries[r] @ candidates.T, tables, split,
                                      per_user=per_user)
        out[split] = (means, per_user)
    return out


def throughput(tables: FeatureTables, configs: dict, steps: int, repeats: int = 3) -> dict:
    """Examples/s of each config's model: interleaved windows of ``steps`` steps, best kept."""
    built = {}
    for name, config in configs.items():
        ds, _ = training_dataset(tables, config)
        ds = ds.repeat()
        model = TwoTowerModel(tables.schema, config)
        model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
        model.fit(ds, steps_per_epoch=5, epochs=1, verbose=0)  # trace and warm up
        built[name] = (model, ds)
    best = {name: float("inf") for name in configs}
    for _ in range(repeats):
        for name, (model, ds) in built.items():
            tick = time.perf_counter()
            model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
            best[name] = min(best[name], time.perf_counter() - tick)
    return {name: steps * configs[name].batch_size / best[name] for name in configs}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    tables = FeatureTables.load(args.features)
    if not uses_history(tables, RetrievalConfig()):
        sys.exit(f"{args.features} has no history feature: rebuild it with "
                 "`python -m pipelines features` (and --history-length above 0).")
    first = None
    for seed in args.seeds:
        configs = {"with history": RetrievalConfig(seed=seed),
                   "without history": RetrievalConfig(seed=seed, history=False)}
        runs = {}
        for name, config in configs.items():
            model, training = train(tables, config, progress=False)
            runs[name] = (scores(model, tables), training)
        print(f"seed {seed}")
        print(f"  {'model':<16} {'split':<10} " + " ".join(f"{m:>10}" for m in METRICS)
              + "  epochs  fit s  examples/s")
        for name, (by_split, t) in runs.items():
            for split, (means, _) in by_split.items():
                print(f"  {name:<16} {split:<10} " + " ".join(num(means[m], '.4f', 10) for m in METRICS)
                      + f"  {t['epochs']:>6}  {t['fit_seconds']:5.0f}  {t['examples_per_second']:>10,.0f}")
        for split in ("validation", "test"):
            per_user = {name: runs[name][0][split][1] for name in runs}
            d = protocol.differences(per_user, "with history", ["without history"], METRICS)
            d = d["with history - without history"]
            print(f"  with - without history, {split} ({d['recall@100']['users']:,} users): "
                  + "; ".join(f"{m} {interval(d[m], ', 95% CI ')}" for m in METRICS))
            if first is None and split == "test":
                first = d["recall@100"]
    speed = throughput(tables, {name: RetrievalConfig(history=name == "with history")
                                for name in ("with history", "without history")}, args.steps)
    print("training examples/s, interleaved windows (best of 3): "
          + ", ".join(f"{name} {v:,.0f}" for name, v in speed.items())
          + f"; with / without {speed['with history'] / speed['without history']:.2f}")
    print(f"test Recall@100, with - without history (seed {args.seeds[0]}): "
          f"{interval(first, ', 95% CI ')}")


if __name__ == "__main__":
    main()
