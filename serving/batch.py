"""Batch retrieve-and-rank: users in, top-k recommendations out, as Parquet parts.

    python -m serving.batch --model data/model --users all --out data/recommendations
    python -m serving.batch --model user/anirank-model --users users.csv --out recs/ --k 20

Users are processed in chunks, each chunk with batched tower calls, one batched index
search and batched ranking (no per-user model call). Each chunk becomes
``part-00000.parquet`` (user_id, rank, anime_id, title, score, source), written to a
temporary file and renamed, so a killed job rerun with the same arguments skips the
finished parts, deletes the killed run's unfinished temporary file and produces exactly
the uninterrupted output. Users not in the training
data get the most-watched titles, flagged ``source = "popularity"``; input rows that are
not user ids are reported and skipped, never fatal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path

from pipelines import _env  # noqa: F401

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pipelines import atomic  # noqa: E402
from pipelines.errors import AnirankError, InputError  # noqa: E402
from serving.recommender import Filters, Recommender  # noqa: E402

MANIFEST = "_manifest.json"
DONE = "_SUCCESS"


def read_users(source: str, recommender: Recommender) -> tuple[np.ndarray, list]:
    """User ids from ``all``, a CSV/Parquet file (column ``user_id``, or the first
    column), or a text file of ids. Returns (ids in input order, invalid rows)."""
    if source == "all":
        return recommender.users["user_id"].to_numpy(np.int64), []
    path = Path(source)
    if not path.exists():
        raise InputError(f"Users file {path} does not exist (or pass --users all).")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, header=0
                            if "user_id" in path.read_text().split("\n", 1)[0] else None)
    column = frame["user_id"] if "user_id" in frame else frame.iloc[:, 0]
    values = pd.to_numeric(column, errors="coerce")
    ok = values.notna() & (values == values.round())
    invalid = [(int(i) + 1, str(v)) for i, v in zip(np.flatnonzero(~ok), column[~ok])]
    return values[ok].astype(np.int64).to_numpy(), invalid


def model_digest(rec: Recommender) -> str:
    """Content hash of what decides the output: config, candidate embeddings, ranker
    weights. A retrained model at the same path is a different job."""
    digest = hashlib.sha256()
    files = [rec.directory / "config.json", rec.directory / "index" / "candidate_embeddings.npy",
             *sorted((rec.directory / "query_tower" / "variables").glob("variables.data-*")),
             *sorted((rec.directory / "ranker" / "variables").glob("variables.data-*"))]
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run(model: str, users: str = "all", out: str | os.PathLike = "data/recommendations", *,
        k: int = 10, candidates: int = 100, chunk_size: int = 2048, revision: str | None = None,
        filters: Filters | None = None, progress: bool = True) -> dict:
    """Stage function behind ``python -m serving.batch``. Returns a summary."""
    start = time.perf_counter()
    out = Path(out)
    rec = Recommender.from_pretrained(model, revision)
    ids, invalid = read_users(users, rec)
    ids = pd.unique(ids)  # a user listed twice gets one set of rows
    manifest = {"model": str(model), "revision": revision, "model_sha256": model_digest(rec),
                "k": k, "candidates": candidates,
                "chunk_size": chunk_size, "filters": repr(filters or Filters()),
                "users_sha256": hashlib.sha256(ids.tobytes()).hexdigest()}
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        if json.loads(manifest_path.read_text()) != manifest:
            raise InputError(f"{out} holds the output of a different job (other model, users "
                             "or options); pass another --out or delete it.")
    else:
        atomic.write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
    for stale in out.glob(".part-*.tmp"):  # a killed run's unfinished part
        stale.unlink(missing_ok=True)
    chunks = range(0, len(ids), chunk_size)
    written = skipped = fallback = 0
    for i, first in enumerate(tqdm(chunks, desc="batch", unit="chunk", disable=not progress)):
        part = out / f"part-{i:05d}.parquet"
        if part.exists():
            skipped += 1
            continue
        chunk = ids[first:first + chunk_size]
        known = rec.known(chunk)
        frames = []
        if known.any():
            frames.append(rec.recommend(chunk[known], k=k, candidates=candidates,
                                        filters=filters).assign(source="model"))
        if (~known).any():
            rows, scores = rec.popular(int((~known).sum()), k, filters)
            frames.append(rec._frame(chunk[~known], rows, scores).assign(source="popularity"))
            fallback += int((~known).sum())
        frame = pd.concat(frames, ignore_index=True)
        order = pd.Series(np.arange(len(chunk)), index=chunk)
        frame = frame.iloc[np.lexsort((frame["rank"], order[frame["user_id"]].to_numpy()))]
        tmp = out / f".{part.name}.{uuid.uuid4().hex[:8]}.tmp"
        frame.reset_index(drop=True).to_parquet(tmp, index=False)
        os.replace(tmp, part)  # a part exists only when whole
        written += 1
    summary = {"out": str(out), "users": int(len(ids)), "parts": len(chunks),
               "parts_written": written, "parts_skipped": skipped,
               "popularity_fallback_users": fallback, "invalid_rows": invalid[:20],
               "invalid_row_count": len(invalid), "seconds": round(time.perf_counter() - start, 2)}
    atomic.write_text(out / DONE, json.dumps(summary, indent=2))
    return summary


def read_output(out: str | os.PathLike) -> pd.DataFrame:
    """All parts of a finished batch job, in order."""
    out = Path(out)
    if not (out / DONE).exists():
        raise InputError(f"{out} has no {DONE}: the job did not finish; rerun it to complete.")
    return pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))],
                     ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory or Hub repo id")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit sha)")
    parser.add_argument("--users", default="all",
                        help="'all' (every user the model knows), or a CSV/Parquet/text file of user ids")
    parser.add_argument("--out", default="data/recommendations", help="output directory (default: %(default)s)")
    parser.add_argument("--k", type=int, default=10, help="recommendations per user (default: %(default)s)")
    parser.add_argument("--candidates", type=int, default=100,
                        help="retrieved titles the ranker reorders (default: %(default)s)")
    parser.add_argument("--chunk-size", type=int, default=2048, help="users per part (default: %(default)s)")
    parser.add_argument("--formats", help="comma list of formats to keep, e.g. TV,MOVIE")
    parser.add_argument("--min-year", type=int)
    parser.add_argument("--max-year", type=int)
    parser.add_argument("--max-popularity", type=float, help="hidden gems: at most this many members")
    parser.add_argument("--allow-adult", action="store_true", help="include adult titles")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    filters = Filters(formats=tuple(args.formats.split(",")) if args.formats else None,
                      min_year=args.min_year, max_year=args.max_year,
                      max_popularity=args.max_popularity, exclude_adult=not args.allow_adult)
    try:
        summary = run(args.model, args.users, args.out, k=args.k, candidates=args.candidates,
                      chunk_size=args.chunk_size, revision=args.revision, filters=filters,
                      progress=not args.quiet)
    except AnirankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"recommendations for {summary['users']:,} users in {summary['out']} "
          f"({summary['parts']} parts, {summary['parts_skipped']} already done; "
          f"{summary['popularity_fallback_users']} unknown users got popular titles; "
          f"{summary['invalid_row_count']} invalid input rows skipped) in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
