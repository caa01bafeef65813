"""Batch retrieve-and-rank: users in, top-k recommendations out, as Parquet parts.

    python -m serving.batch --model data/model --users all --out data/recommendations
    python -m serving.batch --model user/anirank-model --users users.csv --out recs/ --k 20
    python -m serving.batch --model data/model --out recs/ --runner FnApiRunner \
        -- --direct_running_mode multi_processing --direct_num_workers 2

Users are processed in chunks, each chunk with batched tower calls, one batched index
search and batched ranking (no per-user model call). Each chunk becomes one part,
written to a temporary file and renamed, so a killed job rerun with the same arguments
skips the finished parts, deletes the killed run's unfinished temporary file and
produces exactly the uninterrupted output; the summary is counted from the parts, so
it is the same after a rerun. Users not in the training data get the most-watched
titles, flagged ``source = "popularity"``. A user listed twice gets one set of rows
(duplicates are counted). Input rows that are not user ids are skipped, never fatal:
counted, written to ``_invalid_rows.csv`` and, by the CLI, warned about on stderr. Bad
options (``k``, ``candidates`` < ``k``, filters) are an error before anything is
written: the CLI prints ``error: ...`` and exits 2.

``--runner NAME`` (any Beam runner; Beam's options after ``--``) runs the same chunks as
an Apache Beam pipeline (:mod:`serving.beam`, needs ``requirements-scale.txt``): the
same parts, manifest and ``_SUCCESS``, so either way can finish a job the other began.
Without it the chunks run here, one after another.

Output directory:
  ``part-NNNNN.parquet``: one per chunk of ``chunk_size`` input users, in input order;
    rows by user (input order), then rank. Columns:
      user_id (int64), the input user id;
      rank (int64), 1 = best;
      anime_id (int64), AniList media id;
      title (string), English title, else romaji;
      score (float32), the model's score (the ranker's, or the retrieval score when the
        model has no ranker; higher is better, comparable within one model only); NaN
        on popularity rows;
      predicted_score (float32), the POINT_100 score the user would give the title,
        by the model's score head, in [1, 100]; NaN on popularity rows and for a model
        without a score head;
      source (string), ``"model"`` (a user of the training data) or ``"popularity"``
        (an unknown user: the allowed titles most training users watched, in that order).
  ``_manifest.json``: the job (model and its content hash, revision, k, candidates,
    chunk_size, filters, hash of the user ids); a rerun must match it.
  ``_invalid_rows.csv``: columns row (data row number of the users file, 1 = first row
    after any header; blank lines skipped) and value; header only if all were valid.
  ``_SUCCESS``: written last (JSON): users, duplicate_users, model_users,
    popularity_fallback_users, model_rows, popularity_rows, invalid_row_count,
    invalid_rows (the first 20 [row, value]), parts, parts_written, parts_skipped,
    order, runner (``"in-process"`` or the Beam runner), model_loads (how many times
    the model was loaded to write the parts: 1 in process, at most one per Beam worker
    process; the launcher's own load to plan the job is not counted), seconds, out.
    :func:`read_output` refuses a directory without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

from pipelines import _env  # noqa: F401

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pipelines import atomic  # noqa: E402
from pipelines.errors import AnirankError, InputError, os_error_line  # noqa: E402
from serving.recommender import Filters, Recommender, _int_arg  # noqa: E402

MANIFEST = "_manifest.json"
DONE = "_SUCCESS"
INVALID = "_invalid_rows.csv"
OUTPUT_NAMES = (MANIFEST, DONE, INVALID)   # a job's files beside its part-*.parquet


INT64_MAX = 2**63 - 1


def _user_id(value) -> int | None:
    """A user id from a file's cell: a whole number from 0 to int64's largest (``12``,
    ``12.0``), else None (an invalid row, never a wrapped-around id)."""
    whole = re.fullmatch(r"(\d+)(?:\.0*)?", str(value).strip())
    if whole is None:
        return None
    number = int(whole.group(1))
    return number if number <= INT64_MAX else None


def read_users(source: str, recommender: Recommender) -> tuple[np.ndarray, list]:
    """User ids from ``all``, a CSV/Parquet file (column ``user_id``, or the first
    column), or a text file of ids. Returns (ids in input order, invalid rows: line
    numbers counted from 1 and the text).

    Raises:
      InputError: the file is missing, unreadable as such a file, or holds no ids.
    """
    if source == "all":
        return recommender.users["user_id"].to_numpy(np.int64), []
    path = Path(source)
    if not path.is_file():
        raise InputError(f"--users {path}: no such file (a CSV, Parquet or text file of user "
                         "ids, or --users all).")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            with open(path, encoding="utf-8") as handle:
                first = handle.readline()
            frame = pd.read_csv(path, dtype=str, keep_default_na=False,
                                header=0 if "user_id" in first else None)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError,
            ValueError) as err:
        kind = "Parquet" if path.suffix == ".parquet" else "CSV or text"
        reason = "it is empty" if isinstance(err, pd.errors.EmptyDataError) else (
            f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}")
        raise InputError(f"--users {path} cannot be read as a {kind} file of user ids "
                         f"({reason}). Put one id per line, or a user_id column.") from None
    if frame.shape[1] == 0 or len(frame) == 0:
        raise InputError(f"--users {path} holds no user ids (no rows). Put one id per line, or "
                         "a user_id column.")
    column = frame["user_id"] if "user_id" in frame else frame.iloc[:, 0]
    parsed = [_user_id(v) for v in column]
    ok = np.array([p is not None for p in parsed], bool)
    invalid = [(int(i) + 1, str(column.iloc[i])) for i in np.flatnonzero(~ok)]
    if not ok.any():
        raise InputError(f"--users {path} holds no valid user id (whole numbers from 0 to "
                         f"{INT64_MAX}), e.g. row {invalid[0][0]}: {invalid[0][1][:40]!r}.")
    return np.array([p for p in parsed if p is not None], np.int64), invalid


def read_titles(conn) -> dict:
    """A store's titles (``media``) and their relations (``relations``), as
    :meth:`Recommender.with_titles` reads them (the daily loop's too)."""
    from pipelines import store

    return {"media": store.read_media(conn), "relations": store.read_relations(conn)}


def read_store(db: str | os.PathLike) -> dict:
    """What serving reads of the raw store at ``db``: every list (``lists``,
    ``store.read_entries``) and its titles (``read_titles``), for
    :meth:`Recommender.with_titles` and :meth:`Recommender.with_lists`."""
    from pipelines import store

    conn = store.connect(db, readonly=True)
    try:
        return {"lists": store.read_entries(conn), **read_titles(conn)}
    finally:
        conn.close()


def current(rec: Recommender, read: dict) -> Recommender:
    """``rec`` serving the store as ``read_store`` read it: the titles first listed after
    training added through the candidate tower, then every user from their list."""
    return rec.with_titles(read["media"], read["relations"]).with_lists(read["lists"])


def load(model: str, revision: str | None, db: str | os.PathLike | None) -> Recommender:
    """The job's model, serving the store at ``db`` when given (``current``): what a Beam
    worker loads (``plan`` does the same with the store it also hashes)."""
    rec = Recommender.from_pretrained(model, revision)
    return rec if db is None else current(rec, read_store(db))


def store_digest(read: dict) -> str:
    """Content hash of what serving reads of a store (``read_store``): a job rerun on a
    store whose lists or titles changed is another job."""
    digest = hashlib.sha256()
    for name in ("lists", "media", "relations"):
        frame = read[name].drop(columns=["fetched_at"], errors="ignore")
        digest.update(pd.util.hash_pandas_object(frame.astype(str) if name == "media" else frame,
                                                 index=False).to_numpy().tobytes())
    return digest.hexdigest()


def model_digest(rec: Recommender) -> str:
    """Content hash of what decides the output: config, candidate embeddings, ranker
    and score head weights. A retrained model at the same path is a different job."""
    digest = hashlib.sha256()
    files = [rec.directory / "config.json", rec.directory / "index" / "candidate_embeddings.npy",
             *sorted((rec.directory / "query_tower" / "variables").glob("variables.data-*")),
             *sorted((rec.directory / "ranker" / "variables").glob("variables.data-*")),
             *sorted((rec.directory / "scorer" / "variables").glob("variables.data-*"))]
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclasses.dataclass
class Job:
    """A checked batch job: the loaded model, the options as used, the users and the
    parts they go to (chunk ``i`` of ``chunk_size`` users is ``parts[i]``)."""

    rec: Recommender
    out: Path
    k: int
    candidates: int
    filters: Filters
    chunk_size: int
    given: int          # input user ids, duplicates included
    ids: np.ndarray     # unique user ids, in input order
    invalid: list       # (row, value) of the input rows that are not user ids
    manifest: dict
    db: str | None = None  # the store whose lists the users are served from

    @property
    def parts(self) -> list[Path]:
        return [self.out / f"part-{i:05d}.parquet" for i in range(self.n_parts)]

    @property
    def n_parts(self) -> int:
        return -(-len(self.ids) // self.chunk_size)

    def chunk(self, i: int) -> np.ndarray:
        """The user ids of part ``i``."""
        return self.ids[i * self.chunk_size:(i + 1) * self.chunk_size]


def plan(model: str, users: str, out: str | os.PathLike, *, k: int, candidates: int | None,
         chunk_size: int, revision: str | None, filters: Filters | None,
         db: str | os.PathLike | None = None) -> Job:
    """Loads the model (serving the lists of the store at ``db`` when given), checks the
    options (an error before anything is written), reads the users, then claims ``out``
    for the job: writes its manifest, or checks that the one there is the same job's,
    and removes a killed run's unfinished parts."""
    out = Path(out)
    chunk_size = _int_arg("chunk_size", chunk_size, 1)
    rec = Recommender.from_pretrained(model, revision)
    read = None if db is None else read_store(db)   # read once: served and hashed
    if read is not None:
        rec = current(rec, read)
    k, candidates = rec._check_k(k, candidates)
    filters = Filters() if filters is None else filters
    rec.allowed(filters)  # bad filters fail here, before anything is written
    given, invalid = read_users(users, rec)
    ids = pd.unique(given)  # a user listed twice gets one set of rows
    manifest = {"model": str(model), "revision": revision, "model_sha256": model_digest(rec),
                "db": None if db is None else str(db),
                "store_sha256": None if read is None else store_digest(read),
                "new_titles": len(rec.new_titles),
                "k": k, "candidates": candidates,
                "chunk_size": chunk_size, "filters": repr(filters),
                "users_sha256": hashlib.sha256(ids.tobytes()).hexdigest()}
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; pass a directory for the job's output.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out {out} cannot be created ({err.strerror or err}); pass a "
                         "writable directory.") from None
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        if json.loads(manifest_path.read_text()) != manifest:
            raise InputError(f"{out} holds the output of a different job (other model, users "
                             "or options); pass another --out or delete it.")
    else:
        atomic.write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
    for stale in out.glob(".part-*.tmp"):  # a killed run's unfinished part
        stale.unlink(missing_ok=True)
    return Job(rec, out, k, candidates, filters, chunk_size, len(given), ids, invalid, manifest,
               None if db is None else str(db))


def chunk_frame(rec: Recommender, chunk: np.ndarray, k: int, candidates: int,
                filters: Filters) -> pd.DataFrame:
    """The rows of one chunk of users: known users by :meth:`Recommender.recommend`,
    unknown ones by :meth:`Recommender.popular`, flagged in ``source``; rows by user (the
    chunk's order), then rank. Every runner calls this, so their parts are the same."""
    known = rec.known(chunk)
    frames = []
    if known.any():
        frames.append(rec.recommend(chunk[known], k=k, candidates=candidates,
                                    filters=filters).assign(source="model"))
    if (~known).any():
        frames.append(rec.popular(chunk[~known], k, filters).assign(source="popularity"))
    frame = pd.concat(frames, ignore_index=True)
    order = pd.Series(np.arange(len(chunk)), index=chunk)
    frame = frame.iloc[np.lexsort((frame["rank"], order[frame["user_id"]].to_numpy()))]
    return frame.reset_index(drop=True)


def write_part(frame: pd.DataFrame, part: Path) -> None:
    """Writes ``frame`` to a temporary file beside ``part``, then renames it: a part
    exists only when whole, and a second writer of the same part (a retried bundle)
    replaces it with the same rows."""
    with atomic.file(part) as tmp:  # .<part>.<hex>.tmp: what plan() sweeps after a kill
        frame.to_parquet(tmp, index=False)


def finish(job: Job, written: int, seconds: float, **extra) -> dict:
    """Writes ``_invalid_rows.csv``, then ``_SUCCESS`` with the summary counted from the
    parts in the output, and returns the summary. ``extra`` (runner, model loads) is
    added to it."""
    missing = [p.name for p in job.parts if not p.exists()]
    if missing:
        raise AnirankError(f"The job finished without writing {len(missing)} parts of {job.out} "
                           f"(e.g. {missing[:3]}); rerun it to complete them.")
    atomic.write_text(job.out / INVALID,
                      pd.DataFrame(job.invalid, columns=["row", "value"]).to_csv(index=False))
    # Counted from the parts in the output (two columns, cheap), so a rerun that skips
    # finished parts reports what the whole output holds.
    held = pd.concat([pd.read_parquet(p, columns=["user_id", "source"]) for p in job.parts]
                     or [pd.DataFrame({"user_id": [], "source": []})], ignore_index=True)
    rows = held["source"].value_counts()
    served = held.drop_duplicates("user_id")["source"].value_counts()
    summary = {"out": str(job.out), "users": int(len(job.ids)),
               "duplicate_users": int(job.given - len(job.ids)),
               "model_users": int(served.get("model", 0)),
               "popularity_fallback_users": int(served.get("popularity", 0)),
               "model_rows": int(rows.get("model", 0)),
               "popularity_rows": int(rows.get("popularity", 0)),
               "parts": job.n_parts, "parts_written": written,
               "parts_skipped": job.n_parts - written,
               "invalid_rows": job.invalid[:20], "invalid_row_count": len(job.invalid),
               "order": job.rec.serving["order"],   # artifact.ORDER_NAMES (see Recommender.serving)
               **extra, "seconds": round(seconds, 2)}
    atomic.write_text(job.out / DONE, json.dumps(summary, indent=2))
    return summary


def revision_of(rec: Recommender, revision: str | None) -> str:
    """What names a model (the daily loop's tables, the service's ``/health``): the Hub
    revision when pinned, else a digest of the model's files (twelve hex digits), so two
    models never share a name."""
    return revision or model_digest(rec)[:12]


def run(model: str, users: str = "all", out: str | os.PathLike = "data/recommendations", *,
        k: int = 10, candidates: int | None = None, chunk_size: int = 2048,
        revision: str | None = None, filters: Filters | None = None,
        db: str | os.PathLike | None = None, progress: bool = True, runner: str | None = None,
        beam_options: list[str] | tuple[str, ...] = ()) -> dict:
    """Stage function behind ``python -m serving.batch``. Returns the summary that is
    also written to ``_SUCCESS`` (see the module docstring).

    ``k`` and ``candidates`` are checked and capped as in :meth:`Recommender.recommend`
    (``candidates`` None = ``max(k, 100)``); the manifest records the values used.
    ``runner`` None runs the chunks here, one after another; a Beam runner name
    (``DirectRunner``, ``PortableRunner``, ``FlinkRunner``, ...) runs them as a Beam
    pipeline (:mod:`serving.beam`, with ``beam_options`` passed to it), writing the same
    parts. Either can finish what the other started: the manifest does not name it.
    ``db``: a raw store whose lists the users are served from
    (:meth:`Recommender.with_lists`); None: the lists the model was trained on.
    """
    start = time.perf_counter()
    if runner is not None:
        from serving import beam

        options = beam.pipeline_options(runner, beam_options)  # errors before any write
    elif beam_options:
        raise InputError(f"Beam pipeline options {list(beam_options)!r} need a --runner.")
    job = plan(model, users, out, k=k, candidates=candidates, chunk_size=chunk_size,
               revision=revision, filters=filters, db=db)
    if runner is not None:
        written, loads = beam.run_parts(job, model, revision, options)
        return finish(job, written, time.perf_counter() - start, runner=runner,
                      model_loads=loads)
    written = 0
    parts = tqdm(job.parts, desc="batch", unit="chunk", disable=not progress)
    for i, part in enumerate(parts):
        if not part.exists():
            write_part(chunk_frame(job.rec, job.chunk(i), job.k, job.candidates, job.filters),
                       part)
            written += 1
    return finish(job, written, time.perf_counter() - start, runner="in-process", model_loads=1)


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
    parser.add_argument("--revision",
                        help="Hub revision: branch, tag or commit sha (default: main)")
    parser.add_argument("--users", default="all",
                        help="'all' (every user the model knows), or a CSV/Parquet/text file "
                             "of user ids (default: %(default)s)")
    parser.add_argument("--db",
                        help="serve each user from their current list in this raw store "
                             "(features, history and seen titles rebuilt from it; users of "
                             "the store the model was not trained on are served by the model "
                             "too, and --users all includes them), among the model's titles "
                             "and the store's new ones, placed by the candidate tower "
                             "(default: the lists and titles the model was trained on)")
    parser.add_argument("--out", default="data/recommendations", help="output directory (default: %(default)s)")
    parser.add_argument("--k", type=int, default=10, help="recommendations per user (default: %(default)s)")
    parser.add_argument("--candidates", type=int,
                        help="retrieved titles the ranker reorders, >= k (default: max(k, 100))")
    parser.add_argument("--chunk-size", type=int, default=2048, help="users per part (default: %(default)s)")
    parser.add_argument("--formats",
                        help="comma list of formats to keep, e.g. TV,MOVIE (default: all)")
    parser.add_argument("--min-year", type=int,
                        help="keep titles from this season year on; titles without a year "
                             "pass (default: no limit)")
    parser.add_argument("--max-year", type=int,
                        help="keep titles up to this season year (default: no limit)")
    parser.add_argument("--max-popularity", type=float,
                        help="hidden gems: at most this many members (default: no limit)")
    parser.add_argument("--allow-adult", action="store_true", help="include adult titles")
    parser.add_argument("--no-entry-points", action="store_true",
                        help="keep titles whose prequel or parent show the user has not "
                             "watched (default: each gives way to the franchise's first "
                             "title they can start)")
    parser.add_argument("--per-franchise", type=int, default=1,
                        help="titles of one franchise in every 10 recommendations, at most; "
                             "0: no cap (default: %(default)s)")
    parser.add_argument("--variety", type=float, default=0.0,
                        help="0 to 1: how much each next title must differ from those above "
                             "it (maximal marginal relevance; default: %(default)s, the "
                             "model's order)")
    parser.add_argument("--niche", type=float, default=0.0,
                        help="0 to 1: how much popularity counts against a title "
                             "(default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--runner",
                        help="run the job as an Apache Beam pipeline on this runner "
                             "(DirectRunner, PortableRunner, FlinkRunner, SparkRunner, "
                             "DataflowRunner, ...; needs requirements-scale.txt); Beam's own "
                             "options follow a `--`, e.g. `-- --direct_num_workers 2` "
                             "(default: the in-process job)")
    argv = sys.argv[1:] if argv is None else list(argv)
    # Everything after `--` is Beam's: its runners define hundreds of options.
    beam_options = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    try:
        filters = Filters(formats=tuple(args.formats.split(",")) if args.formats else None,
                          min_year=args.min_year, max_year=args.max_year,
                          max_popularity=args.max_popularity, exclude_adult=not args.allow_adult,
                          entry_points=not args.no_entry_points,
                          per_franchise=args.per_franchise or None,
                          variety=args.variety, niche=args.niche)
        summary = run(args.model, args.users, args.out, k=args.k, candidates=args.candidates,
                      chunk_size=args.chunk_size, revision=args.revision, filters=filters,
                      db=args.db, progress=not args.quiet, runner=args.runner,
                      beam_options=beam_options)
    except AnirankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:   # a path no check above named
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return 2
    if summary["invalid_row_count"]:
        shown = ", ".join(f"row {row}: {value!r}" for row, value in summary["invalid_rows"][:5])
        print(f"warning: {summary['invalid_row_count']} input rows are not user ids and were "
              f"skipped ({shown}{', ...' if summary['invalid_row_count'] > 5 else ''}); all of "
              f"them are in {Path(summary['out']) / INVALID}", file=sys.stderr)
    print(f"recommendations for {summary['users']:,} users in {summary['out']} "
          f"({summary['runner']}: {summary['parts']} parts, {summary['parts_skipped']} already done; "
          f"{summary['popularity_fallback_users']} unknown users got popular titles; "
          f"{summary['duplicate_users']} duplicate users and "
          f"{summary['invalid_row_count']} invalid input rows skipped) in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
