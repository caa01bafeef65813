"""Load a trained model (local directory or Hugging Face Hub repo) and recommend.

    from serving import Filters, Recommender

    rec = Recommender.from_pretrained("data/model")            # or "user/anirank-model"
    rec.recommend([1136, 1984], k=10, filters=Filters(formats="TV", max_popularity=300))
    rec.recommend_for_history([("Monogatari of Ryuu", 90), (45, None)])
    rec.similar_anime(38, k=10)

(ids and titles of the default synthetic world; ``rec.anime`` lists a model's catalog.)

Two stages, batched: the query tower embeds the users, the candidate index returns the
top ``candidates`` titles each has not seen (and that pass the filters), the ranker
reorders them, and the best ``k`` come back as one DataFrame. The ranking stage decides
on validation which order is served (``rec.serving`` says which and why): the ranker, or
the linear blend of the candidates' signals, only where it beats the better of EASE's
and retrieval order; else that one. ``use_ranker=True`` forces the ranker, False
retrieval order.

Every public call checks its arguments and raises :class:`InputError` naming the
argument, the value received and what is allowed. ``k`` and ``candidates`` are capped
at the catalog size (``len(rec.anime)``): asking for more returns at most every allowed
title. ``score`` is the model's score (the served order's: the ranker's, the blend's,
EASE's or the retrieval score; higher is better, comparable within one model only), and NaN where
titles come from the popularity fallback. ``predicted_score`` is the score head's
estimate of the POINT_100 score the user would give the title (``scorer/``, written by
``python -m pipelines train-scores``; in [1, 100]); NaN on popularity rows and for a
model without a score head. ``rec.predict_scores(user_ids, anime_ids)`` predicts it for
any (user, title) pairs.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import math
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import tensorflow as tf

from pipelines import _env, artifact
from pipelines.candidates import Generator
from pipelines.config import LIST_CAP, SIGNALS, STATUSES, FeatureConfig, RankingConfig, parse_time
from pipelines.errors import InputError, NotInCatalog
from pipelines.features import (LIST_COLUMNS, RELATED_IDS, RELATED_TYPES, catalog_relations,
                                list_entries, new_title_rows, taste_columns, user_features)
from pipelines.tables import related_rows
from ranking.blend import POPULARITY, Blend
from serving import variety
from serving.franchise import Franchises
from towers.features import apply_in_blocks, feature_specs, raw_features
from towers.index import CandidateIndex, IndexConfig

OUTPUT_COLUMNS = ["user_id", "rank", "anime_id", "title", "score", "predicted_score"]
# The longest history a caller may give: AniList's own cap on a list (the service's too).
MAX_HISTORY = LIST_CAP
DEFAULT_CANDIDATES = 100


def _is_int(value) -> bool:
    """An int or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


_INT_TYPES = {int: True, bool: False}


def _is_int_type(kind: type) -> bool:
    """Whether values of type ``kind`` are ints (:func:`_is_int`), remembered per type."""
    answer = _INT_TYPES.get(kind)
    if answer is None:
        answer = _INT_TYPES[kind] = (issubclass(kind, (int, np.integer))
                                     and not issubclass(kind, (bool, np.bool_)))
    return answer


def _is_number(value) -> bool:
    """A finite int or float (numpy ones too), not a bool."""
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)) and math.isfinite(value))


def _int_arg(name: str, value, minimum: int | None = None) -> int:
    """``value`` as an int, or an InputError naming ``name``."""
    if not _is_int(value):
        raise InputError(f"`{name}` must be an int. Received: {name}={value!r} "
                         f"({type(value).__name__}).")
    if minimum is not None and value < minimum:
        raise InputError(f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}.")
    return int(value)


def _strings(name: str, value, example: str) -> tuple[str, ...] | None:
    """None, or one string or a non-empty sequence of strings as a tuple; else an
    InputError naming ``name``."""
    if value is None:
        return None
    items = (value,) if isinstance(value, str) else value
    items = tuple(items) if np.iterable(items) else (items,)
    if not items or not all(isinstance(v, str) for v in items):
        raise InputError(f"`{name}` must be a string or a non-empty sequence of them, e.g. "
                         f"{example}. Received: {name}={value!r}.")
    return items


def _ids_arg(name: str, values) -> np.ndarray:
    """A 1-d int64 array of ids (one int is one id), or an InputError naming the values
    that are not integers."""
    if isinstance(values, (np.ndarray, pd.Series, pd.Index)) and values.ndim == 1 \
            and values.dtype.kind in "iu":
        return np.asarray(values, dtype=np.int64)
    items = list(values) if np.iterable(values) and not isinstance(values, (str, bytes)) else [values]
    if all(_is_int_type(t) for t in set(map(type, items))):
        return np.asarray(items, dtype=np.int64)   # checked by type: no loop per item
    bad = [v for v in items if not _is_int(v)]
    if bad:
        raise InputError(f"`{name}` must be a list or array of integer ids. Received "
                         f"{len(bad)} value(s) that are not: {bad[:5]!r}.")
    return np.asarray(items, dtype=np.int64)


def _id_column(name: str, frame: pd.DataFrame, column: str) -> pd.Series:
    """``frame[column]`` checked to hold integer ids with no missing value (``name``: the
    argument, for the error)."""
    values = frame[column]
    if values.isna().any() or not pd.api.types.is_integer_dtype(values.dtype):
        raise InputError(f"`{name}[{column!r}]` must hold integer ids with no missing "
                         f"value. Received dtype {values.dtype}, e.g. "
                         f"{values[values.isna()].head(1).tolist() or values.head(1).tolist()}.")
    return values


def _lists_arg(entries) -> pd.DataFrame:
    """``entries`` checked as lists for :meth:`Recommender.with_lists`: a DataFrame with
    ``LIST_COLUMNS``, integer ids, known statuses, scores from 0 to 100; else an
    InputError naming the column and a bad value."""
    if not isinstance(entries, pd.DataFrame):
        raise InputError(f"`entries` must be a pandas DataFrame with the columns "
                         f"{list(LIST_COLUMNS)} (e.g. store.read_entries(conn)). Received: "
                         f"{type(entries).__name__}.")
    missing = [c for c in LIST_COLUMNS if c not in entries]
    if missing:
        raise InputError(f"`entries` lacks the columns {missing}; it needs {list(LIST_COLUMNS)} "
                         "(and, optionally, updated_at, completed_at, created_at).")
    for column in ("user_id", "media_id"):
        _id_column("entries", entries, column)
    bad = ~entries["status"].astype(str).isin(STATUSES)
    if bad.any():
        raise InputError(f"`entries['status']` must be one of {list(STATUSES)}. Received "
                         f"{int(bad.sum())} other values, e.g. "
                         f"{entries['status'][bad].iloc[0]!r}.")
    score = pd.to_numeric(entries["score"], errors="coerce")
    bad = score.isna() | (score < 0) | (score > 100)
    if bad.any():
        raise InputError(f"`entries['score']` must be a POINT_100 score from 0 to 100 (0 = not "
                         f"scored). Received {int(bad.sum())} other values, e.g. "
                         f"{entries['score'][bad].iloc[0]!r}.")
    return entries.assign(score=score.to_numpy(np.float64))


# What ``Recommender.with_titles`` reads of a title (the store's media columns the feature
# stage turns into a title's features).
TITLE_COLUMNS = ("media_id", "title_romaji", "title_english", "format", "source", "season",
                 "country", "studio", "genres", "tags", "season_year", "episodes", "duration",
                 "is_adult", "status")


def _media_arg(media) -> pd.DataFrame:
    """``media`` checked for :meth:`Recommender.with_titles`: a DataFrame with
    ``TITLE_COLUMNS`` and integer, unique, non-missing ids; else an InputError."""
    if not isinstance(media, pd.DataFrame):
        raise InputError(f"`media` must be a pandas DataFrame with the store's media columns "
                         f"(store.read_media(conn)). Received: {type(media).__name__}.")
    missing = [c for c in TITLE_COLUMNS if c not in media]
    if missing:
        raise InputError(f"`media` lacks the columns {missing}; it needs {list(TITLE_COLUMNS)} "
                         "(store.read_media(conn) has them).")
    ids = _id_column("media", media, "media_id")
    if ids.duplicated().any():
        raise InputError(f"`media['media_id']` must be unique. Received {int(ids.duplicated().sum())} "
                         f"repeated ids, e.g. {int(ids[ids.duplicated()].iloc[0])}.")
    return media


def check_history_length(entries: list) -> None:
    """Raises InputError for a history of more than ``MAX_HISTORY`` entries."""
    if len(entries) > MAX_HISTORY:
        raise InputError(f"`entries` may hold at most {MAX_HISTORY:,} titles (AniList's own "
                         f"limit of a list). Received: {len(entries):,}.")


def clipped(value, width: int = 120) -> str:
    """``repr(value)``, cut to ``width`` characters: a message never echoes a megabyte."""
    text = repr(value)
    return text if len(text) <= width else text[:width] + "..."


