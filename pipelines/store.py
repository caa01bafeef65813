"""The raw store: one SQLite file that mirrors AniList. The only module that writes SQL.

Every source (the crawler, the Kaggle importers, the synthetic generator) writes these
tables through the upserts below, so every stage after the store is source-agnostic.
Writes are idempotent: an upsert keyed by the primary key replaces the row, so loading
the same source twice gives the same store.

Conventions: times are Unix seconds; a missing value is NULL, never a made-up number;
``entries.score`` is AniList POINT_100 (1-100, 0 = not scored); list columns of
``media`` (``genres``, ``tags``) are JSON text.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.errors import StoreError

SCHEMA_VERSION = 1

USER_COLUMNS = (
    "user_id", "name", "created_at", "updated_at", "anime_count", "mean_score",
    "std_score", "minutes_watched", "episodes_watched", "fetched_at",
)
MEDIA_COLUMNS = (
    "media_id", "id_mal", "title_romaji", "title_english", "format", "status",
    "episodes", "duration", "source", "season", "season_year", "average_score",
    "mean_score", "popularity", "favourites", "is_adult", "country", "studio",
    "genres", "tags", "description", "fetched_at",
)
ENTRY_COLUMNS = (
    "user_id", "media_id", "score", "status", "progress", "repeat", "is_favourite",
    "created_at", "updated_at", "completed_at",
)
RELATION_COLUMNS = ("media_id", "related_id", "relation_type")
# AniList's MediaRelation values: ``related_id`` is ``media_id``'s SEQUEL, PREQUEL, ...
RELATION_TYPES = (
    "ADAPTATION", "PREQUEL", "SEQUEL", "PARENT", "SIDE_STORY", "CHARACTER", "SUMMARY",
    "ALTERNATIVE", "SPIN_OFF", "OTHER", "SOURCE", "COMPILATION", "CONTAINS",
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS users (
    user_id          INTEGER PRIMARY KEY,
    name             TEXT,
    created_at       INTEGER,
    updated_at       INTEGER,
    anime_count      INTEGER,
    mean_score       REAL,
    std_score        REAL,
    minutes_watched  INTEGER,
    episodes_watched INTEGER,
    fetched_at       INTEGER
);
CREATE TABLE IF NOT EXISTS media (
    media_id      INTEGER PRIMARY KEY,
    id_mal        INTEGER,
    title_romaji  TEXT,
    title_english TEXT,
    format        TEXT,
    status        TEXT,
    episodes      INTEGER,
    duration      INTEGER,
    source        TEXT,
    season        TEXT,
    season_year   INTEGER,
    average_score INTEGER,
    mean_score    INTEGER,
    popularity    INTEGER,
    favourites    INTEGER,
    is_adult      INTEGER,
    country       TEXT,
    studio        TEXT,
    genres        TEXT,
    tags          TEXT,
    description   TEXT,
    fetched_at    INTEGER
);
-- WITHOUT ROWID clusters a user's entries together on disk: reads by user are sequential.
CREATE TABLE IF NOT EXISTS entries (
    user_id      INTEGER NOT NULL,
    media_id     INTEGER NOT NULL,
    score        INTEGER NOT NULL DEFAULT 0 CHECK (score BETWEEN 0 AND 100),
    status       TEXT NOT NULL CHECK (status IN
                 ('COMPLETED','CURRENT','PAUSED','DROPPED','REPEATING','PLANNING')),
    progress     INTEGER,
    repeat       INTEGER,
    is_favourite INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER,
    updated_at   INTEGER,
    completed_at INTEGER,
    PRIMARY KEY (user_id, media_id)
) WITHOUT ROWID;
-- How titles relate (AniList's relations edges), one row per direction: a sequel B of A
-- is (A, B, 'SEQUEL') and (B, A, 'PREQUEL').
CREATE TABLE IF NOT EXISTS media_relations (
    media_id      INTEGER NOT NULL,
    related_id    INTEGER NOT NULL,
    relation_type TEXT NOT NULL CHECK (relation_type IN
                  ({", ".join(repr(t) for t in RELATION_TYPES)})),
    PRIMARY KEY (media_id, related_id)
) WITHOUT ROWID;
-- Crawl state: one row per (kind, item), e.g. ('lists', 5123) -> done / failed / skipped.
CREATE TABLE IF NOT EXISTS crawl_state (
    kind       TEXT NOT NULL,
    item_id    INTEGER NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pending','done','failed','skipped')),
    message    TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER,
    PRIMARY KEY (kind, item_id)
) WITHOUT ROWID;
-- Named cursors (e.g. the next page of a user discovery query).
CREATE TABLE IF NOT EXISTS crawl_cursor (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- The daily loop (pipelines.daily): what happened each day, what the model said of it,
-- and the day's metrics. A day is rewritten whole, in one transaction.
CREATE TABLE IF NOT EXISTS daily_outcomes (
    day        TEXT NOT NULL,             -- YYYY-MM-DD, UTC
    user_id    INTEGER NOT NULL,
    media_id   INTEGER NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('completed','dropped','scored','started')),
    status     TEXT NOT NULL,
    score      INTEGER NOT NULL,          -- POINT_100, 0 = not scored
    is_new     INTEGER NOT NULL,          -- added to the list that day
    updated_at INTEGER,
    PRIMARY KEY (day, user_id, media_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS daily_predictions (
    revision        TEXT NOT NULL,        -- the model that predicted (Hub revision or digest)
    day             TEXT NOT NULL,
    user_id         INTEGER NOT NULL,
    media_id        INTEGER NOT NULL,
    predicted_score REAL,                 -- the score head's; NULL: a title the model lacks
    served_rank     INTEGER,              -- rank in the list served the day before; NULL: not in it
    popularity_rank INTEGER,              -- the same for the recent-popularity list
    user_mean       REAL,                 -- the score baselines, as of the day before
    title_mean      REAL,
    PRIMARY KEY (revision, day, user_id, media_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS daily_metrics (
    revision TEXT NOT NULL,
    day      TEXT NOT NULL,
    metrics  TEXT NOT NULL,               -- JSON
    PRIMARY KEY (revision, day)
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
"""


