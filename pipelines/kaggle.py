"""Kaggle MyAnimeList dumps -> raw store.

Two public data sets earlier anime recommenders were built on; which one a file belongs
to is read from its header:

- "Anime Recommendations Database" (2016/17): ``anime.csv`` (anime_id, name, genre,
  type, episodes, rating, members) and ``rating.csv`` (user_id, anime_id, rating: 1-10,
  or -1 = watched but not rated).
- "Anime Recommendation Database 2020": ``anime.csv`` (MAL_ID, Name, Score, Genres,
  English name, Type, Episodes, Aired, Premiered, Studios, Source, Duration, Rating,
  Members, Favorites, ...) and ``animelist.csv`` (user_id, anime_id, score 0-10,
  watching_status 1-6, watched_episodes) or ``rating_complete.csv`` (user_id,
  anime_id, rating 1-10).

Mapping to the store: MAL ids become both ``media_id`` and ``id_mal`` (these dumps have no
AniList ids); MAL scores x 10 become POINT_100 (0 and -1 = not scored); a ``rating.csv``
row means the user watched the title, stored as COMPLETED; ``watching_status`` 1-4 and 6
map to CURRENT, COMPLETED, PAUSED, DROPPED, PLANNING. The dumps have no timestamps: all
entry times stay NULL (the feature pipeline then splits those users in seeded random
order).

Ratings stream in chunks (bounded memory on the 7.8M-row file). Bad rows are counted by
reason and skipped: non-numeric ids, scores out of range, unknown statuses, ratings of
anime not in the store, and malformed lines. Re-importing the same files gives the same
store (upserts by primary key).
"""

from __future__ import annotations

import csv
import html
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm.auto import tqdm

from pipelines import store
from pipelines.arrays import find_sorted
from pipelines.errors import InputError

ANIME_FORMATS = {
    "2017": ("anime_id", "name", "genre", "type", "episodes", "rating", "members"),
    "2020": ("MAL_ID", "Name", "Score", "Genres", "Type", "Episodes", "Members"),
}
RATING_FORMATS = {
    "animelist": ("user_id", "anime_id", "score", "watching_status", "watched_episodes"),
    "rating": ("user_id", "anime_id", "rating"),
}
_TYPE_TO_FORMAT = {"TV": "TV", "Movie": "MOVIE", "OVA": "OVA", "ONA": "ONA",
                   "Special": "SPECIAL", "Music": "MUSIC"}
_SOURCE = {"Original": "ORIGINAL", "Manga": "MANGA", "4-koma manga": "MANGA",
           "Web manga": "MANGA", "Digital manga": "MANGA", "Light novel": "LIGHT_NOVEL",
           "Visual novel": "VISUAL_NOVEL", "Novel": "NOVEL", "Web novel": "WEB_NOVEL",
           "Game": "VIDEO_GAME", "Card game": "GAME", "Book": "NOVEL",
           "Picture book": "PICTURE_BOOK", "Music": "OTHER", "Radio": "OTHER",
           "Other": "OTHER"}
_WATCHING_STATUS = {1: "CURRENT", 2: "COMPLETED", 3: "PAUSED", 4: "DROPPED", 6: "PLANNING"}
_ANIME_OPTIONAL = ("English name", "Aired", "Premiered", "Studios", "Source", "Duration",
                   "Rating", "Favorites")
_SEASONS = {"Winter": "WINTER", "Spring": "SPRING", "Summer": "SUMMER", "Fall": "FALL"}
BLOCK_BYTES = 16 << 20  # ~1M rating rows per block: bounded memory on any file size


def _csv_batches(path: Path, columns: list[str], malformed: Counter, *,
                 multiline: bool = False):
    """Yields DataFrames of string columns, streaming; lines with the wrong number of
    fields are counted in ``malformed`` and skipped (pyarrow's invalid-row handler)."""
    def on_invalid(row):
        malformed["malformed line"] += 1
        return "skip"

    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid,
                                          newlines_in_values=multiline),
        convert_options=pacsv.ConvertOptions(
            include_columns=columns, column_types={c: pa.string() for c in columns},
            strings_can_be_null=False),
    )
    for batch in reader:
        yield batch.to_pandas()


def _detect(path: Path, formats: dict[str, tuple[str, ...]], what: str) -> tuple[str, list[str]]:
    if not path.exists():
        raise InputError(f"{what} file {path} does not exist.")
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    for name, required in formats.items():
        if set(required) <= set(header):
            return name, header
    closest = min(formats.items(), key=lambda kv: len(set(kv[1]) - set(header)))
    missing = [c for c in closest[1] if c not in header]
    raise InputError(
        f"{path} is not a Kaggle {what} file: it has columns {header}. The closest known "
        f"format ({closest[0]}) also needs {missing}. Expected one of: "
        + "; ".join(f"{n}: {list(c)}" for n, c in formats.items()))