def title_key(text) -> str:
    """A title as it is matched everywhere (Python, the API, the page): case and the
    spaces at either end or repeated inside do not count."""
    return " ".join(str(text).split()).casefold()


class History(NamedTuple):
    """One person's list as the model reads it (:meth:`Recommender.parse_history`): the
    watched titles, one entry each (``media`` ids, ``scores`` 0-100 with 0 = not scored,
    ``times`` unix seconds or None), the entries that matched no title (``unknown``, as
    given) and the ids given more than once (``duplicates``; the newest entry kept)."""
    media: list
    scores: list
    times: list
    unknown: list
    duplicates: list


def newest_per_title(media: list, times: list) -> tuple[list[int], list]:
    """One entry per title of a history: the positions to keep (of a title given more
    than once, the entry of the newest time, the last given where a time is missing),
    in first-seen order, and the ids that were repeated."""
    keep: dict = {}
    for i, (mid, when) in enumerate(zip(media, times)):
        j = keep.get(mid)
        if j is None or times[j] is None or when is None or when >= times[j]:
            keep[mid] = i
    first = {}
    for i, mid in enumerate(media):
        first.setdefault(mid, i)
    rows = sorted(keep.values(), key=lambda i: first[media[i]])
    return rows, sorted(m for m, n in collections.Counter(media).items() if n > 1)


class IdRows:
    """Ids -> their rows in a table (-1 for an id not there). A request looks up a few
    hundred ids at a time, where ``pd.Index.get_indexer`` costs ~60 µs a call before it
    starts: ids that are small non-negative ints (AniList's and MyAnimeList's) are rows
    of a dense table (one gather, which also keeps the GIL: under load a call that
    releases it waits its turn to get it back); others are found by binary search.
    Its methods are named as ``pd.Index``'s."""

    DENSE_SLOTS = 1 << 21        # a dense table of at most this many slots (8 MB), or 8 per id

    def __init__(self, ids):
        ids = np.asarray(ids, np.int64)
        self._table = None
        if len(ids) and ids.min() >= 0 and ids.max() < max(self.DENSE_SLOTS, 8 * len(ids)):
            self._table = np.full(int(ids.max()) + 1, -1, np.int32)
            self._table[ids[::-1]] = np.arange(len(ids) - 1, -1, -1, dtype=np.int32)  # first wins
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]
        self._set: frozenset | None = None

    def __len__(self) -> int:
        return len(self._sorted)

    def __contains__(self, value) -> bool:
        if self._set is None:
            self._set = frozenset(self._sorted.tolist())
        return value in self._set

    def get_indexer(self, ids) -> np.ndarray:
        """int64 rows of ``ids`` (any shape of ints), -1 where an id is not there."""
        ids = np.asarray(ids, np.int64)
        if self._table is not None:
            inside = (ids >= 0) & (ids < len(self._table))
            return np.where(inside, self._table[np.where(inside, ids, 0)], -1).astype(np.int64)
        if not len(self._sorted):
            return np.full(ids.shape, -1, np.int64)
        at = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        return np.where(self._sorted[at] == ids, self._order[at], -1)

    def get_loc(self, value) -> int:
        """The row of one id. Raises KeyError where it is not there."""
        row = int(self.get_indexer([value])[0])
        if row < 0:
            raise KeyError(value)
        return row