def connect(path: str | os.PathLike, *, readonly: bool = False,
            durable: bool = True) -> sqlite3.Connection:
    """Opens (and, unless ``readonly``, creates) the raw store at ``path``.

    WAL mode lets readers (the feature pipeline, a notebook) work while a crawl writes;
    ``synchronous=NORMAL`` is durable across application crashes in WAL mode and only
    risks the last transactions on power loss. ``durable=False`` turns syncing off, for
    a store built in a temporary file that a rename makes durable.

    Raises:
      StoreError: the file is missing (``readonly``), not SQLite, or of another schema.
    """
    path = Path(path)
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a raw store: pass the store's file "
                         f"(e.g. {path / 'anirank.db'}).")
    if readonly and not path.exists():
        raise StoreError(
            f"No raw store at {path}. Create one with `python -m pipelines synth --db {path}`, "
            "`python -m pipelines import-kaggle`, or `python data_query.py`."
        )
    if not readonly:
        path.parent.mkdir(parents=True, exist_ok=True)
    uri = f"file:{path}?mode=ro" if readonly else str(path)
    conn = sqlite3.connect(uri, uri=readonly, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL" if not readonly else "PRAGMA query_only=1")
        conn.execute("PRAGMA synchronous=NORMAL" if durable else "PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-131072")  # 128 MiB page cache for bulk loads
        if not readonly:
            conn.executescript(_SCHEMA)
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.DatabaseError as err:
        conn.close()
        raise StoreError(f"{path} is not an anirank raw store ({err}).") from err
    if version is None or str(version[0]) != str(SCHEMA_VERSION):
        conn.close()
        raise StoreError(
            f"{path} has raw-store schema version {version and version[0]}, this anirank "
            f"reads version {SCHEMA_VERSION}; re-create the store with this version."
        )
    return conn


def checkpoint(conn: sqlite3.Connection) -> None:
    """Moves the write-ahead log into the database file and empties it: the file alone
    then holds the whole store (before it is renamed or copied)."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def source(conn: sqlite3.Connection) -> str | None:
    """What filled the store: ``anilist``, ``kaggle`` or ``synth:<config as JSON>``; None
    if nothing has claimed it yet."""
    row = conn.execute("SELECT value FROM meta WHERE key='source'").fetchone()
    return row and row[0]


KAGGLE_DUMPS = {"2017": 'the Kaggle "Anime Recommendations Database" (2017) dump',
                "2020": 'the Kaggle "Anime Recommendation Database 2020" dump'}


def describe_source(conn: sqlite3.Connection) -> dict:
    """What filled the store, for the schema and the model card: ``{"kind": "synthetic" |
    "kaggle" | "anilist" | "unknown", "description": one phrase, ...details}``."""
    held = source(conn) or "unknown"
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if held.startswith("synth"):
        try:  # synth records its config as JSON after "synth:"
            config = json.loads(held.split(":", 1)[1])
        except ValueError:
            raise StoreError("This synthetic store was written by an older anirank; "
                             "regenerate it with `python -m pipelines synth`.") from None
        return {"kind": "synthetic", "seed": config["seed"],
                "description": f"the anirank synthetic AniList-shaped world (seed "
                               f"{config['seed']}, {config['users']:,} users, "
                               f"{config['anime']:,} titles)"}
    if held == "kaggle":
        dump = meta.get("kaggle_dump", "")
        ratings = meta.get("kaggle_ratings")
        return {"kind": "kaggle", "dump": dump, "ratings_file": ratings,
                "description": KAGGLE_DUMPS.get(dump, "a Kaggle MyAnimeList dump")
                + (f" ({ratings})" if ratings else "")}
    if held == "anilist":
        latest = conn.execute("SELECT MAX(updated_at) FROM crawl_state "
                              "WHERE kind = 'lists' AND state = 'done'").fetchone()[0]
        day = time.strftime("%Y-%m-%d", time.gmtime(latest)) if latest else None
        return {"kind": "anilist", "crawled_until": day,
                "description": "an AniList crawl" + (f" (lists fetched up to {day})" if day else "")}
    return {"kind": "unknown", "description": "a raw store of unknown origin"}


def claim_source(conn: sqlite3.Connection, name: str, path: str | os.PathLike,
                 details: dict | None = None) -> None:
    """Records that ``name`` (``anilist`` / ``kaggle`` / ``synth``) fills this store, or
    raises if another source already does: users and ids of different sources must never
    mix in one store (a crawl into the synthetic ``data/anirank.db`` would train on both).

    Args:
      details: recorded with the name as ``name:<details as JSON>`` (synth's config).

    Raises:
      StoreError: the store holds another source's data.
    """
    held = source(conn)
    if held is not None and held.split(":")[0] != name:
        kind = "a synthetic world" if held.startswith("synth") else f"{held} data"
        raise StoreError(
            f"{path} already holds {kind}; {name} data goes into a store of its own. Pass "
            f"another --db (e.g. --db data/{name}.db), or delete {path} to replace it.")
    value = name if details is None else f"{name}:{json.dumps(details)}"
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('source', ?)", (value,))


def note_kaggle_import(conn: sqlite3.Connection, *, dump: str | None = None,
                       ratings_file: str | None = None) -> None:
    """Records which Kaggle dump (``2017`` / ``2020``) and ratings file filled the store,
    for ``describe_source``; a detail left None stays as it was."""
    for key, value in (("kaggle_dump", dump), ("kaggle_ratings", ratings_file)):
        if value is not None:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``with transaction(conn):`` commits everything inside at once, or nothing."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _rows(frame: pd.DataFrame, columns: Sequence[str]) -> Iterator[tuple]:
    """DataFrame -> tuples of plain Python values, with NaN/NA/NaT as None (SQL NULL)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"Rows to upsert lack columns {missing}; expected {list(columns)}.")
    lists = []
    for column in columns:
        values = frame[column]
        if values.dtype.kind in "iub":  # no nulls possible: fast path
            lists.append(values.to_numpy().tolist())
        elif values.dtype.kind == "f" and column not in _REAL_COLUMNS:
            # An integer column that pandas widened to float to hold NaN.
            mask = values.isna().to_numpy()
            ints = np.where(mask, 0, values.to_numpy()).astype(np.int64).tolist()
            lists.append([None if m else v for m, v in zip(mask.tolist(), ints)])
        else:  # numpy's isna over the objects: pandas' where() costs ~1 ms a column
            objects = values.to_numpy(dtype=object)
            mask = pd.isna(objects).tolist()
            lists.append([None if m else v for m, v in zip(mask, objects.tolist())])
    return zip(*lists)


# The REAL columns of the tables above: every other float column is an integer one that
# pandas widened to hold NaN. (tests/test_store.py checks this against the schema.)
_REAL_COLUMNS = {"mean_score", "std_score", "log_exposure", "predicted_score", "user_mean",
                 "title_mean"}


def _upsert(conn: sqlite3.Connection, table: str, key: Sequence[str],
            columns: Sequence[str], frame: pd.DataFrame) -> int:
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{c}=excluded.{c}" for c in columns if c not in key)
    sql = (f"INSERT INTO {table} ({names}) VALUES ({marks}) "
           f"ON CONFLICT({', '.join(key)}) DO UPDATE SET {updates}")
    conn.executemany(sql, _rows(frame, columns))
    return len(frame)


def upsert_users(conn: sqlite3.Connection, users: pd.DataFrame) -> int:
    """Inserts or replaces users (columns: ``USER_COLUMNS``). Returns the row count."""
    return _upsert(conn, "users", ("user_id",), USER_COLUMNS, users)


def upsert_media(conn: sqlite3.Connection, media: pd.DataFrame) -> int:
    """Inserts or replaces media (columns: ``MEDIA_COLUMNS``).

    ``genres`` is a list of names and ``tags`` a list of ``{"name", "rank"}`` dicts (or
    None); they are stored as JSON text.
    """
    media = media.copy()
    for column in ("genres", "tags"):
        media[column] = [None if v is None else json.dumps(list(v), ensure_ascii=False)
                         for v in media[column]]
    return _upsert(conn, "media", ("media_id",), MEDIA_COLUMNS, media)


def upsert_entries(conn: sqlite3.Connection, entries: pd.DataFrame) -> int:
    """Inserts or replaces list entries (columns: ``ENTRY_COLUMNS``)."""
    return _upsert(conn, "entries", ("user_id", "media_id"), ENTRY_COLUMNS, entries)


def upsert_relations(conn: sqlite3.Connection, relations: pd.DataFrame) -> int:
    """Inserts or replaces relations between titles (columns: ``RELATION_COLUMNS``;
    ``relation_type`` one of ``RELATION_TYPES``, from ``media_id``'s side: ``related_id``
    is its SEQUEL, PREQUEL, SIDE_STORY, PARENT, ...). Returns the row count."""
    return _upsert(conn, "media_relations", ("media_id", "related_id"), RELATION_COLUMNS,
                   relations)


def replace_user_entries(conn: sqlite3.Connection, user_id: int,
                         entries: pd.DataFrame) -> int:
    """Replaces everything on one user's list (favourite marks included) with ``entries``
    (columns: ``ENTRY_COLUMNS``): titles no longer listed go. Run it inside
    ``transaction`` to replace the list at once. Returns the row count."""
    conn.execute("DELETE FROM entries WHERE user_id=?", (int(user_id),))
    return upsert_entries(conn, entries)


def refresh_user_stats(conn: sqlite3.Connection, user_ids: Iterable[int] | None = None) -> int:
    """Recomputes users' list statistics from their entries.

    For sources without AniList's own statistics (Kaggle dumps, the synthetic world),
    computed the way AniList reports them: ``anime_count`` counts entries that are not
    PLANNING, ``mean_score``/``std_score`` (population) cover scored entries,
    ``episodes_watched`` sums progress and ``minutes_watched`` sums progress x duration
    (NULL where progress or duration is unknown). Users with entries but no row are
    created.

    Args:
      user_ids: the users to recompute; None means every user whose ``anime_count`` is
        NULL (rows just created or written without statistics).

    Returns:
      The number of users updated.
    """
    conn.execute("INSERT OR IGNORE INTO users(user_id) SELECT DISTINCT user_id FROM entries")
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS stale(user_id INTEGER PRIMARY KEY)")
    conn.execute("DELETE FROM stale")
    if user_ids is None:
        conn.execute("INSERT INTO stale SELECT user_id FROM users WHERE anime_count IS NULL")
    else:
        conn.executemany("INSERT OR IGNORE INTO stale VALUES (?)", ((int(u),) for u in user_ids))
    rows = conn.execute(
        """
        SELECT e.user_id,
               SUM(e.status != 'PLANNING'),
               AVG(CASE WHEN e.score > 0 THEN e.score END),
               AVG(CASE WHEN e.score > 0 THEN e.score * e.score END),
               SUM(e.progress),
               SUM(e.progress * m.duration)
        FROM stale s
        JOIN entries e ON e.user_id = s.user_id
        LEFT JOIN media m ON m.media_id = e.media_id
        GROUP BY e.user_id
        """
    ).fetchall()
    updates = []
    for user_id, count, mean, mean_sq, episodes, minutes in rows:
        std = None if mean is None else float(np.sqrt(max(mean_sq - mean * mean, 0.0)))
        updates.append((count, mean, std, minutes, episodes, user_id))
    conn.executemany(
        "UPDATE users SET anime_count=?, mean_score=?, std_score=?, minutes_watched=?, "
        "episodes_watched=? WHERE user_id=?",
        updates,
    )
    return len(updates)


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    """Records ``key = value`` in the store's ``meta`` table (replacing an older value)."""
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    """The value of ``key`` in ``meta``; None if never set."""
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return row and row[0]


# ---------------------------------------------------------------------------------------
# A synthetic world's future (``pipelines.synth``): a file with the store's own tables
# (``media`` and ``media_relations`` hold the titles that appear after the crawl) and two
# more: every new version of a list entry, and the new titles' ground truth.

VERSION_KEY = ("user_id", "media_id", "updated_at")
TITLE_TRUTH_COLUMNS = ("media_id", "release", "log_exposure", "prequel_id", "vector")

_FUTURE_SCHEMA = """
-- One row per new version of a list entry (the entries table's columns): an entry that
-- changes twice has two rows, told apart by updated_at.
CREATE TABLE IF NOT EXISTS entry_versions (
    user_id      INTEGER NOT NULL,
    media_id     INTEGER NOT NULL,
    score        INTEGER NOT NULL DEFAULT 0 CHECK (score BETWEEN 0 AND 100),
    status       TEXT NOT NULL CHECK (status IN
                 ('COMPLETED','CURRENT','PAUSED','DROPPED','REPEATING','PLANNING')),
    progress     INTEGER,
    repeat       INTEGER,
    is_favourite INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER,
    updated_at   INTEGER NOT NULL,
    completed_at INTEGER,
    PRIMARY KEY (user_id, media_id, updated_at)
) WITHOUT ROWID;
-- The generator's truth about the titles that appear: vector is a JSON list of floats,
-- prequel_id the title it continues (NULL: none).
CREATE TABLE IF NOT EXISTS title_truth (
    media_id     INTEGER PRIMARY KEY,
    release      INTEGER NOT NULL,
    log_exposure REAL NOT NULL,
    prequel_id   INTEGER,
    vector       TEXT NOT NULL
);
"""


def create_future_tables(conn: sqlite3.Connection) -> None:
    """Adds the future's two tables (``entry_versions``, ``title_truth``) to a store file."""
    conn.executescript(_FUTURE_SCHEMA)


def insert_entry_versions(conn: sqlite3.Connection, versions: pd.DataFrame) -> int:
    """Inserts (or replaces, by ``VERSION_KEY``) entry versions (columns: ``ENTRY_COLUMNS``)."""
    return _upsert(conn, "entry_versions", VERSION_KEY, ENTRY_COLUMNS, versions)


def read_entry_versions(conn: sqlite3.Connection) -> pd.DataFrame:
    """Every entry version, ordered by (updated_at, user_id, media_id), typed as
    ``read_entries`` types entries."""
    return _read(conn, f"SELECT {', '.join(ENTRY_COLUMNS)} FROM entry_versions "
                       "ORDER BY updated_at, user_id, media_id", ENTRY_COLUMNS, _ENTRY_DTYPES)


def insert_title_truth(conn: sqlite3.Connection, titles: pd.DataFrame) -> int:
    """Inserts (or replaces) new titles' truth (columns: ``TITLE_TRUTH_COLUMNS``;
    ``vector`` a sequence of floats, stored as JSON)."""
    titles = titles.copy()
    titles["vector"] = [json.dumps([float(x) for x in v]) for v in titles["vector"]]
    return _upsert(conn, "title_truth", ("media_id",), TITLE_TRUTH_COLUMNS, titles)


def read_title_truth(conn: sqlite3.Connection) -> pd.DataFrame:
    """New titles' truth by media_id, ``vector`` decoded to lists of floats."""
    dtypes = {"media_id": "int64", "release": "int64", "log_exposure": "float64",
              "prequel_id": "Int64", "vector": "object"}
    frame = _read(conn, f"SELECT {', '.join(TITLE_TRUTH_COLUMNS)} FROM title_truth "
                        "ORDER BY media_id", TITLE_TRUTH_COLUMNS, dtypes)
    frame["vector"] = [json.loads(v) for v in frame["vector"]]
    return frame


# ---------------------------------------------------------------------------------------
# Crawl state: each item of a crawl (``kind``: ``lists``, ``media``, ``user``,
# ``users_page``) is pending, done, failed (a later run retries it) or skipped (never
# retried), and named cursors say where a paged crawl resumes.

def set_state(conn: sqlite3.Connection, kind: str, item_id: int, state: str,
              message: str | None = None) -> None:
    """Records an item's state (``pending`` / ``done`` / ``failed`` / ``skipped``) and why;
    every state but ``pending`` counts one more attempt."""
    conn.execute(
        "INSERT INTO crawl_state(kind, item_id, state, message, attempts, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(kind, item_id) DO UPDATE SET "
        "state=excluded.state, message=excluded.message, "
        "attempts=crawl_state.attempts + excluded.attempts, updated_at=excluded.updated_at",
        (kind, int(item_id), state, message, int(state != "pending"), int(time.time())))


def enqueue(conn: sqlite3.Connection, kind: str, ids: Iterable[int]) -> None:
    """Queues the items (``pending``) that have no crawl state yet; known ones keep theirs."""
    conn.executemany("INSERT OR IGNORE INTO crawl_state(kind, item_id, state, attempts) "
                     "VALUES (?, ?, 'pending', 0)", ((kind, int(i)) for i in ids))


def crawl_items(conn: sqlite3.Connection, kind: str, states: Iterable[str]) -> list[int]:
    """The ids of ``kind`` whose state is one of ``states``, ascending."""
    states = list(states)
    marks = ", ".join("?" for _ in states)
    return [r[0] for r in conn.execute(
        f"SELECT item_id FROM crawl_state WHERE kind=? AND state IN ({marks}) "
        "ORDER BY item_id", (kind, *states))]


def pending(conn: sqlite3.Connection, kind: str) -> list[int]:
    """What the next run of a crawl fetches: its pending and failed items, ascending."""
    return crawl_items(conn, kind, ("pending", "failed"))


def get_cursor(conn: sqlite3.Connection, name: str) -> str | None:
    """A named cursor's value (e.g. the next discovery page); None if never set."""
    row = conn.execute("SELECT value FROM crawl_cursor WHERE name=?", (name,)).fetchone()
    return row and row[0]


def set_cursor(conn: sqlite3.Connection, name: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO crawl_cursor VALUES (?, ?)", (name, str(value)))


def unknown_media(conn: sqlite3.Connection) -> list[int]:
    """Titles on some list that have no ``media`` row, ascending."""
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT media_id FROM entries WHERE media_id NOT IN "
        "(SELECT media_id FROM media) ORDER BY media_id")]


