"""Retrieval training input: every pair in memory (the default on one machine) against
the pairs streamed from shard files (``--input stream``, what several workers use).

    .venv/bin/python bench/train_stream.py --features data/features [--repeats 3]

1. Training throughput (examples/s): the same model and config on each input, whole
   epochs (each input's own start of an epoch included: the memory input refills a
   shuffle buffer of every pair, the stream one a buffer of 64 batches), interleaved,
   the best epoch of each kept; the last line of the table is the ratio stream / memory.
2. The input's own memory: each input in a fresh process reads one epoch of batches
   (the raw features gathered, no model) and reports its peak RSS above the RSS after
   loading the feature tables, which both share (the peak is reset after loading:
   /proc/self/clear_refs), and pairs/s (the stream's shard writing included).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import _env  # noqa: E402,F401

import tensorflow as tf  # noqa: E402

from pipelines import fitting  # noqa: E402
from pipelines.config import RetrievalConfig  # noqa: E402
from pipelines.tables import FeatureTables  # noqa: E402
from pipelines.train_retrieval import batch_features, training_dataset, write_training_pairs  # noqa: E402
from towers.model import TwoTowerModel  # noqa: E402


def dataset(tables, config, kind, work):
    if kind == "memory":
        return training_dataset(tables, config)[0]
    files = write_training_pairs(tables, work, config.seed)
    return fitting.stream_dataset(files, batch_features(tables), config.batch_size, config.seed)


def build(tables, kind, work):
    """A compiled model and its input (one epoch per pass), already traced."""
    config = RetrievalConfig()
    ds = dataset(tables, config, kind, work)
    model = TwoTowerModel(tables.schema, config)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    model.fit(ds.take(5), epochs=1, verbose=0)
    return model, ds


def epoch(model, ds):
    tick = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0)
    return time.perf_counter() - tick


def memory_mb(field):
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def input_only(features, kind):
    """One epoch of ``kind``'s batches in this process: its peak RSS above the tables'."""
    tables = FeatureTables.load(features)
    tables.pairs("train")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the RSS now
    loaded = memory_mb("VmRSS")
    with tempfile.TemporaryDirectory(prefix="anirank-bench-") as work:
        tick = time.perf_counter()
        ds = dataset(tables, RetrievalConfig(), kind, Path(work))
        pairs = sum(int(tf.shape(b["sampling_probability"])[0]) for b in ds)
        seconds = time.perf_counter() - tick
    print(json.dumps({"input": kind, "pairs": pairs, "seconds": seconds,
                      "tables_mb": loaded, "peak_mb": memory_mb("VmHWM")}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-throughput", action="store_true",
                        help="only the input's memory (for a world too big to train here)")
    parser.add_argument("--input-only", choices=("memory", "stream"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.input_only:
        return input_only(args.features, args.input_only)
    tables = FeatureTables.load(args.features)
    batch = RetrievalConfig().batch_size
    pairs = len(tables.pairs("train"))
    print(f"{pairs:,} training pairs, batch {batch}")
    if not args.skip_throughput:
        with tempfile.TemporaryDirectory(prefix="anirank-bench-") as work:
            recipes = {kind: build(tables, kind, Path(work) / kind) for kind in ("memory", "stream")}
            # Interleaved windows, the best of each kept: the machine is shared, and the
            # fastest window is the least disturbed measurement of either input.
            best = {kind: float("inf") for kind in recipes}
            for _ in range(args.repeats):
                for kind, (model, ds) in recipes.items():
                    best[kind] = min(best[kind], epoch(model, ds))
        print(f"{'input':<10}{'epoch s':>9}{'examples/s':>12}")
        rate = {kind: pairs / s for kind, s in best.items()}
        for kind, seconds in best.items():
            print(f"{kind:<10}{seconds:>9.1f}{rate[kind]:>12,.0f}")
        print(f"stream / memory training throughput: {rate['stream'] / rate['memory']:.2f}x")
    print(f"{'input':<10}{'pairs/s':>12}{'tables MB':>11}{'peak MB':>9}{'input MB':>10}")
    for kind in ("memory", "stream"):
        out = subprocess.run([sys.executable, __file__, "--features", args.features,
                              "--input-only", kind], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{kind:<10}{r['pairs'] / r['seconds']:>12,.0f}{r['tables_mb']:>11,.0f}"
              f"{r['peak_mb']:>9,.0f}{r['peak_mb'] - r['tables_mb']:>10,.0f}")


if __name__ == "__main__":
    main()