def _group(keys: np.ndarray, values: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    """Per id of ``ids`` (sorted, unique), the ``values`` whose key is that id (int64
    arrays, in the given order; empty for an id without any)."""
    order = np.argsort(keys, kind="stable")
    starts = np.searchsorted(keys[order], ids, side="left")
    stops = np.searchsorted(keys[order], ids, side="right")
    values = values[order].astype(np.int64)
    return [values[a:b] for a, b in zip(starts, stops)]


@dataclasses.dataclass(frozen=True)
class Filters:
    """What users ask for. Arguments are checked here; ``formats`` is checked against
    the model's catalog when a :class:`Recommender` applies the filters.

    Attributes:
      formats: keep only these formats (e.g. ``("TV", "MOVIE")``, or one string such as
        ``"TV"``); None = all. Each must be a format of the catalog
        (``rec.anime["format"].unique()``).
      min_year, max_year: season year range (inclusive); titles without a year pass.
      max_popularity: hidden gems: on at most this many lists of the training data,
        as of its cutoff (`anime.parquet` -> `popularity`; >= 0).
      genres: keep only titles with at least one of these genres (one string or a
        non-empty sequence); None = all. Each must be a genre of the catalog
        (``rec.anime["genres"]``).
      exclude_genres: leave out titles with any of these genres (default: none).
      exclude_adult: leave out adult titles (default True).
      exclude_ids: anime ids never to recommend (one int or a sequence of ints).
      entry_points: a title whose prequel or parent show the user has not watched is
        replaced by the franchise's next title they can start (``serving.franchise``;
        default True).
      per_franchise: titles of one franchise in every 10 results, at most (default 1;
        None: no cap).
      variety: 0 to 1 (default 0: the model's order): how much each next title must
        differ from those above it (maximal marginal relevance over the candidate
        embeddings; ``serving.variety``).
      niche: 0 to 1 (default 0): how much popularity counts against a title (0: not at
        all; 1: the most listed title gives up the whole range of the user's scores).
    """

    formats: tuple[str, ...] | None = None
    min_year: int | None = None
    max_year: int | None = None
    max_popularity: float | None = None
    exclude_adult: bool = True
    exclude_ids: tuple[int, ...] = ()
    genres: tuple[str, ...] | None = None
    exclude_genres: tuple[str, ...] = ()
    entry_points: bool = True
    per_franchise: int | None = 1
    variety: float = 0.0
    niche: float = 0.0

    def __post_init__(self):
        formats = _strings("formats", self.formats, "('TV', 'MOVIE')")
        genres = _strings("genres", self.genres, "('Action', 'Drama')")
        exclude_genres = _strings("exclude_genres", self.exclude_genres or None, "('Horror',)")
        years = {name: None if getattr(self, name) is None else _int_arg(name, getattr(self, name))
                 for name in ("min_year", "max_year")}
        if None not in years.values() and years["min_year"] > years["max_year"]:
            raise InputError(f"`min_year` must be <= `max_year`. Received: "
                             f"min_year={years['min_year']}, max_year={years['max_year']}.")
        if self.max_popularity is not None and not (_is_number(self.max_popularity)
                                                    and self.max_popularity >= 0):
            raise InputError(f"`max_popularity` must be a number >= 0 or None. Received: "
                             f"max_popularity={self.max_popularity!r}.")
        for name in ("exclude_adult", "entry_points"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise InputError(f"`{name}` must be True or False. Received: "
                                 f"{name}={getattr(self, name)!r}.")
        if self.per_franchise is not None:
            _int_arg("per_franchise", self.per_franchise, minimum=1)
        for name in ("variety", "niche"):
            value = getattr(self, name)
            if not (_is_number(value) and 0 <= value <= 1):
                raise InputError(f"`{name}` must be a number from 0 to 1. Received: "
                                 f"{name}={value!r}.")
            object.__setattr__(self, name, float(value))
        exclude = self.exclude_ids
        if _is_int(exclude):
            exclude = (exclude,)
        if isinstance(exclude, (str, bytes)) or not np.iterable(exclude) \
                or not all(_is_int(i) for i in exclude):
            raise InputError(f"`exclude_ids` must be anime ids (ints). Received: "
                             f"exclude_ids={self.exclude_ids!r}.")
        object.__setattr__(self, "formats", formats)
        object.__setattr__(self, "genres", genres)
        object.__setattr__(self, "exclude_genres", exclude_genres or ())
        object.__setattr__(self, "min_year", years["min_year"])
        object.__setattr__(self, "max_year", years["max_year"])
        object.__setattr__(self, "exclude_ids", tuple(int(i) for i in exclude))

    def allowed(self, anime: pd.DataFrame) -> np.ndarray:
        """Bool mask over the rows of the candidate table.

        Raises:
          InputError: ``formats`` names a format the table does not have.
        """
        keep = np.ones(len(anime), bool)
        if self.formats is not None:
            valid = sorted(anime["format"].dropna().unique())
            unknown = [f for f in self.formats if f not in valid]
            if unknown:
                raise InputError(f"`formats` must be formats of this model's catalog: {valid}. "
                                 f"Received: formats={self.formats!r} (unknown: {unknown}).")
            keep &= anime["format"].isin(self.formats).to_numpy()
        if self.genres is not None or self.exclude_genres:
            # One row per (title, genre); position i of the mask is title row i.
            genres = pd.Series(anime["genres"].to_numpy()).explode()
            valid = sorted(genres.dropna().unique())
            asked = (self.genres or ()) + self.exclude_genres
            unknown = [g for g in asked if g not in valid]
            if unknown:
                raise InputError(f"`genres` and `exclude_genres` must be genres of this model's "
                                 f"catalog: {valid}. Received: genres={self.genres!r}, "
                                 f"exclude_genres={self.exclude_genres!r} (unknown: {unknown}).")
            if self.genres is not None:
                keep &= genres.isin(self.genres).groupby(level=0).any().to_numpy()
            if self.exclude_genres:
                keep &= ~genres.isin(self.exclude_genres).groupby(level=0).any().to_numpy()
        year = anime["season_year"].to_numpy(dtype=float)
        if self.min_year is not None:
            keep &= ~(year < self.min_year)
        if self.max_year is not None:
            keep &= ~(year > self.max_year)
        if self.max_popularity is not None:
            keep &= ~(anime["popularity"].to_numpy(dtype=float) > self.max_popularity)
        if self.exclude_adult:
            keep &= ~(anime["is_adult"].fillna(0).to_numpy(dtype=float) > 0)
        if self.exclude_ids:
            keep &= ~anime["media_id"].isin(self.exclude_ids).to_numpy()
        return keep


def _bucket(n: int, cap: int) -> int:
    """The smallest power of two >= n (at most ``cap``): batches are padded to a few
    fixed sizes so the compiled scorer is built for a handful of shapes, not each."""
    return min(cap, 1 << max(0, int(n - 1).bit_length()))


def _pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with its last row repeated up to ``size`` rows (works for any dtype)."""
    extra = size - len(array)
    return np.concatenate([array, np.repeat(array[-1:], extra, axis=0)]) if extra > 0 else array


class Recommender:
    """A loaded model. Build it with :meth:`from_pretrained`."""

    def __init__(self, directory: Path, use_ranker: bool | None = None):
        self.directory = Path(directory)
        # Every file as saved (size, sha256), before anything is read: a damaged model is
        # named, never served.
        artifact.check_manifest(self.directory)
        # The retrieval half is loaded as the ranking stage and the report load it.
        self.retrieval = artifact.RetrievalArtifact(self.directory)
        r = self.retrieval
        self.config, self.schema, self.widths = r.config, r.schema, r.widths
        self.anime, self.users, self.index = r.anime, r.users, r.index
        self.query_tower = r.query_tower
        seen = artifact.read_file(self.directory / "seen.parquet", pd.read_parquet)
        self._user_row = IdRows(self.users["user_id"])
        self._anime_row = IdRows(self.anime["media_id"])
        self._masks: dict = {}      # Filters -> the titles they allow, per catalog
        rows = self._user_row.get_indexer(seen["user_id"])
        everyone = np.arange(len(self.users))
        # Per user row, the ids of the titles they have seen (one int64 array each).
        self._seen = _group(rows, seen["media_id"].to_numpy(np.int64), everyone)
        # Per user row, the title rows of their training interactions: EASE's input and
        # the franchise signal's.
        self._history = None
        if "history" in seen:
            titles = self._anime_row.get_indexer(seen["media_id"].to_numpy())
            ok = seen["history"].to_numpy(bool) & (titles >= 0)
            self._history = _group(rows[ok], titles[ok], everyone)
        # Titles added to the catalog after training (``with_titles``): none yet.
        self.new_titles = np.zeros(0, np.int64)
        self._user_raw = raw_features(self.users, feature_specs(self.schema, "user"), self.widths)
        self._anime_raw = raw_features(self.anime, feature_specs(self.schema, "anime"), self.widths)
        self._saved = dict(r.saved)
        self._encoded, self.xla = None, False
        # What the ranking stage decided to serve (the ranker only where it beat the
        # retrieval order on validation), unless the caller says otherwise.
        self.serving = artifact.served_order(self.config)
        if use_ranker is not None:
            self.serving = {"order": "ranked" if use_ranker else "retrieval",
                            "why": f"use_ranker={use_ranker} was passed"}
        saved_ranker, self.ranker = ((None, None) if self.serving["order"] != "ranked"
                                     else artifact.load_ranker(self.directory))
        if self.serving["order"] == "ranked" and self.ranker is None:
            if use_ranker:
                raise InputError(f"use_ranker=True, but {self.directory} has no ranker/: "
                                 "train one (`python -m pipelines train-ranking`) or load "
                                 "it with use_ranker=False.")
            raise InputError(f"{self.directory}/config.json serves the ranker, but the "
                             "model has no ranker/: it is incomplete; download the model "
                             "again or retrain it.")
        if saved_ranker is not None:
            self._saved["ranker"] = saved_ranker
            signatures = saved_ranker.signatures
            if "encode_anime" in signatures:
                # Titles do not depend on the user: encode the catalog once, then every
                # batch gathers float rows instead of re-encoding strings per candidate.
                self._encoded = tf.constant(self._encode_catalog(signatures["encode_anime"]))
                self._score_rows, self._score_inputs, self._score_signals = self._scorer(
                    signatures["score_encoded"])
        # The score head, when the model has one: predicted_score of every returned row.
        saved_scorer, self.scorer = artifact.load_scorer(self.directory)
        self._titles_for_scores = None
        if saved_scorer is not None:
            self._saved["scorer"] = saved_scorer
            if "encode_titles" in saved_scorer.signatures:
                # As for the ranker: the titles' half of the head once per catalog, then
                # each returned row gathers its encoding (no string lookups per row).
                self._titles_for_scores = self._encode_catalog(
                    saved_scorer.signatures["encode_titles"])
        ranking = self.config.get("ranking")
        self.ranking_config = RankingConfig.from_dict(ranking) if ranking else None
        # The candidates the ranker was trained to reorder: EASE's too where it reads
        # them, and the titles' relations where it reads the franchise signal.
        self._ease, self._ease_candidates, self._signals = None, 0, ("similarity",)
        self._relations = None
        # The blend (a weighted sum of the candidates' signals) where the model serves it.
        self._blend = None
        if self.serving["order"] == "blend":
            if "blend" not in self.config:
                raise InputError(f"{self.directory}/config.json serves the blend but has no "
                                 "`blend` weights; the model is corrupt.")
            self._blend = Blend.from_dict(self.config["blend"])
        reorders = self.ranker is not None or self.serving["order"] in ("blend", "ease")
        if reorders and self.ranking_config is not None:
            generator = r.ranker_generator(self.ranking_config)
            if generator.needs_history and self._history is None:
                raise InputError(f"{self.directory}/seen.parquet has no `history` column, which "
                                 "the ranker's EASE and franchise signals need; the model is "
                                 "corrupt.")
            missing = sorted(set(self.ranking_config.signals) - set(generator.signals))
            if missing:
                raise InputError(f"The ranker reads the candidate signals {missing}, which this "
                                 "model directory cannot compute (no ease.npy, or no relations "
                                 "between titles in its schema); the model is corrupt.")
            self._ease, self._ease_candidates = generator.ease_weights, generator.k_ease
            self._signals, self._relations = generator.signals, generator.relations
            needed = {"ease": ("ease",), "blend": self._blend.names if self._blend else ()}
            missing = sorted(set(needed.get(self.serving["order"], ())) - set(self._signals)
                             - {POPULARITY})
            if missing:
                raise InputError(f"The model serves {self.serving['order']} order, which reads "
                                 f"the candidate signals {missing} that this model directory "
                                 "cannot compute; the model is corrupt.")
        self._popularity = self.anime["train_count"].to_numpy(dtype=float)

    @classmethod
    def from_pretrained(cls, repo_id_or_dir: str, revision: str | None = None,
                        use_ranker: bool | None = None, **hub_kwargs) -> "Recommender":
        """Loads a model directory, or downloads (cached) a Hub repo at ``revision``.

        ``use_ranker``: None (default) serves what the model's ranking stage decided
        (``rec.serving``: the ranker only where it beat retrieval order on validation);
        True forces the ranker (when the model has one), False retrieval order."""
        from serving.hub import resolve

        return cls(resolve(repo_id_or_dir, revision, **hub_kwargs), use_ranker=use_ranker)

    # -- scoring ----------------------------------------------------------------------
    def _encode_catalog(self, encode, raw: dict | None = None) -> np.ndarray:
        """A title-half signature (``{"encoded": [n, d]}`` from raw title features) applied
        to the whole catalog (or to the titles of ``raw``), in blocks."""
        names = [t.name for t in encode.structured_input_signature[1].values()]
        return apply_in_blocks(lambda batch: encode(**batch)["encoded"],
                               self._anime_raw if raw is None else raw, names)

    def _scorer(self, score_encoded):
        """``fn(rows, signals, user) -> scores [b, l]``: the gather of encoded titles and
        the ranker's ``score_encoded`` signature as one function, compiled with XLA
        (fused element-wise work over the ``[b, l, hidden]`` activations: measured 1.7x
        the plain graph on 2 cores) when the graph allows it, e.g. no string lookups.
        Sets ``self.xla`` to whether it is compiled. Returns the function, the user inputs
        it takes and the candidate signals it takes."""
        table = self._encoded
        inputs = [t.name for t in score_encoded.structured_input_signature[1].values()]
        signals = sorted(n for n in inputs if n in SIGNALS)
        names = sorted(n for n in inputs if n != "anime_encoded" and n not in SIGNALS)

        # One trace for every batch size (the batch dimension left open): without it,
        # each new size was traced again (TensorFlow's "retracing" warnings at start);
        # XLA still compiles each size once, at warm-up.
        signature = (tf.TensorSpec([None, None], tf.int64),
                     {n: tf.TensorSpec([None, None], tf.float32) for n in signals},
                     {k: tf.TensorSpec((None, *self._user_raw[k].shape[1:]),
                                       tf.as_dtype(self._user_raw[k].dtype)) for k in names})

        def build(jit: bool):
            @tf.function(jit_compile=jit, input_signature=signature)
            def score_rows(rows, signal_values, user):
                return score_encoded(anime_encoded=tf.gather(table, rows),
                                     **signal_values, **user)["scores"]
            return score_rows

        fn, self.xla = build(jit=True), True
        rows = np.zeros((1, min(2, len(self.anime))), np.int64)
        try:  # XLA compiles at the first call: probe with one tiny list
            with _env.native_stderr_silenced():   # its one absl line, "Compiled cluster using XLA!"
                fn(tf.constant(rows), {n: tf.zeros(rows.shape) for n in signals},
                   {k: tf.constant(self._user_raw[k][:1]) for k in names})
        except (tf.errors.OpError, ValueError, TypeError):
            fn, self.xla = build(jit=False), False
        return fn, names, signals

    def _rank(self, user_raw: dict, cand_rows: np.ndarray, signals: dict,
              batch_size: int = 512) -> np.ndarray:
        """Scores ``[n, C]`` of the served order (``self.serving``): the ranker's, the
        blend's, EASE's or the retrieval score."""
        if self._blend is not None:
            return self._blend.score(signals, self._popularity[np.maximum(cand_rows, 0)])
        if self.serving["order"] == "ease":
            return signals["ease"]
        if self.ranker is None:
            return signals["similarity"]
        if self._encoded is not None:
            out = []
            for start in range(0, len(cand_rows), batch_size):
                stop = min(start + batch_size, len(cand_rows))
                size = _bucket(stop - start, batch_size)
                rows = _pad_rows(np.maximum(cand_rows[start:stop], 0), size)
                user = {k: tf.constant(_pad_rows(user_raw[k][start:stop], size))
                        for k in self._score_inputs}
                values = {k: tf.constant(_pad_rows(signals[k][start:stop], size))
                          for k in self._score_signals}
                out.append(self._score_rows(tf.constant(rows), values, user).numpy()[:stop - start])
            return np.concatenate(out)
        # A ranker without the factorised signatures: its serving_default, row by row.
        return artifact.score_lists(self.ranker, user_raw, self._anime_raw,
                                    np.arange(len(cand_rows)), cand_rows, signals, batch_size)

    def _recommend_raw(self, user_raw: dict, seen: list | None, histories: list | None, k: int,
                       candidates: int, allowed: np.ndarray,
                       filters: Filters | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (title rows, scores) for users given as raw features, their seen
        titles (ids, left out) and histories (title rows of their training interactions,
        EASE's and the franchise signal's input), under the franchise rules of
        ``filters`` (``serving.franchise``)."""
        queries = self.retrieval.embed_users(user_raw)
        generate = Generator(self.index, self._ease, candidates, self._ease_candidates,
                             self._signals, self._relations)
        cand = generate(queries, histories, exclude=seen, allowed=allowed)
        scores = self._rank(user_raw, cand.rows, cand.signals)
        scores = np.where(cand.rows >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")
        rows = np.take_along_axis(cand.rows, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        filters = filters or Filters()
        if filters.variety or filters.niche:
            # The knobs choose three times the places asked for: the franchise rules
            # below may drop some.
            rows, scores = variety.rerank(np.where(np.isfinite(scores), rows, -1), scores,
                                          self._unit_embeddings, self._niche_scale,
                                          filters.variety, filters.niche, depth=3 * k)
        if histories is None or not self._franchises.known:
            return rows[:, :k], scores[:, :k]
        excluded = ([np.zeros(0, np.int64)] * len(rows) if seen is None
                    else [self._anime_row.get_indexer(np.asarray(s, np.int64)) for s in seen])
        return self._franchises.apply(np.where(np.isfinite(scores), rows, -1), scores,
                                      histories, excluded, allowed, k, filters.entry_points,
                                      filters.per_franchise)

    @functools.cached_property
    def _niche_scale(self) -> np.ndarray:
        """Each title's popularity as the niche knob reads it (``serving.variety``)."""
        return variety.popularity_share(self.anime["popularity"].to_numpy(dtype=float))

    @functools.cached_property
    def _franchises(self) -> Franchises:
        """The franchise rules over this catalog's relations, built once."""
        return Franchises(self.anime, self.schema)

    def _predicted(self, user_raw: dict | None, rows: np.ndarray) -> np.ndarray:
        """The score head's predictions ``[n, k]`` (float32) for title rows ``[n, k]`` of
        users given as raw features (row ``i`` of ``user_raw``): only the returned rows
        are scored, in one batched call. NaN at padding, without a user (popularity
        rows) and for a model without a score head."""
        out = np.full(rows.shape, np.nan, np.float32)
        ok = rows >= 0
        if self.scorer is None or user_raw is None or not ok.any():
            return out
        users = np.broadcast_to(np.arange(len(rows))[:, None], rows.shape)[ok]
        out[ok] = self._score_pairs(user_raw, users, rows[ok])
        return out

    def _score_pairs(self, user_raw: dict, users: np.ndarray, titles: np.ndarray,
                     batch_size: int = 8192) -> np.ndarray:
        """The score head's predictions ``[n]`` of pairs (row ``users[i]`` of ``user_raw``,
        title row ``titles[i]``): from the catalog's encodings, or by the head's
        ``serving_default`` for a head without the factorised signatures."""
        if self._titles_for_scores is None:
            return artifact.predict_pairs(self.scorer, user_raw, self._anime_raw, users, titles)
        score = self._saved["scorer"].signatures["score_encoded"]
        inputs = [t.name for t in score.structured_input_signature[1].values()
                  if t.name != "title_encoded"]
        out = [np.zeros(0, np.float32)]
        for start in range(0, len(users), batch_size):
            part = slice(start, start + batch_size)
            batch = {k: tf.constant(user_raw[k][users[part]]) for k in inputs}
            out.append(score(title_encoded=tf.constant(self._titles_for_scores[titles[part]]),
                             **batch)["predicted_score"].numpy())
        return np.concatenate(out)

    def _frame(self, user_ids, rows: np.ndarray, scores: np.ndarray,
               user_raw: dict | None = None) -> pd.DataFrame:
        k = rows.shape[1]
        ok = rows.reshape(-1) >= 0
        r = np.maximum(rows.reshape(-1), 0)
        frame = pd.DataFrame({
            "user_id": np.repeat(np.asarray(user_ids, dtype=np.int64), k),
            "rank": np.tile(np.arange(1, k + 1), len(rows)),
            "anime_id": self.anime["media_id"].to_numpy()[r],
            "title": self.anime["title"].to_numpy()[r],
            "score": scores.reshape(-1).astype(np.float32),
            "predicted_score": self._predicted(user_raw, rows).reshape(-1)})
        return frame[ok].reset_index(drop=True)

    # -- argument checks ------------------------------------------------------------------
    def _check_k(self, k, candidates=None) -> tuple[int, int]:
        """``(k, candidates)`` checked and capped at the catalog size; ``candidates``
        None means ``max(k, 100)``.

        Raises:
          InputError: either is not a positive int, or ``candidates < k`` (the ranker
            can only return titles retrieval found).
        """
        n = len(self.anime)
        capped_k = min(_int_arg("k", k, 1), n)
        if candidates is None:
            return capped_k, min(max(capped_k, DEFAULT_CANDIDATES), n)
        capped = min(_int_arg("candidates", candidates, 1), n)
        if capped < capped_k:
            raise InputError(f"`candidates` must be >= `k` (the ranker reorders the retrieved "
                             f"candidates and returns the best k of them). Received: k={k}, "
                             f"candidates={candidates}.")
        return capped_k, capped

    def allowed(self, filters: Filters | None = None) -> np.ndarray:
        """The bool mask (read-only) over ``rec.anime``'s rows of the titles ``filters``
        (None: the default Filters) allow, kept per Filters.

        Raises:
          InputError: ``filters`` is not a Filters, or names formats or genres the
            catalog does not have.
        """
        if filters is None:
            filters = Filters()
        if not isinstance(filters, Filters):
            raise InputError(f"`filters` must be a serving.Filters or None. Received: "
                             f"filters={filters!r} ({type(filters).__name__}).")
        # Kept per Filters (a service sees a few over and over), read-only; at most 256.
        mask = self._masks.get(filters)
        if mask is None:
            mask = filters.allowed(self.anime)
            mask.flags.writeable = False
            if len(self._masks) >= 256:
                self._masks.clear()
            self._masks[filters] = mask
        return mask

    def _catalog_rows(self, name: str, anime_ids) -> tuple[np.ndarray, np.ndarray]:
        """``anime_ids`` (checked ints) and their title rows.

        Raises:
          InputError: ids that are not ints, or not of this model's catalog (named).
        """
        anime_ids = _ids_arg(name, anime_ids)
        rows = self._anime_row.get_indexer(anime_ids)
        if (rows < 0).any():
            unknown = np.unique(anime_ids[rows < 0])
            raise InputError(f"{len(unknown)} anime ids of `{name}` are not in this model's "
                             f"catalog, e.g. {unknown[:3].tolist()}; valid ids are in "
                             "rec.anime['media_id'].")
        return anime_ids, rows

    def _user_row_of(self, user_id) -> int:
        """The row of one user of the training data.

        Raises:
          InputError: ``user_id`` is not an int or not in the training data.
        """
        row = int(self._user_row.get_indexer([_int_arg("user_id", user_id)])[0])
        if row < 0:
            raise InputError(f"User {user_id} is not in the training data; valid ids are in "
                             "rec.users['user_id'].")
        return row

    # -- public API -----------------------------------------------------------------------
    def known(self, user_ids) -> np.ndarray:
        """Bool per user id: is the user in the training data?"""
        return self._user_row.get_indexer(_ids_arg("user_ids", user_ids)) >= 0

    def recommend(self, user_ids, k: int = 10, candidates: int | None = None,
                  exclude_seen: bool = True, filters: Filters | None = None,
                  exclude=None) -> pd.DataFrame:
        """Top ``k`` titles per known user.

        Args:
          user_ids: integer user ids of the training data (a list or array, or one id).
          k: titles per user, a positive int; capped at the catalog size, so a user gets
            at most every allowed title they have not seen.
          candidates: titles retrieved per user for the ranker to reorder, >= ``k``;
            None = ``max(k, 100)``; capped at the catalog size.
          exclude_seen: leave out the titles on the user's training list.
          filters: a :class:`Filters`; None = the defaults (no adult titles).
          exclude: more anime ids to leave out, one list (or array) per user id, e.g.
            what each user added since the model was trained (the daily loop passes the
            lists it refreshed); ids outside the catalog are ignored. None: nothing more.

        Returns:
          Columns user_id, rank (1 = best), anime_id, title, score (float32, the model's
          score: the ranker's, or the retrieval score when the model has no ranker),
          predicted_score (float32, the POINT_100 score the user would give the title
          by the score head, in [1, 100]; NaN for a model without one).
          Fewer than ``k`` rows for a user only when fewer titles are allowed.

        Raises:
          InputError: a bad argument, or a user id that is not in the training data (use
            :meth:`known` to split them off, or :meth:`recommend_for_history` with their
            list).
        """
        k, candidates = self._check_k(k, candidates)
        user_ids = _ids_arg("user_ids", user_ids)
        if not isinstance(exclude_seen, (bool, np.bool_)):
            raise InputError(f"`exclude_seen` must be True or False. Received: "
                             f"exclude_seen={exclude_seen!r}.")
        allowed = self.allowed(filters)
        rows = self._user_row.get_indexer(user_ids)
        if (rows < 0).any():
            raise InputError(f"{(rows < 0).sum()} user ids are not in the training data, e.g. "
                             f"{user_ids[rows < 0][:3].tolist()}; use recommend_for_history().")
        if not len(user_ids):
            return self._frame(user_ids, np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
        raw = {key: v[rows] for key, v in self._user_raw.items()}
        seen = [self._seen[r] for r in rows] if exclude_seen else None
        if exclude is not None:
            if len(exclude) != len(user_ids):
                raise InputError(f"`exclude` must hold one list of anime ids per user id. "
                                 f"Received: {len(exclude)} lists for {len(user_ids)} users.")
            extra = [_ids_arg("exclude", e) for e in exclude]
            seen = extra if seen is None else [np.union1d(s, e) for s, e in zip(seen, extra)]
        histories = None if self._history is None else [self._history[r] for r in rows]
        top, scores = self._recommend_raw(raw, seen, histories, k, candidates, allowed, filters)
        return self._frame(user_ids, top, scores, raw)

    def popular(self, user_ids, k: int = 10, filters: Filters | None = None) -> pd.DataFrame:
        """The cold-start fallback: the ``k`` allowed titles most training users watched
        (``rec.anime["train_count"]``), the same list for each of ``user_ids`` (any ids).

        Returns:
          The columns of :meth:`recommend`; ``score`` and ``predicted_score`` are NaN:
          no model scored these titles (the order is by training watch count).
        """
        k, _ = self._check_k(k)
        user_ids = _ids_arg("user_ids", user_ids)
        allowed = self.allowed(filters)
        order = np.argsort(-np.where(allowed, self._popularity, -np.inf), kind="stable")[:k]
        order = order[allowed[order]]
        rows = np.tile(order, (len(user_ids), 1))
        return self._frame(user_ids, rows, np.full(rows.shape, np.nan, np.float32))

    def recommend_for_history(self, entries, k: int = 10, candidates: int | None = None,
                              filters: Filters | None = None) -> pd.DataFrame:
        """Recommendations for someone not in the training data, from their list.

        The user's features are built from the entries by the feature stage's own code
        (``pipelines.features.user_features``, each entry a watched title): the same
        counts, taste vectors and history (weighted by score and, when the entries carry
        times, recency) a known user has, so the query tower reads them alike.

        Args:
          entries: ``(anime id or title, score or None)`` pairs, or ``(anime id or title,
            score or None, time or None)`` triples; scores are POINT_100 (0 to 100; None
            or 0 = not scored); times are unix seconds (AniList's ``updatedAt``) or ISO
            dates; the history decays with age only when every entry has one. Titles match ``title`` or
            ``title_romaji`` of ``rec.anime`` case-insensitively. Entries that match
            nothing are ignored with a warning and listed in ``result.attrs["unknown"]``.
            An empty list gets the popularity fallback (:meth:`popular`).
          k, candidates, filters: as in :meth:`recommend`.

        Returns:
          Columns rank, anime_id, title, score, predicted_score, source: ``"model"``
          rows are scored as in :meth:`recommend` (the listed titles left out; the score
          head reads the user's features from the history); ``"popularity"`` rows
          (empty history) have score and predicted_score NaN.

        Raises:
          InputError: a bad argument or entry, or entries of which none matches a title.
        """
        return self.recommend_for_histories([entries], k, candidates, filters, warn=True)[0]

    def recommend_for_histories(self, histories: list, k: int = 10,
                                candidates: int | None = None, filters: Filters | None = None,
                                warn: bool = False, exclude: list | None = None,
                                columns: bool = False) -> list:
        """:meth:`recommend_for_history` for several people at once: their features built
        together, one query-tower call, one index search and one ranker call for all of
        them (the service batches concurrent requests through it). Returns one DataFrame
        per history, each as :meth:`recommend_for_history` returns it. A history is
        entries as :meth:`recommend_for_history` takes them or a :class:`History` already
        parsed (:meth:`parse_history`, not checked again); ``warn``: warn about unknown
        and repeated titles (it always does for one history); ``exclude``: per history,
        more anime ids to leave out (e.g. the titles on a list that were not watched:
        planned, dropped), as ``filters.exclude_ids`` does for all of them; ``columns``:
        each answer as a dict of numpy columns (anime_id, rank, score, predicted_score,
        source) instead of a DataFrame, without the ``attrs`` (what the service reads:
        a DataFrame per list costs more than the model's call for it).

        Raises:
          InputError: a bad argument, or a history as :meth:`recommend_for_history` says.
        """
        k, candidates = self._check_k(k, candidates)
        allowed = self.allowed(filters)
        if isinstance(histories, (str, bytes, dict)) or not np.iterable(histories):
            raise InputError("`histories` must be a list of histories, each a list of (anime id "
                             f"or title, score or None) pairs. Received: {histories!r}.")
        parsed = [self._parse_history(entries, warn) for entries in histories]
        if exclude is not None and len(exclude) != len(parsed):
            raise InputError(f"`exclude` must hold one list of anime ids per history. Received "
                             f"{len(exclude)} lists for {len(parsed)} histories.")
        extra = [[]] * len(parsed) if exclude is None else [_ids_arg("exclude", e) for e in exclude]
        live = [i for i, history in enumerate(parsed) if history.media]
        out: list = [None] * len(parsed)
        if live:
            raw = self._history_features([parsed[i][:3] for i in live])
            watched = [parsed[i].media for i in live]
            top, top_scores = self._recommend_raw(
                raw, [np.r_[watched[j], extra[i]] for j, i in enumerate(live)],
                [self._anime_row.get_indexer(media) for media in watched], k, candidates, allowed,
                filters)
            frame = self._frame(np.arange(len(live)), top, top_scores, raw).assign(source="model")
            # Rows come by user, in order: one slice each (none for a user every title
            # was filtered from).
            bounds = np.searchsorted(frame["user_id"].to_numpy(), np.arange(len(live) + 1))
            frame = frame.drop(columns="user_id")
            arrays = {c: frame[c].to_numpy() for c in frame.columns} if columns else None
            for position, i in enumerate(live):
                part = slice(bounds[position], bounds[position + 1])
                out[i] = ({c: v[part] for c, v in arrays.items()} if columns
                          else frame.iloc[part].reset_index(drop=True))
        for i, (media, _, _, unknown, duplicates) in enumerate(parsed):
            if out[i] is None:
                fallback = self.popular([-1], k, filters).assign(source="popularity").drop(
                    columns="user_id")
                out[i] = {c: fallback[c].to_numpy() for c in fallback.columns} if columns else fallback
            if not columns:
                out[i].attrs["unknown"] = unknown
                out[i].attrs["duplicates"] = duplicates
        return out

    def parse_history(self, entries) -> History:
        """``entries`` (see :meth:`recommend_for_history`) checked and matched to the
        catalog: the :class:`History` the model reads. The service checks each request's
        list with it before the batched call, so a bad entry fails only its own request.

        Raises:
          InputError: an entry that is not (id or title, score[, time]), naming it; more
            than ``MAX_HISTORY`` entries. NotInCatalog: entries of which none matches a
            title of the catalog.
        """
        if isinstance(entries, (str, bytes, dict)) or not np.iterable(entries):
            raise InputError(f"`entries` must be a list of (anime id or title, score or None) "
                             f"pairs. Received: entries={clipped(entries)}.")
        entries = list(entries)
        check_history_length(entries)
        media, scores, times, unknown = [], [], [], []
        rows, by_title = self._anime_row, self._by_title
        for i, entry in enumerate(entries):
            if not (isinstance(entry, (tuple, list)) and len(entry) in (2, 3)
                    and (_is_int(entry[0]) or isinstance(entry[0], str))):
                raise InputError(f"`entries[{i}]` must be (anime id or title, score) or (anime "
                                 f"id or title, score, time); in JSON [id or title, score] or "
                                 f"[id or title, score, time]. Received: {clipped(entry)}.")
            item, score = entry[0], entry[1]
            if not (score is None or (_is_number(score) and 0 <= score <= 100)):
                raise InputError(f"`entries[{i}]`: the score must be None (null) or a number "
                                 f"from 0 to 100 (0 = not scored). Received: {clipped(entry)}.")
            when = entry[2] if len(entry) == 3 else None
            if isinstance(when, str):
                when = parse_time(when, f"entries[{i}] time")
            elif not (when is None or (_is_int(when) and 0 <= when < 2**62)):
                raise InputError(f"`entries[{i}]`: the time must be None (null), unix seconds "
                                 f"or an ISO date. Received: {clipped(entry)}.")
            mid = item if _is_int(item) and item in rows else by_title.get(title_key(item))
            if mid is None:
                unknown.append(item)
                continue
            media.append(int(mid))
            scores.append(int(round(score or 0)))
            times.append(None if when is None else int(when))
        if entries and not media:
            shown = ", ".join(clipped(u, 60) for u in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise NotInCatalog(f"None of the {len(entries)} entries matches a title of this "
                               f"model's catalog (by anime id, or by title or romaji title): "
                               f"{shown}. Find ids in rec.anime[['media_id', 'title', "
                               f"'title_romaji']] or with the service's /search.")
        keep, duplicates = newest_per_title(media, times)
        return History([media[i] for i in keep], [scores[i] for i in keep],
                       [times[i] for i in keep], unknown, duplicates)

    def _parse_history(self, entries, warn: bool) -> History:
        """:meth:`parse_history`, warning (``warn``) about unknown and repeated titles."""
        history = entries if isinstance(entries, History) else self.parse_history(entries)
        if warn and history.unknown:
            warnings.warn(f"{len(history.unknown)} history entries match no anime id or title "
                          f"of this model and are ignored: {history.unknown[:10]!r}.",
                          stacklevel=5)
        if warn and history.duplicates:
            warnings.warn(f"{len(history.duplicates)} titles are listed more than once; the "
                          f"newest entry of each is kept (the last given where times are "
                          f"missing): {history.duplicates[:10]!r}.", stacklevel=5)
        return history

    def title_id(self, title: str) -> int | None:
        """The anime id of the catalog's title named ``title`` (its English or romaji
        title, matched by :func:`title_key`), or None."""
        return self._by_title.get(title_key(title))

    @functools.cached_property
    def _by_title(self) -> dict:
        """Casefolded ``title`` and ``title_romaji`` -> id (romaji where they clash)."""
        by_title = {title_key(t): int(m) for t, m in zip(self.anime["title"], self.anime["media_id"])}
        by_title.update({title_key(t): int(m)
                         for t, m in zip(self.anime["title_romaji"], self.anime["media_id"])
                         if t is not None and t == t})
        return by_title

    def with_lists(self, entries: pd.DataFrame) -> "Recommender":
        """This model serving the users of ``entries`` from these lists instead of the
        lists it was trained on: e.g. the raw store's current lists, refreshed after
        training (``store.read_entries``).

        Each user's features, history (the query tower's, EASE's and the franchise
        signal's input) and seen titles are rebuilt from their entries by the feature
        stage's own code (:func:`pipelines.features.user_features`), as the feature
        stage built them at training; nothing is retrained. Users of ``entries`` the model
        was not trained on become known users. The model itself is shared, not copied.

        Args:
          entries: a DataFrame with the store's columns ``user_id``, ``media_id``,
            ``status`` (AniList's list statuses), ``score`` (POINT_100, 0 = none) and,
            optionally, the entry times ``updated_at``, ``completed_at``, ``created_at``
            (unix seconds; the history decays with age as at training). Entries of titles
            outside this model's catalog count as seen only (the model cannot read
            them); a user none of whose entries is in the catalog keeps the list the model
            was trained on.

        Returns:
          A :class:`Recommender` (this one is unchanged).

        Raises:
          InputError: ``entries`` is not such a DataFrame (the column or value named).
        """
        entries = _lists_arg(entries)
        fresh = copy.copy(self)
        if entries.empty:
            return fresh
        config = FeatureConfig.from_dict(self.schema["config"])
        catalog = self._anime_row.get_indexer(entries["media_id"].to_numpy()) >= 0
        train = list_entries(entries[catalog], config)
        if train.empty:
            return fresh
        users = self._user_table(train, config)[self.users.columns]
        raw = raw_features(users, feature_specs(self.schema, "user"), self.widths)
        # Per fresh user (users' order: sorted ids), the whole list and the watched
        # titles of the catalog.
        ids = users["user_id"].to_numpy(np.int64)
        seen = _group(entries["user_id"].to_numpy(np.int64),
                      entries["media_id"].to_numpy(np.int64), ids)
        watched = train["is_interaction"].to_numpy(bool)
        history = _group(train["user_id"].to_numpy(np.int64)[watched],
                         self._anime_row.get_indexer(train["media_id"].to_numpy()[watched]), ids)
        kept = np.flatnonzero(~np.isin(self.users["user_id"].to_numpy(np.int64), ids))
        fresh.users = pd.concat([self.users.iloc[kept], users], ignore_index=True)
        fresh._user_row = IdRows(fresh.users["user_id"])
        fresh._user_raw = {k: np.concatenate([v[kept], raw[k]]) for k, v in self._user_raw.items()}
        fresh._seen = [self._seen[r] for r in kept] + seen
        if self._history is not None:
            fresh._history = [self._history[r] for r in kept] + history
        return fresh

    def with_titles(self, media: pd.DataFrame,
                    relations: pd.DataFrame | None = None) -> "Recommender":
        """This model serving the titles of ``media`` it was not trained on too: e.g.
        the raw store's media table after a refresh brought titles first listed after
        training (``store.read_media``). Nothing is retrained.

        Each new title gets the row a title no one has listed gets
        (:func:`pipelines.features.new_title_rows`: its metadata, nothing counted) and
        is placed by the candidate tower from that metadata (its id is out of the
        vocabulary; the tower was trained for this, ``RetrievalConfig.
        cold_start_dropout``); it then enters the candidate index and every ordering
        (EASE knows nothing of it: its weights are 0). With ``relations`` (the store's,
        ``store.read_relations``) and a model that reads the franchise signal, the
        relations between the whole catalog's titles are rebuilt, so a new season is
        known as the sequel of the one before. The model itself is shared, not copied.

        Returns:
          A :class:`Recommender` whose ``new_titles`` holds the added ids (this one is
          unchanged).

        Raises:
          InputError: ``media`` is not such a DataFrame (the column named).
        """
        media = _media_arg(media)
        fresh = copy.copy(self)
        new = media[~media["media_id"].isin(self.anime["media_id"]).to_numpy()]
        fresh.new_titles = np.union1d(self.new_titles, new["media_id"].to_numpy(np.int64))
        if new.empty:
            return fresh
        rows = new_title_rows(new, FeatureConfig.from_dict(self.schema["config"]))
        anime = pd.concat([self.anime, rows[[c for c in self.anime.columns if c in rows]]],
                          ignore_index=True)
        if RELATED_IDS in self.anime:
            # The new titles relate to none of the catalog's, unless the store says so.
            for column in (RELATED_IDS, RELATED_TYPES):
                anime[column] = [v if isinstance(v, (list, np.ndarray)) else []
                                 for v in anime[column]]
            if relations is not None:
                rebuilt = catalog_relations(anime.drop(columns=[RELATED_IDS, RELATED_TYPES]),
                                            relations)[0]
                anime = rebuilt if RELATED_IDS in rebuilt else anime
        embeddings = np.concatenate([self.index.embeddings, self.retrieval.embed_titles(rows)])
        fresh.anime = anime
        fresh.index = CandidateIndex.build(embeddings, anime["media_id"].to_numpy(),
                                           IndexConfig(**self.config["index"]))
        fresh._anime_row = IdRows(anime["media_id"])
        fresh._masks = {}
        # Every per-title input is computed for the new rows alone and appended: a title's
        # raw features and encodings do not depend on the other titles.
        added = raw_features(anime.iloc[len(self.anime):], feature_specs(self.schema, "anime"),
                             self.widths)
        fresh._anime_raw = {k: np.concatenate([v, added[k]]) for k, v in self._anime_raw.items()}
        fresh._popularity = anime["train_count"].to_numpy(dtype=float)
        fresh.__dict__.pop("_unit_embeddings", None)   # cached for the old catalog
        fresh.__dict__.pop("_by_title", None)
        fresh.__dict__.pop("_taste", None)
        fresh.__dict__.pop("_franchises", None)
        fresh.__dict__.pop("_years", None)
        fresh.__dict__.pop("_niche_scale", None)
        if self._encoded is not None:
            signatures = self._saved["ranker"].signatures
            fresh._encoded = tf.constant(np.concatenate(
                [self._encoded.numpy(), self._encode_catalog(signatures["encode_anime"], added)]))
            fresh._score_rows, fresh._score_inputs, fresh._score_signals = fresh._scorer(
                signatures["score_encoded"])
        if self._titles_for_scores is not None:
            fresh._titles_for_scores = np.concatenate([self._titles_for_scores, self._encode_catalog(
                self._saved["scorer"].signatures["encode_titles"], added)])
        if self._ease is not None:
            n = len(self._ease)
            fresh._ease = np.zeros((len(anime), len(anime)), self._ease.dtype)
            fresh._ease[:n, :n] = self._ease
        if self._relations is not None:
            fresh._relations = related_rows(anime, self.schema)
        return fresh

    def _user_table(self, train: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
        """Rows of the users table (``users.parquet``'s columns, the taste vectors as list
        columns) of users whose training entries are ``train``, built by the feature
        stage's own ``user_features``."""
        users, vectors = user_features(train, self.anime, self.schema["vocab"], config,
                                       self.schema["stats"]["global_mean_score"], self._taste)
        return users.assign(**{n: list(v) for n, v in vectors.items()})

    @functools.cached_property
    def _taste(self) -> dict:
        """The catalog's genres and formats as ``user_features`` counts them, built once."""
        return taste_columns(self.anime, self.schema["vocab"])

    def _history_features(self, histories: list) -> dict:
        """Raw user features, one row per history (``(media ids, scores, times)`` of
        watched titles, in that order), built together as the feature stage builds known
        users'. Each is a new user: id -1, the unknown id's embedding (the ids that keep
        them apart while they are built are negative, so never a known user's)."""
        n = len(histories)
        train = pd.DataFrame({
            "user_id": np.repeat(np.arange(n) - n, [len(media) for media, _, _ in histories]),
            "media_id": [m for media, _, _ in histories for m in media],
            "score": [x for _, scores, _ in histories for x in scores],
            "time": pd.array([t for _, _, times in histories for t in times], dtype="Int64"),
            "status": "COMPLETED", "is_interaction": True})
        users, vectors = user_features(train, self.anime, self.schema["vocab"],
                                       FeatureConfig.from_dict(self.schema["config"]),
                                       self.schema["stats"]["global_mean_score"], self._taste)
        # The taste vectors go in as the arrays they are (a table holds them as lists).
        specs = feature_specs(self.schema, "user")
        raw = raw_features(users, [s for s in specs if s["name"] not in vectors], self.widths)
        raw.update({s["name"]: np.asarray(vectors[s["name"]], np.float32)
                    for s in specs if s["name"] in vectors})
        raw["user_id"] = np.full(n, -1, np.int64)
        return raw

    def predict_scores(self, user_ids, anime_ids) -> np.ndarray:
        """The score head's predicted POINT_100 score of each (user, title) pair.

        Args:
          user_ids: integer user ids of the training data (a list or array, or one id).
          anime_ids: anime ids of this model's catalog, as many as ``user_ids`` (pair
            ``i`` is ``(user_ids[i], anime_ids[i])``); one side of length 1 pairs with
            every id of the other.

        Returns:
          float32 ``[pairs]`` in [1, 100], in the order given (whether or not the user
          has the title on their list).

        Raises:
          InputError: the model has no score head, ids that are not integers, lengths
            that do not pair, or a user or title the model does not know (named).
        """
        if self.scorer is None:
            raise InputError(f"{self.directory} has no score head (scorer/); add one with "
                             "`python -m pipelines train-scores`.")
        user_ids, anime_ids = _ids_arg("user_ids", user_ids), _ids_arg("anime_ids", anime_ids)
        if len(user_ids) != len(anime_ids) and 1 not in (len(user_ids), len(anime_ids)):
            raise InputError(f"`user_ids` and `anime_ids` must have the same length (one pair "
                             f"per position), or one of them length 1. Received: "
                             f"{len(user_ids)} user ids and {len(anime_ids)} anime ids.")
        if len(user_ids) == 0 or len(anime_ids) == 0:
            return np.zeros(0, np.float32)
        user_ids, anime_ids = np.broadcast_arrays(user_ids, anime_ids)
        users = self._user_row.get_indexer(user_ids)
        if (users < 0).any():
            unknown = np.unique(user_ids[users < 0])
            raise InputError(f"{len(unknown)} user ids are not in the training data, e.g. "
                             f"{unknown[:3].tolist()}; valid ids are in rec.users['user_id'].")
        _, titles = self._catalog_rows("anime_ids", anime_ids)
        return self._score_pairs(self._user_raw, users, titles)

    @functools.cached_property
    def _unit_embeddings(self) -> np.ndarray:
        """The catalog's candidate embeddings scaled to unit length (rows = anime rows)."""
        norms = np.linalg.norm(self.index.embeddings, axis=1, keepdims=True)
        return self.index.embeddings / np.maximum(norms, 1e-12)

    def history_ids(self, user_id: int) -> np.ndarray:
        """The anime ids of a known user's training history (their watched training
        titles: what the query tower, EASE and the franchise signal read), or of every
        title on their training list for a model whose ``seen.parquet`` has no
        ``history`` column.

        Raises:
          InputError: ``user_id`` is not an int or not in the training data.
        """
        row = self._user_row_of(user_id)
        if self._history is None:
            return self._seen[row].copy()
        return self.anime["media_id"].to_numpy(np.int64)[self._history[row]]

    def continues(self, anime_ids, history_ids) -> np.ndarray:
        """For each of ``anime_ids``, the title of ``history_ids`` it continues (its
        PREQUEL or PARENT there: "next after X"), or -1. Ids outside the catalog count as
        not watched.

        Raises:
          InputError: ids that are not integers, or ``anime_ids`` outside the catalog.
        """
        _, rows = self._catalog_rows("anime_ids", anime_ids)
        history = self._anime_row.get_indexer(_ids_arg("history_ids", history_ids))
        found = self._franchises.continued(np.zeros(len(rows), np.int64), rows, [history])
        return self._ids_of(found)

    def franchise_members(self, anime_ids) -> np.ndarray:
        """The anime ids of every title in the franchises of ``anime_ids`` (titles linked
        by any relation; ``serving.franchise``), sorted: the ids themselves where the
        catalog records no relations. Ids outside the catalog are ignored."""
        rows = self._anime_row.get_indexer(_ids_arg("anime_ids", anime_ids))
        rows = rows[rows >= 0]
        franchise = self._franchises.franchise
        if franchise is None:
            return np.unique(self._ids_of(rows))
        return np.unique(self._ids_of(np.flatnonzero(np.isin(franchise, franchise[rows]))))

    def _ids_of(self, rows: np.ndarray) -> np.ndarray:
        """The anime ids of title rows (-1 stays -1)."""
        return np.where(rows >= 0, self.anime["media_id"].to_numpy(np.int64)[np.maximum(rows, 0)], -1)

    def seen_ids(self, user_id: int) -> np.ndarray:
        """The anime ids of every title on a known user's training list (what
        :meth:`recommend` leaves out with ``exclude_seen``).

        Raises:
          InputError: ``user_id`` is not an int or not in the training data.
        """
        return self._seen[self._user_row_of(user_id)].copy()

    def nearest_in_history(self, anime_ids, history_ids) -> np.ndarray:
        """For each of ``anime_ids``, the title of ``history_ids`` nearest to it in
        candidate-embedding space (the space of :meth:`similar_anime`): the one "because
        you watched X" names. Nearest by cosine, not the inner product, so a title with
        a large embedding norm (a popular one) does not become every row's reason.

        Args:
          anime_ids: anime ids of this model's catalog (e.g. a user's recommendations).
          history_ids: anime ids of the user's history; ids outside the catalog and
            repeats are ignored, and a title is never its own reason.

        Returns:
          int64 ``[len(anime_ids)]``: a history id per title, -1 where none is left (an
          empty history, or a history of that title alone).

        Raises:
          InputError: ids that are not integers, or ``anime_ids`` outside the catalog.
        """
        _, rows = self._catalog_rows("anime_ids", anime_ids)
        history = self._anime_row.get_indexer(_ids_arg("history_ids", history_ids))
        return self._ids_of(self._nearest(np.zeros(len(rows), np.int64), rows, [history]))

    def _nearest(self, users: np.ndarray, rows: np.ndarray, pools: list,
                 block: int = 1 << 21) -> np.ndarray:
        """Per pair (``users[j]``, title row ``rows[j]``), the row of ``pools[user]``
        (title rows; -1 and repeats ignored) nearest by cosine, never the title itself;
        -1 where none is. Users are taken in groups whose cosines fit ``block`` floats."""
        out = np.full(len(rows), -1, np.int64)
        pool = np.unique(np.concatenate([np.zeros(0, np.int64)] + [
            u * len(self.anime) + np.asarray(p, np.int64)[np.asarray(p) >= 0]
            for u, p in enumerate(pools)]))
        if not len(pool) or not len(rows):
            return out
        pool_users, pool_rows = np.divmod(pool, len(self.anime))
        unit = self._unit_embeddings
        per_pair = max(1.0, len(rows) / len(pools) * len(pool) / len(pools))
        step = max(1, int(math.sqrt(block / per_pair)))
        for first in range(0, len(pools), step):
            mine = np.flatnonzero((users >= first) & (users < first + step))
            theirs = slice(*np.searchsorted(pool_users, [first, first + step]))
            if not len(mine) or theirs.start == theirs.stop:
                continue
            cosine = unit[rows[mine]] @ unit[pool_rows[theirs]].T
            cosine[(users[mine, None] != pool_users[None, theirs])
                   | (rows[mine, None] == pool_rows[None, theirs])] = -np.inf   # never itself
            best = np.argmax(cosine, axis=1)
            found = np.isfinite(cosine[np.arange(len(mine)), best])
            out[mine[found]] = pool_rows[theirs][best[found]]
        return out

    def reasons(self, anime_ids: list, histories: list) -> list[tuple[np.ndarray, np.ndarray]]:
        """Why each recommended title is there, for several people at once.

        Reasons come from what they liked: unscored titles, and scored ones at least
        their own mean score (a title rated below it is never a reason), or every title
        of the history when they liked none.

        Args:
          anime_ids: per person, anime ids of this model's catalog (their rows).
          histories: per person, ``(anime ids, scores)`` of their history (scores
            POINT_100; 0 or None = not scored); ids outside the catalog are ignored.

        Returns:
          Per person, two int64 arrays over their ``anime_ids``: the liked title each
          continues (its PREQUEL or PARENT: "next after X") and the liked title nearest
          to it (:meth:`nearest_in_history`); -1 where there is none.

        Raises:
          InputError: ids that are not integers, ``anime_ids`` outside the catalog, or
            lists of different lengths.
        """
        if len(anime_ids) != len(histories):
            raise InputError(f"`anime_ids` and `histories` must hold one entry per person. "
                             f"Received {len(anime_ids)} and {len(histories)}.")
        asked = [self._catalog_rows("anime_ids", ids)[1] for ids in anime_ids]
        liked = []
        for media, scores in histories:
            rows = self._anime_row.get_indexer(_ids_arg("histories", media))
            scores = np.array([s or 0 for s in scores], float)
            rated = scores[scores > 0]
            keep = (scores == 0) | (scores >= (rated.mean() if len(rated) else 0))
            liked.append((rows[keep], rows))
        users = np.repeat(np.arange(len(asked)), [len(a) for a in asked])
        rows = np.concatenate([np.zeros(0, np.int64), *asked])
        after = self._franchises.continued(users, rows, [mine for mine, _ in liked])
        near = self._nearest(users, rows, [mine if len(mine) else every for mine, every in liked])
        cut = np.cumsum([len(a) for a in asked])[:-1]
        return list(zip(np.split(self._ids_of(after), cut), np.split(self._ids_of(near), cut)))

    def continue_list(self, watched_ids, listed_ids=(), k: int = 10,
                      filters: Filters | None = None) -> pd.DataFrame:
        """"Continue": the titles that continue what someone watched (every prequel and
        parent show of theirs watched, at least one), not on their list: the next
        seasons first, then side stories (specials, movies of a show they watched), each
        in release order (season year, then the more popular first). Empty where the
        catalog records no relations.

        Args:
          watched_ids: anime ids they watched (e.g. ``history_ids(user)``).
          listed_ids: more anime ids on their list, never shown.
          k: titles at most; filters: as in :meth:`recommend`.

        Returns:
          Columns rank, anime_id, title, season_year, after_id, after_title (the watched
          title it continues).
        """
        ((ids, after),) = self.continue_lists([watched_ids], [listed_ids], k, filters)
        rows, before = self._anime_row.get_indexer(ids), self._anime_row.get_indexer(after)
        titles = self.anime["title"].to_numpy()
        return pd.DataFrame({"rank": np.arange(1, len(ids) + 1), "anime_id": ids,
                             "title": titles[rows], "season_year": self._years[rows],
                             "after_id": after, "after_title": titles[before]})

    def continue_lists(self, watched: list, listed: list, k: int = 10,
                       filters: Filters | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`continue_list` for several people at once (``watched[i]``,
        ``listed[i]``: person ``i``'s anime ids), as arrays: per person, the anime ids in
        order and the watched title each continues (what the service reads for a whole
        batch of requests)."""
        k, _ = self._check_k(k)
        allowed = self.allowed(filters)
        if len(watched) != len(listed):
            raise InputError(f"`watched` and `listed` must hold one list per person. "
                             f"Received {len(watched)} and {len(listed)}.")
        users, rows, after = self._franchises.next_titles(
            [self._anime_row.get_indexer(_ids_arg("watched_ids", w)) for w in watched],
            [self._anime_row.get_indexer(_ids_arg("listed_ids", x)) for x in listed], allowed)
        side = ~self._franchises.sequel[rows] if len(rows) else np.zeros(0, bool)
        year = np.nan_to_num(self._years[rows], nan=np.inf)
        order = np.lexsort((-self._popularity[rows], year, side, users))
        users, rows, after = users[order], rows[order], after[order]
        starts = np.searchsorted(users, np.arange(len(watched) + 1))
        ids, after = self._ids_of(rows), self._ids_of(after)
        return [(ids[a:min(b, a + k)], after[a:min(b, a + k)]) for a, b in zip(starts[:-1], starts[1:])]

    @functools.cached_property
    def _years(self) -> np.ndarray:
        """Each title's season year (float; NaN where unknown), by title row."""
        return self.anime["season_year"].to_numpy(dtype=float)

    def similar_anime(self, anime_id: int, k: int = 10) -> pd.DataFrame:
        """The ``k`` titles whose candidate embeddings are closest to ``anime_id``'s.

        Returns:
          Columns rank, anime_id, title, score (the inner product of the two titles'
          candidate embeddings). ``k`` is capped at the catalog size.
        """
        anime_id = _int_arg("anime_id", anime_id)
        k, _ = self._check_k(k)
        row = self._anime_row.get_indexer([anime_id])[0]
        if row < 0:
            raise InputError(f"Anime {anime_id} is not in this model's catalog; valid ids are "
                             "in rec.anime['media_id'].")
        ids, scores = self.index.search(self.index.embeddings[row:row + 1], k, exclude=[[anime_id]])
        rows = self._anime_row.get_indexer(ids[0])
        keep = ids[0] >= 0
        return pd.DataFrame({"rank": np.arange(1, keep.sum() + 1), "anime_id": ids[0][keep],
                             "title": self.anime["title"].to_numpy()[rows[keep]],
                             "score": scores[0][keep]})