def latest_entry_update(conn: sqlite3.Connection, user_id: int) -> int | None:
    """When the user's list last changed as the store has it (newest ``updated_at``)."""
    return conn.execute("SELECT MAX(updated_at) FROM entries WHERE user_id=?",
                        (int(user_id),)).fetchone()[0]


TIME_COLUMNS = ("updated_at", "completed_at", "created_at")


def newest_entry_time(conn: sqlite3.Connection, columns: Sequence[str] = TIME_COLUMNS) -> int | None:
    """The newest entry time in the store, each entry's time the first non-NULL of
    ``columns`` (as the feature stage reads it); None when no entry has one."""
    unknown = set(columns) - set(TIME_COLUMNS)
    if unknown or not columns:
        raise StoreError(f"Entry time columns are {list(TIME_COLUMNS)}. Received: {list(columns)}.")
    when = columns[0] if len(columns) == 1 else f"COALESCE({', '.join(columns)})"
    return conn.execute(f"SELECT MAX({when}) FROM entries").fetchone()[0]


def entry_count(conn: sqlite3.Connection, user_id: int) -> int:
    """How many entries the store has on the user's list."""
    return conn.execute("SELECT COUNT(*) FROM entries WHERE user_id=?",
                        (int(user_id),)).fetchone()[0]


