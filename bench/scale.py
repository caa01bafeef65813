"""How each stage grows with the data: synthetic worlds of about 1M and 7M entries (30M
and 100M where the machine allows), each stage in its own process, its wall time and
peak resident memory, and the growth exponent between sizes (time ~ n^a, RSS ~ n^b).

    .venv/bin/python bench/scale.py [--sizes 1M 7M 30M] [--workdir /tmp/anirank-scale]

Stages, as a user runs them: ``synth``; ``features``; ``train-retrieval`` for one epoch
with ``--no-ease --input stream`` (the two-tower's fit from shards, whose
memory does not grow with the pairs, its test metrics and the ScaNN index; the epoch's
own seconds are read from ``metrics.json``); ``EASE`` in a process of its own, as that
stage fits it unless ``--no-ease`` (the Gram matrix, the lambda sweep on validation,
the test pass: ``baselines.fit_ease`` and ``protocol.rank_metrics``, no TensorFlow),
which grows with the titles cubed more than with the entries; ``serving.batch`` over
every user. The last line is the feature stage's memory exponent: 0 is memory flat in
the number of entries (issue 21's target), 1 is memory that grows with it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# World shapes: the default world's proportions grown towards the MyAnimeList 2020 dump
# (325k users, 17.5k titles, 109M rows). Entries are users x entries per user.
SIZES = {
    "1M": dict(users=4_000, anime=5_000, entries_per_user=250),
    "7M": dict(users=23_000, anime=15_000, entries_per_user=310),
    "30M": dict(users=100_000, anime=17_500, entries_per_user=300),
    "100M": dict(users=325_000, anime=17_500, entries_per_user=310),
}


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one command, from that child's own rusage."""
    tick = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"failed (status {status}): {' '.join(command)}")
    return time.perf_counter() - tick, usage.ru_maxrss / 1024 / 1024


STAGES = ("synth", "features", "train-retrieval", "ease", "batch")
# EASE in a process of its own, as the retrieval stage fits it (see the docstring).
EASE_ALONE = ("import sys\n"
              "from pipelines import baselines, protocol\n"
              "from pipelines.tables import FeatureTables\n"
              "tables = FeatureTables.load(sys.argv[1])\n"
              "protocol.rank_metrics(baselines.fit_ease(tables)['scorer'], tables, 'test')\n")


def measure(size: str, work: Path, last: str = "batch", ease: bool = True) -> dict:
    """Every stage up to ``last`` (of ``STAGES``, each needing the ones before it) on
    the world of ``size``; returns {stage: (seconds, GB)} and counts."""
    shape = SIZES[size]
    work = work / size
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db, features, model = work / "anirank.db", work / "features", work / "model"
    stage = [sys.executable, "-m", "pipelines", "--quiet"]
    out = {}

    def step(name: str, command: list[str]) -> None:
        # Printed as it finishes, so a size that fails later keeps what it measured.
        out[name] = timed(command)
        print(f"  {size} {name}: {out[name][0]:.1f} s, {out[name][1]:.2f} GB", flush=True)

    step("synth", stage + ["synth", "--db", str(db), "--future-days", "0",
                           "--users", str(shape["users"]), "--anime", str(shape["anime"]),
                           "--entries-per-user", str(shape["entries_per_user"])])
    step("features", stage + ["features", "--db", str(db), "--out", str(features)])
    if STAGES.index(last) >= STAGES.index("train-retrieval"):
        step("train-retrieval (1 epoch)", stage + [
            "train-retrieval", "--features", str(features), "--model", str(model),
            "--max-epochs", "1", "--no-ease", "--input", "stream"])
    if ease and STAGES.index(last) >= STAGES.index("ease"):
        step("EASE (6 lambdas)", [sys.executable, "-c", EASE_ALONE, str(features)])
    if last == "batch":
        step("batch (every user)", [sys.executable, "-m", "serving.batch", "--model",
                                    str(model), "--out", str(work / "recs"), "--quiet"])
    counts = json.loads((features / "schema.json").read_text())["counts"]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        entries = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    result = {"entries": int(entries), "users": counts["users"], "anime": counts["anime"],
              "stages": out}
    if (model / "metrics.json").exists():
        retrieval = json.loads((model / "metrics.json").read_text())["retrieval"]
        result.update(epoch_seconds=retrieval["training"]["fit_seconds"],
                      examples_per_second=retrieval["training"]["examples_per_second"])
    shutil.rmtree(work)  # the next size needs the disk
    return result


