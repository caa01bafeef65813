"""The daily loop over a synthetic world's next days, through the real AniList client and
the stand-in server with its clock: what ``make run`` ends with.

    python -m tests.simulate_days --db data/anirank.db --model data/model --days 3

A store of the tracked users' lists (``<out>/anilist.db``, a copy of the world's store as
crawled at its ``NOW``) is refreshed day by day: for each day the server's clock is set
to the day's end, then ``python -m pipelines daily`` for that day runs against it with
no rate limit (loopback). ``<out>`` is a new job each time: it is emptied first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import time
from pathlib import Path

from pipelines import _env  # noqa: F401  (before anything imports TensorFlow)
from pipelines import daily, store, synth
from pipelines.errors import AnirankError
from tests.anilist_server import AniListStandIn


def copy_store(db: Path, to: Path) -> None:
    """The world's store as a crawl of it would start: its own file, the WAL folded in."""
    conn = store.connect(db, readonly=True)
    try:
        backup = __import__("sqlite3").connect(to)
        conn.backup(backup)
        backup.close()
    finally:
        conn.close()


def simulate(db: str | Path, model: str, days: int, out: str | Path,
             progress: bool = True) -> list[dict]:
    """Runs ``days`` simulated days; returns each day's summary."""
    db, out = Path(db), Path(out)
    future = synth.read_future(db)
    if not 1 <= days <= future.days:
        raise AnirankError(f"--days must be between 1 and {future.days}, the days of "
                           f"{synth.future_path(db)}. Received: {days}.")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tracked = out / "anilist.db"
    copy_store(db, tracked)
    summaries = []
    with AniListStandIn(db, future=synth.future_path(db)) as server:
        for d in range(1, days + 1):
            after, until = future.day_span(d)
            server.now = until
            date = dt.datetime.fromtimestamp(after, dt.timezone.utc).date()
            tick = time.perf_counter()
            summary = daily.run(date, db=tracked, model=model, endpoint=server.url, rate=0,
                                out=out, progress=progress)
            summary["wall_seconds"] = round(time.perf_counter() - tick, 2)
            summaries.append(summary)
            print(daily.describe(summary))
            print(f"({summary['wall_seconds']} s: {summary['seconds']})\n")
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulate_days",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="data/anirank.db",
                        help="the synthetic world's store; its future must be beside it "
                             "(default: %(default)s)")
    parser.add_argument("--model", default="data/model", help="model dir (default: %(default)s)")
    parser.add_argument("--days", type=int, default=3, help="days to run (default: %(default)s)")
    parser.add_argument("--out", default="data/daily",
                        help="the daily job's directory, emptied first (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        summaries = simulate(args.db, args.model, args.days, args.out, not args.quiet)
    except AnirankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"monitoring report over {len(summaries)} simulated days: "
          f"{summaries[-1]['monitoring']['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