# ---------------------------------------------------------------------------------------
# Reads. Columnar: rows are fetched in blocks and turned into typed numpy columns, so a
# 7M-entry store reads in seconds without holding 7M Python tuples at once.

_ENTRY_DTYPES = {
    "user_id": "int64", "media_id": "int64", "score": "int16", "status": "category",
    "progress": "Int32", "repeat": "Int16", "is_favourite": "bool",
    "created_at": "Int64", "updated_at": "Int64", "completed_at": "Int64",
}


def _read(conn: sqlite3.Connection, sql: str, columns: Sequence[str],
          dtypes: dict[str, str], block: int = 500_000) -> pd.DataFrame:
    cursor = conn.execute(sql)
    parts = []
    while rows := cursor.fetchmany(block):
        parts.append(_frame(rows, columns, dtypes))
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "object")) for c in columns})
    return _joined(parts, dtypes)


def _frame(rows: list, columns: Sequence[str], dtypes: dict[str, str]) -> pd.DataFrame:
    """One fetch of rows as a frame with the given dtypes."""
    part = pd.DataFrame.from_records(rows, columns=list(columns))
    return part.astype({c: dtypes[c] for c in columns if c in dtypes})


def _joined(parts: list[pd.DataFrame], dtypes: dict[str, str]) -> pd.DataFrame:
    """Frames of ``_frame`` as one (the categoricals over all of their values)."""
    if len(parts) == 1:
        return parts[0]
    frame = pd.concat(parts, ignore_index=True)
    # pd.concat of per-block categoricals with different categories falls back to object.
    for column, dtype in dtypes.items():
        if dtype == "category" and column in frame:
            frame[column] = frame[column].astype("category")
    return frame