def _numeric(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


def _is_int(values: pd.Series) -> np.ndarray:
    """True where a coerced column holds a whole, non-negative number."""
    v = values.to_numpy(dtype="float64", na_value=np.nan)
    return ~np.isnan(v) & (v >= 0) & (np.floor(v) == v)


def _text(series: pd.Series) -> pd.Series:
    """Strips text, maps the dumps' 'Unknown' / empty to NULL, decodes HTML entities."""
    s = series.astype("string").str.strip()
    s = s.mask(s.isin(["Unknown", ""]))
    return s.map(html.unescape, na_action="ignore")


def _genre_lists(series: pd.Series) -> list:
    return [[] if not isinstance(g, str) else [x.strip() for x in g.split(",") if x.strip()]
            for g in _text(series)]


def _minutes(duration: pd.Series) -> pd.Series:
    """'24 min. per ep.' -> 24, '1 hr. 55 min.' -> 115, 'Unknown' -> NULL."""
    text = duration.astype("string")
    hours = _numeric(text.str.extract(r"(\d+)\s*hr", expand=False)).fillna(0)
    mins = _numeric(text.str.extract(r"(\d+)\s*min", expand=False)).fillna(0)
    secs = _numeric(text.str.extract(r"(\d+)\s*sec", expand=False)).fillna(0)
    total = (hours * 60 + mins + (secs > 0)).astype("Int64")  # sub-minute rounds up to 1
    return total.mask(total == 0)


def _anime_frame(raw: pd.DataFrame, fmt: str) -> pd.DataFrame:
    if fmt == "2017":
        cols = dict(id="anime_id", name="name", genre="genre", type="type",
                    episodes="episodes", score="rating", members="members")
    else:
        cols = dict(id="MAL_ID", name="Name", genre="Genres", type="Type",
                    episodes="Episodes", score="Score", members="Members")
    n = len(raw)
    genres = _genre_lists(raw[cols["genre"]])
    score = _numeric(raw[cols["score"]])
    media = pd.DataFrame({
        "media_id": _numeric(raw[cols["id"]]),
        "title_romaji": _text(raw[cols["name"]]),
        "format": _text(raw[cols["type"]]).map(_TYPE_TO_FORMAT),
        "episodes": _numeric(raw[cols["episodes"]]).astype("Float64").round().astype("Int64"),
        "average_score": (score * 10).round().astype("Int64"),
        "popularity": _numeric(raw[cols["members"]]).astype("Int64"),
        "genres": genres,
    })
    media["id_mal"] = media["media_id"]
    adult = np.array(["Hentai" in g for g in genres], bool)
    empty = pd.Series([None] * n, dtype="object")
    if fmt == "2020":
        media["title_english"] = _text(raw.get("English name", empty))
        premiered = raw.get("Premiered", empty).astype("string").str.extract(
            r"(Winter|Spring|Summer|Fall)\s+(\d{4})")
        aired_year = raw.get("Aired", empty).astype("string").str.extract(
            r"(\d{4})", expand=False)
        media["season"] = premiered[0].map(_SEASONS)
        media["season_year"] = _numeric(premiered[1].fillna(aired_year)).astype("Int64")
        studios = _text(raw.get("Studios", empty))
        media["studio"] = studios.str.split(",").str[0].str.strip()
        media["source"] = _text(raw.get("Source", empty)).map(_SOURCE)
        media["duration"] = _minutes(raw.get("Duration", empty))
        media["favourites"] = _numeric(raw.get("Favorites", empty)).astype("Int64")
        rating = raw.get("Rating", empty).astype("string")
        adult |= rating.str.startswith("Rx").fillna(False).to_numpy(bool)
    media["is_adult"] = adult.astype(np.int64)
    for column in store.MEDIA_COLUMNS:
        if column not in media:
            media[column] = None
    return media[list(store.MEDIA_COLUMNS)]


def import_anime(conn, path: str | os.PathLike) -> dict:
    """Reads a Kaggle ``anime.csv`` (either format) into ``media``. Returns counts."""
    path = Path(path)
    fmt, header = _detect(path, ANIME_FORMATS, "anime")
    wanted = ANIME_FORMATS[fmt] + _ANIME_OPTIONAL
    skipped: Counter = Counter()
    raw = pd.concat(list(_csv_batches(path, [c for c in header if c in wanted], skipped,
                                      multiline=True)), ignore_index=True)
    media = _anime_frame(raw, fmt)
    bad_id = ~_is_int(media["media_id"])
    media = media[~bad_id].copy()
    media["media_id"] = media["media_id"].astype(np.int64)
    media["id_mal"] = media["media_id"]
    duplicates = media["media_id"].duplicated(keep="last")
    media = media[~duplicates]
    with store.transaction(conn):
        store.upsert_media(conn, media)
    skipped["non-numeric anime id"] += int(bad_id.sum())
    skipped["duplicate anime id (last kept)"] += int(duplicates.sum())
    return {"format": fmt, "read": len(raw) + skipped["malformed line"], "imported": len(media),
            "skipped": {k: v for k, v in skipped.items() if v}}


def _ratings_chunk(raw: pd.DataFrame, fmt: str, known_media: np.ndarray,
                   skipped: Counter) -> pd.DataFrame:
    user = _numeric(raw["user_id"])
    media = _numeric(raw["anime_id"])
    ok = _is_int(user) & _is_int(media)
    skipped["non-numeric user or anime id"] += int((~ok).sum())

    if fmt == "rating":
        value = _numeric(raw["rating"]).to_numpy(dtype="float64", na_value=np.nan)
        valid = (value == -1) | ((value >= 1) & (value <= 10) & (np.floor(value) == value))
        score = np.where(value > 0, value * 10, 0)
        status = np.full(len(raw), "COMPLETED", dtype=object)
        progress = np.full(len(raw), np.nan)
    else:
        value = _numeric(raw["score"]).to_numpy(dtype="float64", na_value=np.nan)
        valid = (value >= 0) & (value <= 10) & (np.floor(value) == value)
        score = np.where(valid, value * 10, 0)
        code = _numeric(raw["watching_status"])
        status = code.map(_WATCHING_STATUS).to_numpy(dtype=object)
        progress = _numeric(raw["watched_episodes"]).to_numpy(dtype="float64", na_value=np.nan)
        progress = np.where(progress >= 0, progress, np.nan)
    skipped["score out of range"] += int((ok & ~valid & ~np.isnan(value)).sum())
    skipped["missing score"] += int((ok & np.isnan(value)).sum())
    ok &= valid
    if fmt == "animelist":
        has_status = pd.notna(status)
        skipped["unknown watching_status"] += int((ok & ~has_status).sum())
        ok &= has_status

    media_ids = media.to_numpy(dtype="float64", na_value=-1).astype(np.int64)
    known = find_sorted(known_media, media_ids)[1]
    skipped["anime not in the store"] += int((ok & ~known).sum())
    ok &= known

    entries = pd.DataFrame({
        "user_id": user[ok].astype(np.int64).to_numpy(),
        "media_id": media_ids[ok],
        "score": score[ok].astype(np.int64),
        "status": status[ok],
        "progress": pd.array(progress[ok], dtype="Float64").round().astype("Int64"),
    })
    duplicated = entries.duplicated(["user_id", "media_id"], keep="last").to_numpy()
    skipped["duplicate (user, anime) row (last kept)"] += int(duplicated.sum())
    entries = entries[~duplicated]
    entries["repeat"] = None
    entries["is_favourite"] = 0
    for column in ("created_at", "updated_at", "completed_at"):
        entries[column] = None  # the dumps carry no times: NULL, never invented
    return entries


def import_ratings(conn, path: str | os.PathLike, *, progress: bool = True) -> dict:
    """Streams a Kaggle ratings file into ``entries`` (and ``users``). Returns counts."""
    path = Path(path)
    fmt, header = _detect(path, RATING_FORMATS, "ratings")
    known_media = store.media_ids(conn)
    if len(known_media) == 0:
        raise InputError("The store has no anime yet: import the anime file first "
                         "(`python -m pipelines import-kaggle --anime anime.csv ...`).")
    columns = list(RATING_FORMATS[fmt])
    skipped: Counter = Counter()
    read = imported = 0
    users: set[int] = set()
    bar = tqdm(desc=f"import {path.name}", unit=" rows", unit_scale=True, disable=not progress)
    for raw in _csv_batches(path, [c for c in header if c in columns], skipped):
        entries = _ratings_chunk(raw, fmt, known_media, skipped)
        with store.transaction(conn):
            store.upsert_entries(conn, entries)
        users.update(np.unique(entries["user_id"]).tolist())
        read += len(raw)
        imported += len(entries)
        bar.update(len(raw))
    bar.close()
    with store.transaction(conn):
        store.refresh_user_stats(conn, users)
    return {"format": fmt, "read": read + skipped["malformed line"], "imported": imported,
            "users": len(users), "skipped": {k: v for k, v in skipped.items() if v}}


def run(db: str | os.PathLike = "data/anirank.db", *, anime: str | os.PathLike,
        ratings: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Stage function behind ``python -m pipelines import-kaggle``."""
    start = time.perf_counter()
    conn = store.connect(db)
    try:
        store.claim_source(conn, "kaggle", db)
        summary = {"anime": import_anime(conn, anime)}
        store.note_kaggle_import(conn, dump=summary["anime"]["format"])
        if ratings is not None:
            summary["ratings"] = import_ratings(conn, ratings, progress=progress)
            store.note_kaggle_import(conn, ratings_file=Path(ratings).name)
    finally:
        conn.close()
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary
