"""The batch job on Beam against the in-process job: users/s of the whole job, each run
as the command line runs it, on the same model and users, measured in one run.

    .venv/bin/python bench/beam_vs_in_process.py --model data/model [--chunk-size 512]

Paths: the in-process job (``python -m serving.batch``), the same job on Beam's
DirectRunner (``--runner DirectRunner``: one worker, this process) and on the
FnApiRunner with two worker processes (``--runner FnApiRunner -- --direct_running_mode
multi_processing --direct_num_workers 2``). Each run is a fresh process writing a fresh
directory; users/s counts the job's own seconds (``_SUCCESS``: from the start of
``serving.batch.run``, model loading included, interpreter and TensorFlow start-up not),
and the wall clock of the command is shown beside it. The three paths are timed three
times, interleaved, and each keeps its best run; every output is checked to be the
in-process job's, exactly. Needs requirements-scale.txt. The last line is the headline
ratio.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from serving import batch  # noqa: E402

PATHS = {
    "in-process": [],
    "Beam DirectRunner": ["--runner", "DirectRunner"],
    "Beam, 2 worker processes": ["--runner", "FnApiRunner", "--", "--direct_running_mode",
                                 "multi_processing", "--direct_num_workers", "2"],
}


def run(model: str, chunk_size: int, out: Path, extra: list) -> tuple[float, dict]:
    """One job as the command line runs it: (wall seconds, its _SUCCESS summary)."""
    command = [sys.executable, "-m", "serving.batch", "--model", model, "--out", str(out),
               "--chunk-size", str(chunk_size), "--quiet", *extra]
    tick = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - tick, json.loads((out / batch.DONE).read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/model")
    parser.add_argument("--chunk-size", type=int, default=512,
                        help="users per part: the unit of work a Beam worker takes "
                             "(default: %(default)s)")
    args = parser.parse_args()
    best = {name: (float("inf"), float("inf"), None) for name in PATHS}
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(3):
            for i, (name, extra) in enumerate(PATHS.items()):
                out = Path(tmp) / f"{attempt}-{i}"
                wall, summary = run(args.model, args.chunk_size, out, extra)
                if summary["seconds"] < best[name][0]:
                    best[name] = (summary["seconds"], wall, summary)
                if name != "in-process":
                    pd.testing.assert_frame_equal(batch.read_output(out),
                                                  batch.read_output(Path(tmp) / f"{attempt}-0"),
                                                  check_exact=True)
    users = best["in-process"][2]["users"]
    print(f"{'path':<28}{'users':>8}{'parts':>7}{'loads':>7}{'job s':>8}{'wall s':>8}{'users/s':>10}")
    for name, (seconds, wall, summary) in best.items():
        print(f"{name:<28}{users:>8}{summary['parts']:>7}{summary['model_loads']:>7}"
              f"{seconds:>8.2f}{wall:>8.2f}{users / seconds:>10.0f}")
    base = best["in-process"][0]
    print(f"Beam DirectRunner: {base / best['Beam DirectRunner'][0]:.2f}x the in-process job's "
          f"users/s; 2 worker processes: {base / best['Beam, 2 worker processes'][0]:.2f}x "
          "(same output, exactly)")


if __name__ == "__main__":
    main()