# Rows per block of ``iter_entries`` (the feature stage's memory holds about one block),
# and rows per fetch from SQLite behind it.
ENTRY_BLOCK = 250_000
FETCH = 100_000


def iter_entries(conn: sqlite3.Connection, block: int = ENTRY_BLOCK) -> Iterator[pd.DataFrame]:
    """All list entries as ``read_entries`` gives them (same order, same dtypes), in
    blocks of about ``block`` rows, each holding whole users: a user's entries never
    straddle two blocks. ``status`` is categorical (the categories of the rows fetched
    with the block, not necessarily its own).

    Rows come from SQLite ``FETCH`` at a time whatever ``block`` is (a frame per fetch
    costs milliseconds: fetching a small block's rows one by one was most of its time),
    and the whole users fetched so far are cut into blocks of at least ``block`` rows
    (the last block of a cut takes what is left); the last user is held back until the
    next fetch shows where they end."""
    if block < 1:
        raise ValueError(f"`block` must be at least 1 row. Received: {block}.")
    columns = list(ENTRY_COLUMNS)
    cursor = conn.execute(f"SELECT {', '.join(columns)} FROM entries ORDER BY user_id, media_id")
    parts, held = [], 0
    while True:
        fetched = cursor.fetchmany(FETCH)
        if fetched:
            parts.append(_frame(fetched, columns, _ENTRY_DTYPES))
            held += len(fetched)
        end = len(fetched) < FETCH
        if not end and held < block:
            continue
        if not held:  # the end, with nothing left
            return
        frame = _joined(parts, _ENTRY_DTYPES)
        users = frame["user_id"].to_numpy()
        # Where each user's rows begin; the last user may go on in the next fetch.
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        whole = len(frame) if end else int(starts[-1])
        begin = 0
        while begin < whole:
            # Cut before the first user who begins ``block`` rows on, unless fewer than
            # ``block`` whole rows would follow: those stay in this block.
            after = starts[np.searchsorted(starts, begin + block):]
            stop = int(after[0]) if len(after) and whole - after[0] >= block else whole
            yield frame.iloc[begin:stop].reset_index(drop=True)
            begin = stop
        if end:
            return
        parts = [frame.iloc[whole:].reset_index(drop=True)]
        held = len(parts[0])


