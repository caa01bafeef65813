"""The data stages at the original crawl's scale (23k users, 15k titles, ~7M entries):
wall time and peak resident memory of synth and of features, each in its own process.

    .venv/bin/python bench/features_scale.py [--workdir /tmp/anirank-scale]

The last line is the feature stage's peak RSS against the 4 GB target.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    db = work / "anirank.db"
    synth_s, synth_gb = run(["synth", "--db", str(db), "--users", "23000", "--anime", "15000",
                             "--entries-per-user", "310"])
    feat_s, feat_gb = run(["features", "--db", str(db), "--out", str(work / "features")])
    print(f"{'stage (7M entries)':<24}{'wall s':>8}{'peak RSS GB':>13}")
    print(f"{'synth':<24}{synth_s:>8.1f}{synth_gb:>13.2f}")
    print(f"{'features':<24}{feat_s:>8.1f}{feat_gb:>13.2f}")
    print(f"features peak RSS / 4 GB target: {feat_gb / 4:.2f}")


if __name__ == "__main__":
    main()
