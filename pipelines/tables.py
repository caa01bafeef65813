"""Reading a feature directory (what ``pipelines/features.py`` writes) for the stages
after it: the tables, the schema, raw model inputs by row, and interactions as row pairs.

    tables = FeatureTables.load("data/features")
    tables.pairs("train")          # (user_row, anime_row) of training interactions
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import FRANCHISE_RELATIONS
from pipelines.errors import InputError
from pipelines.features import (NEW_ENTRIES_FILE, NEW_TITLES_FILE, RELATED_IDS, RELATED_TYPES,
                                SCHEMA_FILE)
from towers.features import feature_specs, multi_widths, raw_features


def load_schema(directory: str | os.PathLike) -> dict:
    """A feature directory's ``schema.json`` alone, or a named error."""
    schema_path = Path(directory) / SCHEMA_FILE
    if not schema_path.exists():
        raise InputError(f"{directory} is not a feature directory (no {SCHEMA_FILE}); "
                         "create one with `python -m pipelines features`.")
    try:
        schema = json.loads(schema_path.read_text())
    except (ValueError, OSError) as err:
        raise _damaged(schema_path, err) from None
    if not isinstance(schema, dict):
        raise _damaged(schema_path, TypeError("not a JSON object"))
    return schema


def _damaged(path: Path, err: Exception) -> InputError:
    return InputError(f"{path} cannot be read ({type(err).__name__}: {str(err)[:120]}): the "
                      "feature directory is damaged or incomplete; rebuild it with "
                      "`python -m pipelines features`.")


def load(directory: str | os.PathLike) -> dict:
    """A feature directory as ``{"schema", "interactions", "users", "anime"}``; a missing
    or unreadable table is an InputError naming it."""
    directory = Path(directory)
    out = {"schema": load_schema(directory)}
    for name in ("interactions", "users", "anime"):
        path = directory / f"{name}.parquet"
        try:
            out[name] = pd.read_parquet(path)
        except (ValueError, OSError) as err:   # ArrowInvalid is a ValueError
            raise _damaged(path, err) from None
    return out


def read_vector(table: pd.DataFrame, column: str) -> np.ndarray:
    """A fixed-size list column of a feature table as a ``[rows, width]`` float32 array."""
    values = table[column].to_numpy()
    return np.stack(values).astype(np.float32) if len(values) else np.zeros((0, 0), np.float32)


def related_rows(anime: pd.DataFrame, schema: dict,
                 types: tuple[str, ...] = FRANCHISE_RELATIONS) -> np.ndarray | None:
    """``[titles, width]`` int64: per row of ``anime``, the rows of the titles it relates
    to by one of ``types`` (``related_types``; by default the ones the ``franchise``
    signal counts), padded with -1 to the most any title has; None where the schema
    records no relations (a source without them). The candidate generator gathers
    ``[users, candidates, width]`` from it, so it is kept dense and narrow."""
    if not schema.get("relations"):
        return None
    if RELATED_IDS not in anime or RELATED_TYPES not in anime:
        raise InputError(f"The schema records relations between titles but the title table "
                         f"has no {RELATED_IDS!r} / {RELATED_TYPES!r} columns; rebuild the "
                         "feature tables (`python -m pipelines features`) or retrain the model.")
    counts = anime[RELATED_IDS].map(len).to_numpy()
    ids = np.concatenate([np.zeros(0, np.int64),
                          *(np.asarray(v, np.int64) for v in anime[RELATED_IDS])])
    kinds = np.concatenate([np.zeros(0, object),
                            *(np.asarray(v, object) for v in anime[RELATED_TYPES])])
    owner = np.repeat(np.arange(len(anime)), counts)
    keep = np.isin(kinds, types)
    owner, rows = owner[keep], pd.Index(anime["media_id"]).get_indexer(ids[keep])
    width = np.bincount(owner, minlength=len(anime))
    out = np.full((len(anime), int(width.max(initial=0))), -1, np.int64)
    starts = np.r_[0, np.cumsum(width)[:-1]]
    out[owner, np.arange(len(owner)) - starts[owner]] = rows
    return out