def read_entries(conn: sqlite3.Connection) -> pd.DataFrame:
    """All list entries, ordered by (user_id, media_id), with nullable integer columns."""
    columns = ENTRY_COLUMNS
    return _read(conn, f"SELECT {', '.join(columns)} FROM entries ORDER BY user_id, media_id",
                 columns, _ENTRY_DTYPES)


def read_media(conn: sqlite3.Connection) -> pd.DataFrame:
    """All media, ordered by media_id, with ``genres``/``tags`` decoded from JSON."""
    dtypes = {c: "Int64" for c in ("id_mal", "episodes", "duration", "season_year",
                                   "average_score", "mean_score", "popularity",
                                   "favourites", "fetched_at")}
    dtypes.update(media_id="int64", is_adult="boolean")
    frame = _read(conn, f"SELECT {', '.join(MEDIA_COLUMNS)} FROM media ORDER BY media_id",
                  MEDIA_COLUMNS, dtypes)
    for column in ("genres", "tags"):
        frame[column] = [[] if v is None else json.loads(v) for v in frame[column]]
    return frame


def read_relations(conn: sqlite3.Connection) -> pd.DataFrame:
    """All relations between titles, ordered by (media_id, related_id); empty for a store
    without any (or one written before the table existed, opened read-only)."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                          "name='media_relations'").fetchone()
    dtypes = {"media_id": "int64", "related_id": "int64", "relation_type": "object"}
    if not exists:
        return pd.DataFrame({c: pd.Series(dtype=dtypes[c]) for c in RELATION_COLUMNS})
    return _read(conn, f"SELECT {', '.join(RELATION_COLUMNS)} FROM media_relations "
                       "ORDER BY media_id, related_id", RELATION_COLUMNS, dtypes)


def read_users(conn: sqlite3.Connection) -> pd.DataFrame:
    """All users, ordered by user_id."""
    dtypes = {c: "Int64" for c in USER_COLUMNS if c not in ("name", "mean_score", "std_score")}
    dtypes.update(user_id="int64", mean_score="float64", std_score="float64")
    return _read(conn, f"SELECT {', '.join(USER_COLUMNS)} FROM users ORDER BY user_id",
                 USER_COLUMNS, dtypes)


def media_ids(conn: sqlite3.Connection) -> np.ndarray:
    """The ids of every title in ``media``, ascending (int64)."""
    return np.array([r[0] for r in conn.execute("SELECT media_id FROM media ORDER BY media_id")],
                    dtype=np.int64)


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Row counts of the data tables."""
    return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("users", "media", "entries")}


