"""The data stages at the original crawl's scale (23k users, 15k titles, ~7M entries):
wall time and peak resident memory of synth and of features, each in its own process;
the feature stage streamed (its default blocks of 250,000 entries) and, as the baseline
measured in the same run, in one block (every entry in memory at once, as the stage
worked before it streamed). Both write the same tables, checked byte for byte here.

    .venv/bin/python bench/features_scale.py [--workdir /tmp/anirank-scale]

The last lines are the streamed stage's peak RSS against the 2 GB target at 7M and its
time and memory as ratios of the one-block baseline's.
"""

import argparse
import filecmp
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("interactions.parquet", "users.parquet", "anime.parquet")


def run(args):
    """Wall seconds and peak RSS (GB) of one stage, from that child's own rusage."""
    tick = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", "--quiet", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"stage {args[0]} failed (status {status})")
    return time.perf_counter() - tick, usage.ru_maxrss / 1024 / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/anirank-scale")
    parser.add_argument("--db", help="an existing store to measure instead of a new 7M world")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.db:
        db = Path(args.db)
    else:
        db = work / "anirank.db"
        rows.append(("synth", *run(["synth", "--db", str(db), "--users", "23000", "--anime",
                                    "15000", "--entries-per-user", "310"])))
    streamed, whole = work / "features", work / "features-one-block"
    rows.append(("features, streamed", *run(["features", "--db", str(db), "--out", str(streamed)])))
    rows.append(("features, one block", *run(["features", "--db", str(db), "--out", str(whole),
                                              "--block-entries", str(10**12)])))
    same = all(filecmp.cmp(streamed / t, whole / t, shallow=False) for t in TABLES)
    print(f"{'stage':<24}{'wall s':>8}{'peak RSS GB':>13}")
    for name, seconds, gb in rows:
        print(f"{name:<24}{seconds:>8.1f}{gb:>13.2f}")
    (_, t_s, m_s), (_, t_w, m_w) = rows[-2], rows[-1]
    print(f"tables identical: {same}")
    print(f"streamed features peak RSS / 2 GB target: {m_s / 2:.2f}")
    print(f"streamed / one block: time {t_s / t_w:.2f}x, peak RSS {m_s / m_w:.2f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
