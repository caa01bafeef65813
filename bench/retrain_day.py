"""The daily loop's retrain after ``make run``: one more simulated day with a retrain
forced, on copies of ``data/daily`` and ``data/model`` (the originals are left as they
were), printing the decision.

    .venv/bin/python bench/retrain_day.py --day 4 --work /tmp/retrain

The day runs ``python -m pipelines daily --retrain-if-degraded --mae-threshold 1
--alert-days 1`` against the stand-in AniList at the end of future day ``--day`` (after
``make run``'s three days: day 4), so the MAE alert holds and the retrain runs: features
with the periods moved forward, the candidate, its walk-forward refit, the gate on the
entries after the serving model's ``trained_through``, and the release refit when no
worse (``pipelines/retrain.py``). ``<work>/daily/retrain/<D>/decision.json`` keeps it all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import _env  # noqa: E402,F401

from pipelines import synth  # noqa: E402
from pipelines.__main__ import main as cli  # noqa: E402
from tests.anilist_server import AniListStandIn  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="data/anirank.db",
                        help="the world's store, its future beside it (default: %(default)s)")
    parser.add_argument("--daily", default="data/daily",
                        help="make run's daily job directory (default: %(default)s)")
    parser.add_argument("--model", default="data/model", help="the served model (default: %(default)s)")
    parser.add_argument("--day", type=int, default=4, help="future day to run (default: %(default)s)")
    parser.add_argument("--work", default="/tmp/retrain", help="emptied first (default: %(default)s)")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(args.daily, work / "daily")
    shutil.copytree(args.model, work / "model")
    future = synth.read_future(args.db)
    start, end = future.day_span(args.day)
    day = dt.datetime.fromtimestamp(start, dt.timezone.utc).date().isoformat()
    with AniListStandIn(args.db, future=synth.future_path(args.db)) as server:
        server.now = end
        tick = time.perf_counter()
        code = cli(["daily", "--date", day, "--endpoint", server.url, "--rate", "0",
                    "--db", str(work / "daily" / "anilist.db"), "--model", str(work / "model"),
                    "--out", str(work / "daily"), "--retrain-if-degraded", "--mae-threshold", "1",
                    "--alert-days", "1", "--quiet"])
    print(f"day {day}: exit {code}, {time.perf_counter() - tick:.0f} s in all")
    decision = work / "daily" / "retrain" / day / "decision.json"
    if decision.exists():
        print(json.dumps(json.loads(decision.read_text()), indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