def exponent(a: float, b: float, n_a: int, n_b: int) -> float:
    """``x`` in ``b / a = (n_b / n_a) ** x``."""
    return math.log(b / a) / math.log(n_b / n_a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1M", "7M"], choices=list(SIZES),
                        help="worlds to measure, smallest first (default: %(default)s, "
                             "about 20 minutes on 2 cores; 30M adds about 30 minutes "
                             "without EASE, 13 of them up to the features, and 5.5 GB "
                             "at most: docs/benchmarks.md, section 8)")
    parser.add_argument("--workdir", default="/tmp/anirank-scale")
    parser.add_argument("--until", default="batch", choices=STAGES,
                        help="the last stage to run (each needs the ones before it but "
                             "EASE, which needs the features only); "
                             "`--until features` measures the world and its tables alone "
                             "(default: %(default)s)")
    parser.add_argument("--ease-up-to", choices=list(SIZES), default=None,
                        help="measure EASE on this size and the smaller ones only (default: "
                             "every size). It grows with the titles cubed and the users "
                             "scored: 12 minutes at 7M (14.4k titles), unfinished after 34 "
                             "minutes at 30M (16.8k) on 2 cores")
    args = parser.parse_args()
    results = {}
    order = list(SIZES)
    for size in args.sizes:
        ease = args.ease_up_to is None or order.index(size) <= order.index(args.ease_up_to)
        results[size] = measure(size, Path(args.workdir), args.until, ease)
        r = results[size]
        epoch = (f"; the epoch {r['epoch_seconds']:.1f} s ({r['examples_per_second']:,.0f} "
                 "examples/s)" if "epoch_seconds" in r else "")
        print(f"{size}: {r['entries']:,} entries, {r['users']:,} users, {r['anime']:,} "
              f"titles{epoch}", flush=True)
    print(f"\n{'stage':<28}" + "".join(f"{s + ' s':>10}{s + ' GB':>9}" for s in args.sizes)
          + ("".join(f"{'time a':>9}{'RSS b':>8}" for _ in args.sizes[1:])))
    stages = results[args.sizes[0]]["stages"]
    for stage in stages:   # "-": not measured at that size (--ease-up-to)
        row = f"{stage:<28}"
        for size in args.sizes:
            got = results[size]["stages"].get(stage)
            row += f"{got[0]:>10.1f}{got[1]:>9.2f}" if got else f"{'-':>10}{'-':>9}"
        for small, large in zip(args.sizes, args.sizes[1:]):
            a, b = results[small]["stages"].get(stage), results[large]["stages"].get(stage)
            n0, n1 = results[small]["entries"], results[large]["entries"]
            row += (f"{exponent(a[0], b[0], n0, n1):>9.2f}{exponent(a[1], b[1], n0, n1):>8.2f}"
                    if a and b else f"{'-':>9}{'-':>8}")
        print(row)
    if len(args.sizes) > 1:
        small, large = args.sizes[0], args.sizes[-1]
        (_, m0), (_, m1) = results[small]["stages"]["features"], results[large]["stages"]["features"]
        b = exponent(m0, m1, results[small]["entries"], results[large]["entries"])
        print(f"\nfeatures peak RSS exponent {small} -> {large}: {b:.2f} "
              f"({m0:.2f} GB -> {m1:.2f} GB; target 0, flat in the entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