def fingerprint(conn: sqlite3.Connection) -> str:
    """A content hash of users, media and entries: equal stores give equal fingerprints.

    Used by tests (determinism, idempotent re-import) and recorded in feature tables and
    model configs so a report says exactly which data produced it.
    """
    import hashlib

    digest = hashlib.sha256()
    for table, key in (("users", "user_id"), ("media", "media_id"),
                       ("entries", "user_id, media_id")):
        cursor = conn.execute(f"SELECT * FROM {table} ORDER BY {key}")
        while rows := cursor.fetchmany(100_000):
            digest.update(repr(rows).encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# The daily loop's tables.

DAILY_OUTCOME_COLUMNS = ("day", "user_id", "media_id", "kind", "status", "score", "is_new",
                         "updated_at")
DAILY_PREDICTION_COLUMNS = ("revision", "day", "user_id", "media_id", "predicted_score",
                            "served_rank", "popularity_rank", "user_mean", "title_mean")


def replace_day(conn: sqlite3.Connection, revision: str, day: str, outcomes: pd.DataFrame,
                predictions: pd.DataFrame, metrics: dict) -> None:
    """Writes one day of the daily loop in one transaction: the day's outcomes (any
    model's), ``revision``'s predictions and metrics for it. Whatever the store held for
    that day (and revision) is replaced, so a rerun leaves exactly one copy, and a run
    killed before the commit leaves the previous state."""
    with transaction(conn):
        conn.execute("DELETE FROM daily_outcomes WHERE day=?", (day,))
        conn.execute("DELETE FROM daily_predictions WHERE revision=? AND day=?", (revision, day))
        conn.execute("DELETE FROM daily_metrics WHERE revision=? AND day=?", (revision, day))
        _upsert(conn, "daily_outcomes", ("day", "user_id", "media_id"), DAILY_OUTCOME_COLUMNS,
                outcomes.assign(day=day))
        _upsert(conn, "daily_predictions", ("revision", "day", "user_id", "media_id"),
                DAILY_PREDICTION_COLUMNS, predictions.assign(revision=revision, day=day))
        conn.execute("INSERT INTO daily_metrics VALUES (?, ?, ?)",
                     (revision, day, json.dumps(metrics, sort_keys=True)))


def read_daily(conn: sqlite3.Connection, table: str,
               revision: str | None = None) -> pd.DataFrame:
    """One of the daily loop's tables (``outcomes``, ``predictions``, ``metrics``), ordered
    by day; ``revision`` keeps one model's rows (not for outcomes). ``metrics`` comes back
    with its JSON decoded into dict values."""
    columns = {"outcomes": DAILY_OUTCOME_COLUMNS, "predictions": DAILY_PREDICTION_COLUMNS,
               "metrics": ("revision", "day", "metrics")}[table]
    where, args = "", ()
    if revision is not None and table != "outcomes":
        where, args = " WHERE revision=?", (revision,)
    rows = conn.execute(f"SELECT {', '.join(columns)} FROM daily_{table}{where} "
                        f"ORDER BY day{', user_id, media_id' if table != 'metrics' else ''}",
                        args).fetchall()
    frame = pd.DataFrame.from_records(rows, columns=list(columns))
    if table == "metrics":
        frame["metrics"] = [json.loads(m) for m in frame["metrics"]]
    return frame