@dataclasses.dataclass
class FeatureTables:
    """The feature tables as arrays: raw model inputs by row (``user_raw``, ``anime_raw``,
    in the formats of ``towers/features.py``) and interactions with their ``user_row`` and
    ``anime_row`` (row positions in ``users`` and ``anime``)."""

    schema: dict
    users: pd.DataFrame
    anime: pd.DataFrame
    user_raw: dict
    anime_raw: dict
    widths: dict
    interactions: pd.DataFrame
    # The new-title slice (``features._new_titles``), where the tables have it: the rows
    # of titles first listed after the cutoff (``new_anime``, raw inputs ``new_anime_raw``)
    # and known users' held-out entries on them (``new_entries``, with ``user_row``).
    new_anime: pd.DataFrame | None = None
    new_anime_raw: dict | None = None
    new_entries: pd.DataFrame | None = None

    def __post_init__(self):
        # Interactions written before the split kept ``listed_before`` (and hand-built
        # ones): no entry was on the list before its period.
        if "listed_before" not in self.interactions:
            self.interactions = self.interactions.assign(listed_before=False)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "FeatureTables":
        tables = load(directory)
        schema, users, anime = tables["schema"], tables["users"], tables["anime"]
        # Fixed by the tables (built for a saved model's inputs) or the longest list.
        widths = schema.get("multi_widths") or multi_widths(anime, schema)
        inter = tables["interactions"]
        inter = inter.assign(
            user_row=pd.Index(users["user_id"]).get_indexer(inter["user_id"]),
            anime_row=pd.Index(anime["media_id"]).get_indexer(inter["media_id"]))
        new = {}
        directory = Path(directory)
        if (directory / NEW_TITLES_FILE).exists() and (directory / NEW_ENTRIES_FILE).exists():
            new_anime = pd.read_parquet(directory / NEW_TITLES_FILE)
            entries = pd.read_parquet(directory / NEW_ENTRIES_FILE)
            new = {"new_anime": new_anime,
                   "new_anime_raw": raw_features(new_anime, feature_specs(schema, "anime"), widths),
                   "new_entries": entries.assign(
                       user_row=pd.Index(users["user_id"]).get_indexer(entries["user_id"]))}
        return cls(schema, users, anime,
                   raw_features(users, feature_specs(schema, "user"), widths),
                   raw_features(anime, feature_specs(schema, "anime"), widths),
                   widths, inter, **new)

    def pairs(self, split: str, interactions_only: bool = True) -> pd.DataFrame:
        """``(user_row, anime_row)`` of ``split``'s interactions (or of all its entries)."""
        mask = self.interactions["split"] == split
        if interactions_only:
            mask &= self.interactions["is_interaction"]
        return self.interactions.loc[mask, ["user_row", "anime_row"]]

    def train_counts(self) -> np.ndarray:
        """Training interactions per title ``[num_anime]``: popularity as the models saw
        it (``anime.parquet``'s ``train_count``, computed once by the feature stage)."""
        return self.anime["train_count"].to_numpy(np.int64)

    def matrix(self, rows: np.ndarray, pairs: pd.DataFrame) -> np.ndarray:
        """Dense bool ``[len(rows), num_anime]``: which titles each listed user has in
        ``pairs``. Loops over blocks of users group the pairs once instead:
        ``self.user_sets(pairs).matrix(rows)``."""
        return self.user_sets(pairs).matrix(rows)

    def user_sets(self, pairs: pd.DataFrame) -> "UserSets":
        """``pairs`` grouped by user, for dense rows of any block of users."""
        return UserSets(pairs, len(self.users), len(self.anime))


class UserSets:
    """Each user's titles in a ``(user_row, anime_row)`` frame, grouped once (sorted by
    user, with offsets), so the dense rows of a block of users cost that block's pairs,
    not a scan of the whole frame: the evaluation loops and EASE's Gram matrix read every
    user in blocks, and at 7M entries a scan per block was most of their time."""

    def __init__(self, pairs: pd.DataFrame, num_users: int, num_anime: int):
        users = pairs["user_row"].to_numpy(np.int64)
        titles = pairs["anime_row"].to_numpy(np.int64)
        known = (users >= 0) & (titles >= 0)   # -1: an id the tables do not list
        users, titles = users[known], titles[known]
        order = np.argsort(users, kind="stable")
        self.titles = titles[order]
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=num_users))])
        self.num_anime = num_anime

    def counts(self, rows: np.ndarray) -> np.ndarray:
        """How many pairs each of ``rows`` has."""
        rows = np.asarray(rows, np.int64)
        return self.offsets[rows + 1] - self.offsets[rows]

    def matrix(self, rows: np.ndarray) -> np.ndarray:
        """Dense bool ``[len(rows), num_anime]``: which titles each of ``rows`` has."""
        rows = np.asarray(rows, np.int64)
        starts, lengths = self.offsets[rows], self.counts(rows)
        owner = np.repeat(np.arange(len(rows)), lengths)
        # Each pair's index into ``titles``: its user's start plus its place in the run.
        first = np.cumsum(lengths) - lengths
        index = np.arange(len(owner)) - np.repeat(first - starts, lengths)
        out = np.zeros((len(rows), self.num_anime), bool)
        out[owner, self.titles[index]] = True
        return out
