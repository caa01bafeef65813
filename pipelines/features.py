"""Raw store -> Parquet feature tables: the split, user and anime features, vocabularies
and normalisation statistics.

Output directory (written to a temporary directory, then renamed into place):

    interactions.parquet  user_id, media_id, time, status, score, split, is_interaction, is_label
    users.parquet         one row per user: features from the *training split only*,
                          with the history as two list columns (title ids, weights)
    anime.parquet         one row per title: metadata from the media table, and popularity,
                          favourites, average score and interaction count counted from the
                          *training split only*, and its entries in the 7 and 30 days
                          before the cutoff (``recent_7d``, ``recent_30d``: what is
                          watched now; none without a cutoff); the candidate table serving needs; with
                          the titles' relations where the source has them (``related_ids``,
                          ``related_types``: sequels, prequels, side stories, ...)
    schema.json           FeatureConfig, feature specs, vocabularies, numeric statistics
                          (all fitted on the training split), counts, the split, data fingerprint

No leakage. By default (``protocol="as_of"``) one time cutoff T splits everyone's
entries: train before T, validation [T, T+h), test [T+h, T+2h), as a model trained at T
and used after it would see the data; users and titles are those of T, and what no
model at T could be asked about (users and titles first seen after T, entries after the
test period) is left out and counted. ``protocol="per_user"`` splits the last fractions
of each user's list by time instead (ties with a boundary go to the earlier split).
Lists without usable times are split in a seeded random order per user
(``schema.json`` -> ``split`` records which). The media table's popularity, favourites
and scores are crawl-time snapshots (they count the test period) and are never read. A
feature the source has no values for (the 2017 Kaggle dump has no studio, say) is left
out of the model and named in ``schema.json`` -> ``dropped_features``; so are the
signals read from the relations between titles (``franchise``) where the source has
none (the Kaggle dumps, stores from before relations were kept). Everything here is
columnar: no Python loop over entries.

Memory: the entries stream through in blocks of whole users (``store.iter_entries``),
in three passes (see ``_tables``), so the stage holds one block and a few numbers per
user and per title, never every entry: at 7M entries it peaks at 0.7 GB where reading
them all took 3 GB (docs/benchmarks.md, section 8), and the tables are the same byte for
byte whatever the block size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipelines import atomic, store
from pipelines.config import (COUNTED_TITLE_FEATURES, RECENT_FEATURES, RECENT_WINDOWS,
                              RELATION_SIGNALS, FeatureConfig, parse_time)
from pipelines.errors import InputError

SCHEMA_FILE = "schema.json"
SPLITS = ("train", "validation", "test")
# anime.parquet's relation columns (``_relations``), where the source has relations.
RELATED_IDS, RELATED_TYPES = "related_ids", "related_types"


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One model input column.

    Attributes:
      name: column name in ``users.parquet`` or ``anime.parquet``.
      entity: ``"user"`` or ``"anime"``.
      kind: ``"id"`` (integer id, vocabulary of training ids), ``"categorical"`` (one
        string), ``"multi"`` (list of strings, e.g. genres), ``"numeric"`` (one number,
        normalised with training mean/std after ``transform``), or ``"vector"`` (fixed
        length floats aligned with vocabulary ``vocab``, e.g. genre affinities), or
        ``"history"`` (the user's watched training titles: ids of vocabulary ``vocab`` in
        column ``name`` and their weights in ``name + "_weight"``, at most ``length``).
      vocab: name of the vocabulary in ``schema.json`` (categorical, multi, id, vector,
        history).
      transform: ``"log1p"`` or ``"none"``, applied before normalisation.
      length: the history's cap (``FeatureConfig.history_length``), set by ``build``.
    """

    name: str
    entity: str
    kind: str
    vocab: str | None = None
    transform: str = "none"
    length: int | None = None


# The one list of model inputs. towers/ and ranking/ build their layers from it (via the
# copy saved in schema.json), so a feature is added here and nowhere else.
FEATURES = (
    FeatureSpec("user_id", "user", "id", vocab="user_id"),
    FeatureSpec("n_train", "user", "numeric", transform="log1p"),
    FeatureSpec("n_scored", "user", "numeric", transform="log1p"),
    FeatureSpec("completed_count", "user", "numeric", transform="log1p"),
    FeatureSpec("mean_score", "user", "numeric"),
    FeatureSpec("std_score", "user", "numeric"),
    FeatureSpec("dropped_ratio", "user", "numeric"),
    FeatureSpec("planning_ratio", "user", "numeric"),
    FeatureSpec("genre_share", "user", "vector", vocab="genres"),
    FeatureSpec("genre_affinity", "user", "vector", vocab="genres"),
    FeatureSpec("format_share", "user", "vector", vocab="format"),
    FeatureSpec("format_affinity", "user", "vector", vocab="format"),
    FeatureSpec("history", "user", "history", vocab="media_id"),
    FeatureSpec("media_id", "anime", "id", vocab="media_id"),
    FeatureSpec("format", "anime", "categorical", vocab="format"),
    FeatureSpec("source", "anime", "categorical", vocab="source"),
    FeatureSpec("season", "anime", "categorical", vocab="season"),
    FeatureSpec("country", "anime", "categorical", vocab="country"),
    FeatureSpec("studio", "anime", "categorical", vocab="studio"),
    FeatureSpec("genres", "anime", "multi", vocab="genres"),
    FeatureSpec("tags", "anime", "multi", vocab="tags"),
    FeatureSpec("season_year", "anime", "numeric"),
    FeatureSpec("episodes", "anime", "numeric", transform="log1p"),
    FeatureSpec("duration", "anime", "numeric", transform="log1p"),
    FeatureSpec("popularity", "anime", "numeric", transform="log1p"),
    FeatureSpec("favourites", "anime", "numeric", transform="log1p"),
    FeatureSpec("average_score", "anime", "numeric"),
    FeatureSpec("train_count", "anime", "numeric", transform="log1p"),
    *(FeatureSpec(name, "anime", "numeric", transform="log1p") for name in RECENT_FEATURES),
    FeatureSpec("is_adult", "anime", "numeric"),
)


# ---------------------------------------------------------------------------------------
# Split.

def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fast, well-mixed integer hash, vectorised."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


_DAY = 86_400


def _linear_quantile(n: int, q: float, order_statistic) -> float:
    """``np.quantile(values, q)`` (its default, linear method) of ``n`` values known only
    through ``order_statistic(i)``, the i-th smallest (from 0): the same arithmetic as
    numpy's, step for step, so the same float (tests check it against numpy), without
    holding the values."""
    virtual = np.float64((n - 1) * np.asarray(q, dtype=np.float64))
    if virtual >= n - 1:
        return float(order_statistic(n - 1))
    previous = np.floor(virtual) if virtual >= 0 else np.float64(0)
    below, above = (np.int64(order_statistic(int(previous))),
                    np.int64(order_statistic(int(previous) + (virtual >= 0))))
    gamma = np.float64(virtual - previous)
    diff = np.subtract(above, below)
    if gamma >= 0.5:
        return float(np.subtract(above, diff * (1 - gamma)))
    return float(np.add(below, diff * gamma))


def _cutoff(first: int, last: int, quantile, config: FeatureConfig) -> tuple[int, int]:
    """The as-of cutoff T and the period length h (seconds) from the timed entries'
    first and last time and ``quantile(q)``, their q-quantile (see
    ``FeatureConfig.as_of`` and ``horizon_days``).

    Raises:
      InputError: an explicit ``as_of`` leaves no entry before or after it.
    """
    if config.as_of is None:
        share = 1.0 - config.validation_fraction - config.test_fraction
        as_of = int(quantile(share)) // _DAY * _DAY
        as_of = max(as_of, first + 1)  # at least one training entry
    else:
        as_of = parse_time(config.as_of, "as_of")
    horizon = -(-(last + 1 - as_of) // (2 * _DAY)) * _DAY  # two periods to the last entry
    if config.horizon_days is not None:
        horizon = int(round(config.horizon_days * _DAY))
    if as_of <= first or as_of > last:
        raise InputError(
            f"The as-of cutoff {_date(as_of)} leaves no "
            f"{'training' if as_of <= first else 'validation or test'} entries: the "
            f"entries run from {_date(first)} to {_date(last)}. Pass an --as-of inside "
            "that range, or leave it out for the default.")
    return as_of, max(horizon, _DAY)


def _date(seconds: int) -> str:
    """Unix seconds as a UTC date (and time, when not midnight) for people."""
    when = pd.Timestamp(int(seconds), unit="s")
    return when.strftime("%Y-%m-%d" if when == when.normalize() else "%Y-%m-%d %H:%M")


def _with_time(entries: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """``entries`` with ``time``: the first of ``config.time_columns`` that is set
    (NULL if none is)."""
    when = entries[config.time_columns[0]]
    for column in config.time_columns[1:]:
        when = when.fillna(entries[column])
    return entries.assign(time=when.astype("Int64"))


class _TimeScan:
    """What the split needs to know of every list before it can split any: per user,
    the number of entries, whether one lacks a time, the first and last time; and how
    many entries fall on each day. Fed block by block (``add``), each block holding
    whole users, so it holds a few numbers per user and per day, never the entries."""

    def __init__(self):
        self._users, self.days = [], pd.Series(dtype="int64")  # days since 1970 -> entries

    def add(self, frame: pd.DataFrame) -> None:
        """One block of entries with ``time`` (``_with_time``)."""
        spread = frame["time"].groupby(frame["user_id"]).agg(["min", "max", "size", "count"])
        first = spread["min"].to_numpy("int64", na_value=0)
        last = spread["max"].to_numpy("int64", na_value=0)
        self._users.append(pd.DataFrame({
            "user_id": spread.index.to_numpy(np.int64), "first": first, "last": last,
            "size": spread["size"].to_numpy(np.int64),
            "timed": spread["count"].to_numpy() > 0,
            "missing": (spread["count"] < spread["size"]).to_numpy()}))
        # Day counts of the lists that are timed whatever the other lists look like: no
        # missing time, and not several entries at one time (those are placed by
        # ``_SplitPlan`` once it knows whether they are import stamps).
        plain = spread.index[((spread["count"] == spread["size"])
                              & ~((first == last) & (spread["size"] > 1))).to_numpy()]
        times = frame["time"].to_numpy("int64", na_value=0)[
            frame["user_id"].isin(plain).to_numpy()]
        days = pd.Series(times // _DAY).value_counts()
        self.days = self.days.add(days, fill_value=0).astype("int64")

    def users(self) -> pd.DataFrame:
        if not self._users:
            return pd.DataFrame({"user_id": np.zeros(0, np.int64), "first": np.zeros(0, np.int64),
                                 "last": np.zeros(0, np.int64), "size": np.zeros(0, np.int64),
                                 "timed": np.zeros(0, bool), "missing": np.zeros(0, bool)})
        return pd.concat(self._users, ignore_index=True)


@dataclasses.dataclass(frozen=True)
class _SplitPlan:
    """The split's global facts, fixed before any list is split: the users split in a
    seeded random order (no usable times) and the cutoff (as_of, horizon, last) in unix
    seconds under the as-of protocol, else None."""

    random_users: np.ndarray
    cutoff: dict | None


def _plan_split(scan: _TimeScan, config: FeatureConfig, blocks) -> _SplitPlan:
    """``_SplitPlan`` from the first pass's ``scan``. ``blocks()`` iterates the entries
    again (with ``time``): the default cutoff is a quantile of every timed entry's
    time, found exactly from the day counts plus one more pass counting the seconds of
    the one or two days it falls on.

    A list of several entries that all carry one time has no order to split by: per
    user it is split at random, like a list without times. Under the as-of protocol
    its time still places it (the entries were on the list by then), unless most lists
    look like that: then the times are an import stamp, not a history."""
    users = scan.users()
    one_time = users["timed"].to_numpy() & (users["first"] == users["last"]).to_numpy()
    several = users["size"].to_numpy() > 1
    stamps = (one_time & several).sum() > 0.5 * max((users["timed"].to_numpy() & several).sum(), 1)
    ids = users["user_id"].to_numpy()
    random_users = np.union1d(ids[users["missing"].to_numpy()],
                              ids[one_time] if config.protocol == "per_user" or stamps
                              else ids[:0])
    timed = ~np.isin(ids, random_users)
    n = int(users["size"].to_numpy()[timed].sum())
    if config.protocol != "as_of" or n == 0:
        return _SplitPlan(random_users, None)
    first = int(users["first"].to_numpy()[timed].min())
    last = int(users["last"].to_numpy()[timed].max())
    # Day counts of every timed entry: the plain lists' (counted in the scan) and the
    # timed lists of several entries at one time.
    stamped = timed & one_time & several
    days = scan.days.add(pd.Series(users["size"].to_numpy()[stamped])
                          .groupby(users["first"].to_numpy()[stamped] // _DAY).sum(),
                          fill_value=0).astype("int64").sort_index()
    ends = np.cumsum(days.to_numpy())

    def quantile(q: float) -> float:
        seconds = {}

        def order_statistic(i: int) -> int:
            at = int(np.searchsorted(ends, i, side="right"))
            day = int(days.index[at])
            if day not in seconds:
                seconds[day] = _seconds_of_day(day, blocks, random_users)
            before = int(ends[at - 1]) if at else 0
            return day * _DAY + int(np.searchsorted(np.cumsum(seconds[day]), i - before,
                                                    side="right"))

        return _linear_quantile(n, q, order_statistic)

    as_of, horizon = _cutoff(first, last, quantile, config)
    if config.final or config.fold_validation:
        # No validation period: train before T + h and test [T + h, T + 2h) (walk-forward),
        # or every entry in train (the served model's tables).
        start = last + 1 if config.final else as_of + horizon
        return _SplitPlan(random_users, {"as_of": start, "horizon": horizon,
                                         "validation_horizon": 0, "last": last,
                                         "selection_as_of": as_of})
    return _SplitPlan(random_users, {"as_of": as_of, "horizon": horizon, "last": last})


def _seconds_of_day(day: int, blocks, random_users: np.ndarray) -> np.ndarray:
    """How many timed entries fall on each second of ``day`` (days since 1970)."""
    counts = np.zeros(_DAY, np.int64)
    for frame in blocks():
        times = frame["time"].to_numpy("int64", na_value=0)
        keep = ((times // _DAY == day) & frame["time"].notna().to_numpy()
                & ~np.isin(frame["user_id"].to_numpy(), random_users))
        counts += np.bincount(times[keep] - day * _DAY, minlength=_DAY)
    return counts


def _split_block(frame: pd.DataFrame, plan: _SplitPlan, config: FeatureConfig) -> pd.DataFrame:
    """One block of whole users' entries (with ``time``) split by ``plan``: adds
    ``split`` and ``random_split`` and sorts by (user_id, order key, media_id), where
    the order key is the entry time for timed lists and a seeded hash of (user, media)
    for the others (so the random split does not depend on row order). Under the as-of
    protocol ``split`` is NULL for entries after the test period. Every step is per
    user, so splitting the blocks one by one equals splitting them all at once."""
    user = frame["user_id"].to_numpy()
    random_order = np.isin(user, plan.random_users)
    with np.errstate(over="ignore"):
        salt = _mix64(np.uint64(config.seed) + np.uint64(0x9E3779B97F4A7C15))
        hashed = _mix64(_mix64(user.astype(np.uint64) ^ salt)
                        + frame["media_id"].to_numpy().astype(np.uint64))
    # Both kinds of key are compared only within one user, so mixing them is safe.
    key = np.where(random_order, (hashed >> np.uint64(2)).astype(np.int64),
                   frame["time"].fillna(0).to_numpy(np.int64))
    order = np.lexsort((frame["media_id"].to_numpy(), key, user))
    frame = frame.iloc[order].reset_index(drop=True)
    key, user, random_order = key[order], user[order], random_order[order]
    split = _per_user_split(key, user, config)
    if config.final:   # a random list is all training
        split[:] = 0
    elif config.fold_validation:   # a random list's validation part joins its training part
        split[split == 1] = 0
    if plan.cutoff:
        as_of, horizon = plan.cutoff["as_of"], plan.cutoff["horizon"]
        validation = plan.cutoff.get("validation_horizon", horizon)
        # Periods counted from the cutoff: 0 train, 1 validation, 2 test, -1 (NULL) after.
        by_time = ((key >= as_of).astype(np.int8) + (key >= as_of + validation)
                   + (key >= as_of + validation + horizon))
        by_time[by_time == 3] = -1
        split = np.where(random_order, split, by_time)
    frame["split"] = pd.Categorical.from_codes(split, categories=SPLITS)
    frame["random_split"] = random_order
    return frame


def assign_split(entries: pd.DataFrame, config: FeatureConfig) -> tuple[pd.DataFrame, dict | None]:
    """Adds ``time`` (the entry time, NULL if unknown), ``split`` and ``random_split``
    to entries held in memory (the feature stage streams the same steps over blocks).

    Timed lists: under the as-of protocol, train/validation/test by one global cutoff
    (``split`` is NULL for entries after the test period); under the per-user protocol,
    the last fractions of each list by time, entries tied with a boundary going to the
    earlier side. Lists without usable times (some entry has no time, or all share one)
    are split in a seeded random order, per user, under either protocol.

    Returns:
      The frame, sorted by (user_id, order key, media_id) (see ``_split_block``), and
      ``{"as_of", "horizon", "last"}`` in unix seconds when a cutoff was used, else None.
    """
    frame = _with_time(entries, config)
    scan = _TimeScan()
    scan.add(frame)
    plan = _plan_split(scan, config, lambda: [frame])
    return _split_block(frame, plan, config), plan.cutoff


def _per_user_split(key: np.ndarray, user: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Each list's last ``test_fraction`` by ``key`` to test and the
    ``validation_fraction`` before it to validation (``key``, ``user`` sorted by user,
    then key); lists shorter than ``min_entries_to_split`` stay in train. Returns the
    codes of ``SPLITS`` (0 train, 1 validation, 2 test)."""
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    sizes = np.diff(np.r_[starts, len(user)])
    split_users = sizes >= config.min_entries_to_split

    def held_out(fraction: float) -> np.ndarray:
        if fraction <= 0:
            return np.zeros_like(sizes)
        return np.where(split_users, np.maximum(1, np.round(sizes * fraction)), 0).astype(int)

    n_test = held_out(config.test_fraction)
    n_val = held_out(config.validation_fraction)

    def after(n_last: np.ndarray) -> np.ndarray:
        # Entries strictly later than the last entry before the final ``n_last``:
        # ties with the boundary stay on the earlier side, so nothing leaks backwards.
        boundary = key[starts + np.maximum(sizes - n_last - 1, 0)]
        later = key > np.repeat(boundary, sizes)
        return later & np.repeat(n_last > 0, sizes)

    test = after(n_test)
    validation = after(n_test + n_val) & ~test
    split = np.zeros(len(key), np.int8)
    split[validation] = 1
    split[test] = 2
    return split


def _split_protocol(config: FeatureConfig, cutoff: dict | None, left_out: dict,
                    users: int, n_random: int) -> dict:
    """How the split was made, for the report: the protocol (as of a cutoff, per user),
    whether lists were split by time, at random or both (``users`` lists are split,
    ``n_random`` of them at random; in the random and per-user splits shorter ones stay
    whole in train), the cutoff and periods, and what was left out."""
    method = "time" if n_random == 0 else "random" if n_random == users else "mixed"
    out = {"method": method, "protocol": config.protocol if cutoff else "per_user",
           "users": users, "random_split_users": n_random,
           "test_fraction": config.test_fraction,
           "validation_fraction": config.validation_fraction,
           "min_entries_to_split": config.min_entries_to_split,
           "left_out": left_out}
    if cutoff:
        as_of, horizon = cutoff["as_of"], cutoff["horizon"]
        validation = cutoff.get("validation_horizon", horizon)
        out.update(as_of=as_of, horizon_days=horizon / _DAY, last_entry=cutoff["last"],
                   periods={"train": [None, _date(as_of)],
                            "validation": [_date(as_of), _date(as_of + validation)],
                            "test": [_date(as_of + validation),
                                     _date(as_of + validation + horizon)]})
        if config.fold_validation or config.final:
            out.update(selection_as_of=cutoff["selection_as_of"])
    if config.final:
        out["final"] = True
    elif config.fold_validation:
        out["fold_validation"] = True
    return out


def describe_split(schema: dict) -> str:
    """One sentence on the test split that actually ran (report and model card)."""
    split = schema.get("split") or {  # feature tables written before "split" was saved
        "method": "random" if schema["counts"].get("random_split_users") else "time",
        "random_split_users": schema["counts"].get("random_split_users", 0),
        "users": schema["counts"]["users"], "test_fraction": schema["config"]["test_fraction"]}
    share = f"{split['test_fraction']:.0%}"
    if split.get("final"):
        return ("the served model's tables: every entry is training data"
                + (f", the newest at {_date(split['last_entry'])}" if "last_entry" in split
                   else "") + "; nothing is held out")
    if split.get("protocol") == "as_of":
        periods = split["periods"]
        left = split.get("left_out", {})
        if split.get("fold_validation"):
            text = (f"walk-forward, as of {periods['test'][0]}: every method is fitted on "
                    f"and queried with the entries before it (the selection run's training "
                    f"and validation periods, from its cutoff {_date(split['selection_as_of'])}), "
                    f"test {periods['test'][0]} to {periods['test'][1]} "
                    f"({split['horizon_days']:g} days)")
        else:
            text = (f"as of {periods['validation'][0]} (one time cutoff for everyone): the "
                    f"model sees entries before it; validation is {periods['validation'][0]} "
                    f"to {periods['validation'][1]}, test {periods['test'][0]} to "
                    f"{periods['test'][1]} ({split['horizon_days']:g} days each)")
        dropped = [f"{n:,} {what}" for what, n in (
            ("entries after the test period", left.get("after_test", 0)),
            ("entries of users with nothing before the cutoff", left.get("new_users", 0)),
            ("entries of titles no one had listed before it", left.get("new_titles", 0))) if n]
        if dropped:
            text += "; left out: " + ", ".join(dropped)
        listed, positives = split.get("listed_before", {}).get("test"), \
            schema.get("counts", {}).get("test", {}).get("interactions")
        if listed and positives is not None:
            if schema["config"].get("targets") == "added":
                text += (f"; targets are the titles added in the period: {listed:,} more "
                         f"({listed / (listed + positives):.1%}) were on the user's list "
                         "before it (added earlier, finished in it) and are left out of its "
                         "rankings, as serving hides them")
            else:
                text += (f"; {listed:,} of the test period's {positives:,} positives "
                         f"({listed / positives:.1%}) were on the user's list before it "
                         "began (added earlier, finished in it): serving would hide them, "
                         "but they count as targets here, for every method alike "
                         "(`--targets added`, the default, leaves them out)")
        if split["method"] == "mixed":
            text += (f"; for the {split['random_split_users']:,} users without usable entry "
                     f"times, a seeded random {share} of the list (a random sample, not the "
                     "newest part)")
        return text
    if split.get("fold_validation"):
        return (f"walk-forward: each list's training and validation parts are fitted on and "
                f"queried with, a seeded random {share} of it (the selection run's test "
                "part) is the test" + ("" if split["method"] == "random" else
                                       "; timed lists: their last part by time"))
    if split["method"] == "time":
        return f"the last {share} of each user's list by time"
    if split["method"] == "random":
        return (f"a seeded random {share} of each user's list: the source has no usable "
                "entry times, so the test titles are a random sample of each list, not its "
                "newest part")
    return (f"the last {share} of each user's list by time for "
            f"{split['users'] - split['random_split_users']:,} users; for the "
            f"{split['random_split_users']:,} users without usable entry times, a seeded "
            f"random {share} of the list (a random sample, not the newest part)")


def covered(schema: dict, through: str = "train") -> str:
    """The entries a method fitted on the ``through`` split of these tables saw, in words
    ("entries before 2026-08-24"): ``"train"``, or ``"validation"`` for the training and
    validation periods (a ranker fitted on validation lists). The report's data table
    compares methods by it: two rows with the same words saw the same entries."""
    split = schema.get("split") or {}
    if split.get("final"):
        return ("every entry" if split.get("protocol") == "as_of"
                else "every entry of each list")
    folded = split.get("fold_validation") or through == "validation"
    parts = ("parts" if through == "test" else
             "training and validation parts" if folded else "training part")
    if split.get("protocol") == "as_of":
        text = f"entries before {split['periods'][through][1]}"
        if split.get("method") == "mixed":
            text += f"; lists without times: their {parts}"
        return text
    return f"each list's {parts}"


# ---------------------------------------------------------------------------------------
# Feature tables.

def _vocab(values: pd.Series, min_count: int) -> list[str]:
    """Sorted values seen at least ``min_count`` times (ties broken by name)."""
    counts = values.dropna().value_counts()
    return sorted(counts[counts >= min_count].index.tolist())


def multi_hot(lists: pd.Series, vocab: list[str]) -> np.ndarray:
    """``[len(lists), len(vocab)]`` bool matrix from a Series of string lists."""
    exploded = lists.explode()
    codes = pd.Categorical(exploded, categories=vocab).codes
    rows = np.arange(len(lists)).repeat(lists.str.len().fillna(0).astype(int).clip(lower=1))
    hot = np.zeros((len(lists), len(vocab)), bool)
    keep = codes >= 0
    hot[rows[keep], codes[keep]] = True
    return hot


def _anime_table(media: pd.DataFrame, counted: "_TitleCounts", config: FeatureConfig,
                 catalog: np.ndarray | None = None) -> pd.DataFrame:
    """One row per title of ``media`` (those marked in ``catalog`` when given: the
    catalog as of the cutoff, titles someone had listed before it): metadata from the
    media table, and what people made of it counted from the *training entries alone*
    (``counted``, so as of the cutoff): ``popularity`` (lists it is on, any status, as
    AniList counts it), ``favourites`` (of those, marked favourite), ``average_score``
    (mean of their nonzero scores; NULL if none) and ``train_count`` (training
    interactions). The media table's own popularity, favourites and scores are
    snapshots from the crawl, which already count the test period: they are never read."""
    rows = slice(None) if catalog is None else catalog
    media = media[rows]
    anime = pd.DataFrame({
        "media_id": media["media_id"],
        "title": media["title_english"].fillna(media["title_romaji"]),
        "title_romaji": media["title_romaji"],
        "format": media["format"], "source": media["source"], "season": media["season"],
        "country": media["country"], "studio": media["studio"],
        "genres": media["genres"],
        "tags": [[t["name"] for t in sorted(tags, key=lambda t: -t.get("rank", 0))
                  if t.get("rank", 0) >= config.min_tag_rank][: config.top_tags]
                 for tags in media["tags"]],
        "season_year": media["season_year"].astype("float64"),
        "episodes": media["episodes"].astype("float64"),
        "duration": media["duration"].astype("float64"),
        "is_adult": media["is_adult"].astype("float64"),
        "status": media["status"],
    })
    anime["popularity"] = counted.entries[rows].astype("float64")
    # A source that records no favourites at all (the Kaggle dumps) has no such feature.
    anime["favourites"] = (counted.favourites[rows].astype("float64") if counted.any_favourite
                           else np.nan)
    scored = counted.scored[rows]
    with np.errstate(invalid="ignore", divide="ignore"):
        anime["average_score"] = np.where(scored > 0, counted.score_sum[rows].astype("float64")
                                          / scored.astype("float64"), np.nan)
    anime["train_count"] = counted.interactions[rows].astype("float64")
    # What people are watching now: entries in the last days before the cutoff (the
    # query time of the lists the ranker learns from, and of the release's "now"). None
    # without a cutoff: the features are then dropped by name.
    for name in RECENT_FEATURES:
        anime[name] = np.nan if counted.recent is None else counted.recent[name][rows].astype("float64")
    return anime.reset_index(drop=True)


def catalog_relations(anime: pd.DataFrame, relations: pd.DataFrame) -> tuple[pd.DataFrame, dict | None]:
    """``anime`` with each title's relations to the other titles of the catalog:
    ``related_ids`` (their ids, ascending) and ``related_types`` (how each relates,
    AniList's type from this title's side: PREQUEL = the title this one continues), and
    their counts for the schema; ``(anime, None)``, the columns left out, where the
    source records no relation between the catalog's titles. Relations are metadata,
    not list entries: nothing about them happens after the cutoff, but only the
    catalog's titles (those listed before it) are kept, as everywhere else."""
    ids = anime["media_id"].to_numpy()
    inside = (relations["media_id"].isin(ids) & relations["related_id"].isin(ids)).to_numpy()
    kept = relations[inside].sort_values(["media_id", "related_id"])
    if kept.empty:
        return anime, None
    by_title = kept.groupby("media_id")
    related, types = by_title["related_id"].agg(list), by_title["relation_type"].agg(list)
    anime = anime.assign(**{  # one list per title (tens of thousands): cheap
        RELATED_IDS: [related.get(m, []) for m in ids],
        RELATED_TYPES: [types.get(m, []) for m in ids]})
    return anime, {"columns": [RELATED_IDS, RELATED_TYPES], "pairs": len(kept),
                   "titles": int(kept["media_id"].nunique()),
                   "types": {t: int(n) for t, n in kept["relation_type"].value_counts().sort_index().items()},
                   "outside_catalog": int((~inside).sum())}


def taste_columns(anime: pd.DataFrame, vocab: dict) -> dict[str, np.ndarray]:
    """Each title's genres and format as ``{"genre": bool [titles, genres], "format":
    bool [titles, formats]}``: what :func:`user_features`' share and affinity vectors
    count (the same for every user of a catalog: serving builds it once)."""
    return {"genre": multi_hot(anime["genres"], vocab["genres"]),
            "format": np.asarray(pd.get_dummies(
                pd.Categorical(anime["format"], categories=vocab["format"])), dtype=bool)}


def user_features(train: pd.DataFrame, anime: pd.DataFrame, vocab: dict,
                  config: FeatureConfig, global_mean: float,
                  taste: dict[str, np.ndarray] | None = None) -> tuple[pd.DataFrame, dict]:
    """The user table from training entries (``user_id, media_id, score, status,
    is_interaction``, optionally ``time`` in unix seconds): counts, score mean/std,
    ratios, the history (``history``, ``history_weight``: see :func:`_history`) and
    genre/format share and affinity vectors (``{name: [users, len(vocab)]}``). Serving
    builds a new user's features from their list with it, exactly as the feature stage
    did. ``taste``: :func:`taste_columns` of ``anime``, when already built."""
    users, u = np.unique(train["user_id"].to_numpy(), return_inverse=True)
    n = len(users)
    row = pd.Index(anime["media_id"]).get_indexer(train["media_id"])
    score = train["score"].to_numpy().astype(np.float64)
    scored = score > 0
    status = train["status"].astype(str).to_numpy()

    n_train = np.bincount(u, minlength=n)
    n_scored = np.bincount(u, weights=scored, minlength=n)
    total = np.bincount(u, weights=score * scored, minlength=n)
    total_sq = np.bincount(u, weights=score ** 2 * scored, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_scored > 0, total / n_scored, global_mean)
        std = np.where(n_scored > 1, np.sqrt(np.maximum(total_sq / n_scored - mean ** 2, 0)), 0.0)
    planning = np.bincount(u, weights=status == "PLANNING", minlength=n)
    started = np.maximum(n_train - planning, 1)
    columns = {
        "user_id": users,
        "n_train": n_train.astype(np.int64),
        "n_interactions": np.bincount(u, weights=train["is_interaction"], minlength=n).astype(np.int64),
        "n_scored": n_scored.astype(np.int64),
        "completed_count": np.bincount(u, weights=status == "COMPLETED", minlength=n).astype(np.int64),
        "mean_score": mean, "std_score": std,
        "dropped_ratio": np.bincount(u, weights=status == "DROPPED", minlength=n) / started,
        "planning_ratio": planning / n_train,
    }
    if config.history_length:
        # Lists of arrays, one per user: object columns (built with the frame, not added
        # to it after: inserting a column costs more than the rest for a request's users).
        history, weights = _history(train, u, n, mean, config)
        columns["history"], columns["history_weight"] = _objects(history), _objects(weights)
    frame = pd.DataFrame(columns)

    # Genre and format taste: how much of the list falls in each (share), and how the
    # user scores it against their own mean (affinity, shrunk toward 0 when evidence is thin).
    deviation = np.where(scored, score - mean[u], 0.0)
    vectors = {}
    known = np.flatnonzero(row >= 0)
    for name, hot in (taste or taste_columns(anime, vocab)).items():
        width = hot.shape[1]
        # Every (entry, column) membership at once, entries in order: one sum per (user,
        # column) bin, added in the order a loop over the columns would add them.
        entry, column = np.nonzero(hot[row[known]])
        entry = known[entry]
        bins = u[entry] * width + column
        size = n * width
        counts = np.bincount(bins, minlength=size).reshape(n, width)
        evidence = np.bincount(bins, weights=scored[entry], minlength=size).reshape(n, width)
        total = np.bincount(bins, weights=deviation[entry], minlength=size).reshape(n, width)
        vectors[f"{name}_share"] = (counts / n_train[:, None]).astype(np.float32)
        vectors[f"{name}_affinity"] = (total / (evidence + config.affinity_prior)).astype(np.float32)
    return frame, vectors


def _objects(arrays: list) -> np.ndarray:
    """A 1-d object array holding ``arrays`` (numpy would make arrays of one length 2-d)."""
    out = np.empty(len(arrays), dtype=object)
    for i, values in enumerate(arrays):
        out[i] = values
    return out


def _history(train: pd.DataFrame, u: np.ndarray, n: int, mean: np.ndarray,
             config: FeatureConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per user (``u``: each entry's user index of ``n``; ``mean``: each user's mean
    score), the ids and weights of their watched titles (``is_interaction``, the towers'
    positives), at most ``config.history_length``: the highest-weighted, ties to the
    newer title, then the lower id. Each list is sorted that way.

    weight = (1 + score / 100) * 0.5 ** (age_days / history_half_life_days)

    The score term keeps every watched title (a 30 still says what the user watches)
    while a loved one counts up to twice as much; an unscored title counts as the user's
    mean score (neutral: no evidence either way). The age is measured from the user's
    newest watched title: the query tower's weighted mean divides by the weights' sum, so
    only their ratios matter (the same as measuring from the cutoff, without weights
    underflowing for users who stopped long ago, and defined for a per-user split or a
    new user at serving). A user any of whose watched titles lacks a time gets no decay
    (lists without times, and the random split, weigh by score alone)."""
    watched = train["is_interaction"].to_numpy(bool)
    who = u[watched]
    media = train["media_id"].to_numpy(np.int64)[watched]
    score = train["score"].to_numpy(np.float64)[watched]
    factor = 1.0 + np.where(score > 0, score, mean[who]) / 100.0
    if "time" in train:
        when = pd.to_numeric(train["time"], errors="coerce").to_numpy(
            np.float64, na_value=np.nan)[watched]
    else:
        when = np.full(len(who), np.nan)
    newest = np.full(n, -np.inf)
    np.fmax.at(newest, who, np.nan_to_num(when, nan=-np.inf))
    untimed = np.bincount(who, weights=np.isnan(when), minlength=n) > 0
    age_days = (newest[who] - when) / _DAY
    decay = np.where(untimed[who], 1.0,
                     0.5 ** (np.nan_to_num(age_days) / config.history_half_life_days))
    weight = (factor * decay).astype(np.float32)
    order = np.lexsort((media, -np.nan_to_num(when, nan=0.0), -weight, who))
    who, media, weight = who[order], media[order], weight[order]
    counts = np.bincount(who, minlength=n)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    keep = np.arange(len(who)) - starts[who] < config.history_length
    ends = np.cumsum(np.minimum(counts, config.history_length))[:-1]
    return np.split(media[keep], ends), np.split(weight[keep], ends)


def _dropped_features(trained_titles: pd.DataFrame, vocab: dict, config: FeatureConfig) -> dict:
    """``{feature name: reason}`` of the inputs the data cannot feed: a categorical or
    multi-valued column with no vocabulary on the training titles, a numeric column with
    no value on them, and the user taste vectors over an empty vocabulary. The model is
    built without them (sources differ: the 2017 Kaggle dump has no studio, source,
    season, country or tags)."""
    dropped = {}
    for spec in FEATURES:
        if spec.kind == "id":
            continue
        if spec.kind == "history":
            if not config.history_length:
                dropped[spec.name] = "history_length is 0"
            continue
        if spec.kind in ("categorical", "multi"):
            if vocab[spec.vocab]:
                continue
            values = trained_titles[spec.name]
            present = (values.explode() if spec.kind == "multi" else values).notna().any()
            dropped[spec.name] = ("no values in the source" if not present else
                                  f"no value on {config.min_vocab_count}+ training titles "
                                  "(min_vocab_count)")
        elif spec.kind == "vector" and not vocab[spec.vocab]:
            dropped[spec.name] = f"no {spec.vocab} values in the source"
        elif (spec.kind == "numeric" and spec.entity == "anime"
              and trained_titles[spec.name].isna().all()):
            dropped[spec.name] = ("no time cutoff to count the days back from (a random or "
                                  "per-user split)" if spec.name in RECENT_FEATURES
                                  else "no values in the source")
    return dropped


def _numeric_stats(frame: pd.DataFrame, entity: str, features: tuple[FeatureSpec, ...],
                   vectors: dict[str, np.ndarray] | None = None) -> dict:
    """Training mean/std (after the spec's transform) of each numeric feature, and one
    scalar mean/std over all elements of each vector feature."""
    stats = {}
    for spec in features:
        if spec.entity == entity and spec.kind == "vector":
            values = pd.Series(vectors[spec.name].reshape(-1), dtype="float64")
        elif spec.entity == entity and spec.kind == "numeric":
            values = frame[spec.name].astype("float64")
        else:
            continue
        if spec.transform == "log1p":
            values = np.log1p(values.clip(lower=0))
        mean, std = values.mean(), values.std(ddof=0)
        stats[spec.name] = {
            "mean": float(0.0 if np.isnan(mean) else mean),
            "std": float(1.0 if not std or np.isnan(std) else std),
            "missing": float(values.isna().mean()),
        }
    return stats


def _write_parquet(frame: pd.DataFrame, vectors: dict[str, np.ndarray], path: Path) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for name, matrix in vectors.items():
        flat = pa.array(matrix.reshape(-1), type=pa.float32())
        table = table.append_column(name, pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1]))
    pq.write_table(table, path, compression="zstd")


# ---------------------------------------------------------------------------------------
# The stage: three passes over blocks of whole users, so memory holds one block and a
# few numbers per user and per title, never every entry.
#
#   1. read the store (the only pass over SQLite): the fingerprint, per-user time
#      spans and per-day counts (``_TimeScan``); the entries of titles with metadata
#      go to a spill file, only the columns the later passes read;
#   2. split each block (``_SplitPlan`` is fixed by then): count the training entries
#      per title, the training titles and the global mean score;
#   3. split again, leave out what no model at the cutoff knows, write the block's
#      interactions, compute its users' features.
#
# Every step inside a block is per user, and every sum across blocks is of integers, so
# the tables do not depend on the block size (tests check it byte for byte).

INTERACTION_COLUMNS = ["user_id", "media_id", "time", "status", "score", "split",
                       "is_interaction", "is_label", "listed_before"]
# The new-title slice (``_new_titles``): held-out entries on titles unknown at the cutoff,
# and those titles' rows as they look at it.
NEW_ENTRY_DTYPES = {"user_id": "int64", "media_id": "int64", "time": "float64",
                    "split": "object", "is_interaction": "bool"}
NEW_ENTRY_COLUMNS = list(NEW_ENTRY_DTYPES)
NEW_TITLES_FILE, NEW_ENTRIES_FILE = "new_titles.parquet", "new_entries.parquet"
# What passes 2 and 3 read of an entry.
_SPILLED = ["user_id", "media_id", "score", "status", "is_favourite", "time", "created_at"]
# Rows per row group of interactions.parquet: pyarrow's default, so the streamed file
# is the one writing the whole table at once gives.
ROW_GROUP_ROWS = 1024 * 1024


class _Fingerprint:
    """A short hash of the data: the entries as read (block by block: each row hashes
    alone, so the blocks' hashes in order are the whole table's), the media and the
    relations."""

    def __init__(self):
        self._digest = hashlib.sha256()

    def add(self, entries: pd.DataFrame) -> None:
        self._digest.update(pd.util.hash_pandas_object(entries, index=False).to_numpy().tobytes())

    def finish(self, media: pd.DataFrame, relations: pd.DataFrame | None) -> str:
        flat = media.assign(genres=media["genres"].map(json.dumps),
                            tags=media["tags"].map(json.dumps))
        self._digest.update(pd.util.hash_pandas_object(flat, index=False).to_numpy().tobytes())
        if relations is not None and not relations.empty:  # without any: the fingerprint it had
            self._digest.update(
                pd.util.hash_pandas_object(relations, index=False).to_numpy().tobytes())
        return self._digest.hexdigest()[:16]


class _MemorySpill:
    """The entries pass 1 keeps, in memory (``build``: the caller holds them anyway)."""

    def __init__(self):
        self._blocks = []

    def add(self, frame: pd.DataFrame) -> None:
        self._blocks.append(frame)

    def blocks(self, columns: list[str] | None = None):
        return (b if columns is None else b[columns] for b in self._blocks)


class _FileSpill:
    """The entries pass 1 keeps, in a Parquet file with one row group per block (blocks
    hold whole users, so the row groups do too), read back one block at a time."""

    def __init__(self, path: Path):
        self.path, self._writer, self._n = path, None, 0

    def add(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        frame = frame.assign(status=frame["status"].astype(object))
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="lz4")
        self._writer.write_table(table, row_group_size=len(table))
        self._n += 1

    def blocks(self, columns: list[str] | None = None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self._n:
            return
        spilled = pq.ParquetFile(self.path)
        if spilled.num_row_groups != self._n:  # a block above pyarrow's row group cap
            raise RuntimeError(f"{self.path}: {self._n} blocks but "
                               f"{spilled.num_row_groups} row groups")
        for group in range(spilled.num_row_groups):
            yield spilled.read_row_group(group, columns=columns).to_pandas()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.path.unlink(missing_ok=True)


class _ParquetRows:
    """interactions.parquet written block by block, cut into row groups of exactly
    ``ROW_GROUP_ROWS`` rows as one ``to_parquet`` of the whole table would be."""

    def __init__(self, path: Path):
        self.path, self._writer, self._pending, self._rows = path, None, [], 0

    def add(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        if len(table):
            self._pending.append(table)
            self._rows += len(table)
        while self._rows >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self._pending).combine_chunks()
        self._writer.write_table(table.slice(0, rows), row_group_size=rows)
        rest = table.slice(rows)
        self._pending, self._rows = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        if self._rows:
            self._flush(self._rows)
        self._writer.close()


class _FrameRows:
    """The interactions kept in memory (``build``)."""

    def __init__(self):
        self.parts = []

    def add(self, frame: pd.DataFrame) -> None:
        self.parts.append(frame)

    def frame(self) -> pd.DataFrame:
        return pd.concat(self.parts, ignore_index=True)


# What a user's list is to serving (``list_entries``, ``Recommender.with_lists``): the
# columns it needs, and the times it reads when they are there.
LIST_COLUMNS = ("user_id", "media_id", "status", "score")
LIST_TIMES = ("created_at", "updated_at", "completed_at")


def list_entries(entries: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """Entries with the store's columns as the feature stage reads a training list, for
    :func:`user_features`: with ``time`` (the first of ``config.time_columns`` set;
    left out when ``entries`` has none of them) and the ``is_interaction`` and
    ``is_label`` flags. Serving rebuilds a user's features from their current list
    with it."""
    if any(column in entries for column in config.time_columns):
        present = [c for c in config.time_columns if c in entries]
        entries = _with_time(entries, dataclasses.replace(config, time_columns=tuple(present)))
    return _flags(entries, config)


def _flags(frame: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """``is_interaction`` (watched: a positive of retrieval) and ``is_label`` (a scored
    entry: a ranking label) of each entry."""
    score = frame["score"].to_numpy()
    status = frame["status"].astype(str)
    return frame.assign(
        is_interaction=status.isin(config.interaction_statuses).to_numpy()
        & (score >= config.min_interaction_score),
        is_label=status.isin(config.label_statuses).to_numpy() & (score > 0))


def recent_counts(rows: np.ndarray, when: np.ndarray, n: int, as_of: int) -> dict[str, np.ndarray]:
    """What people are watching now: per title row (of ``n``), the entries whose time is
    in each of the last ``RECENT_WINDOWS`` days before ``as_of``, under the
    ``RECENT_FEATURES`` names. ``rows``: each entry's title row (-1: not counted);
    ``when``: its time in unix seconds (NaN: untimed, not counted). The feature stage
    counts training entries with it; ``bench/fresh_activity.py`` a later day's lists
    (which showed serving should keep the training counts)."""
    counted = rows >= 0
    return {name: np.bincount(rows[counted & (when >= as_of - days * _DAY) & (when < as_of)],
                              minlength=n).astype(np.int64)
            for days, name in zip(RECENT_WINDOWS, RECENT_FEATURES)}


class _TitleCounts:
    """Per title of the media table (its row order), counted from training entries:
    entries, favourites, interactions, the nonzero scores' sum and count; and the global
    mean score's sum and count. All integers, so the sums do not depend on the order
    the blocks come in."""

    def __init__(self, media_ids: pd.Series, as_of: int | None = None):
        self.index = pd.Index(media_ids)
        zeros = lambda: np.zeros(len(self.index), np.int64)  # noqa: E731
        self.entries, self.favourites, self.interactions = zeros(), zeros(), zeros()
        self.score_sum, self.scored = zeros(), zeros()
        self.any_favourite = False
        # Entries of each title in the last days before the cutoff (``RECENT_WINDOWS``),
        # timed lists only; None without a cutoff (no "now" to count back from).
        self.as_of = as_of
        self.recent = None if as_of is None else {name: zeros() for name in RECENT_FEATURES}

    def add(self, train: pd.DataFrame) -> None:
        at = self.index.get_indexer(train["media_id"])
        n = len(self.index)
        count = lambda mask: np.bincount(at[mask], minlength=n).astype(np.int64)  # noqa: E731
        if self.recent is not None:
            when = train["time"].to_numpy("float64", na_value=np.nan)
            when[train["random_split"].to_numpy(bool)] = np.nan   # no "when" to count by
            for name, counts in recent_counts(at, when, n, self.as_of).items():
                self.recent[name] += counts
        favourite = train["is_favourite"].fillna(False).astype(bool).to_numpy()
        score = train["score"].to_numpy().astype(np.int64)
        self.entries += np.bincount(at, minlength=n)
        self.favourites += count(favourite)
        self.any_favourite |= bool(favourite.any())
        self.interactions += count(train["is_interaction"].to_numpy(bool))
        self.scored += count(score > 0)
        # float64 sums of one block's integer scores are exact (far below 2**53).
        self.score_sum += np.bincount(at, weights=score * (score > 0),
                                      minlength=n).astype(np.int64)

    def global_mean(self) -> float:
        n = self.scored.sum()
        return float(np.float64(self.score_sum.sum()) / np.float64(n)) if n else 0.0


def _listed_before(frame: pd.DataFrame, cutoff: dict) -> np.ndarray:
    """Per entry: a held-out entry of a timed list that was on the user's list before its
    period began (created before it, placed in it by a later change: a title finished or
    scored in the period). Serving hides it (it is on the list): counted always, and with
    ``targets="added"`` kept as history the period's rankings leave out, not a target."""
    created = frame["created_at"].to_numpy("float64", na_value=np.nan)
    timed = ~frame["random_split"].to_numpy(bool)
    split = frame["split"].to_numpy()
    validation = cutoff.get("validation_horizon", cutoff["horizon"])
    starts = {"validation": cutoff["as_of"], "test": cutoff["as_of"] + validation}
    out = np.zeros(len(frame), bool)
    for name, start in starts.items():
        out |= timed & (split == name) & (created < start)
    return out


def _leave_out(frame: pd.DataFrame, cutoff: dict | None,
               titles: np.ndarray) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Under a cutoff, drops what no model at the cutoff could be asked about: entries
    after the test period, and validation/test entries of users with no entry before the
    cutoff or of titles no one had listed before it (not in ``titles``, the ids with a
    training entry). Returns the rest of the block, the counts, and the entries of known
    users on those new titles (the new-title slice's, ``new_entries.parquet``)."""
    if not cutoff:
        return frame, {}, frame.iloc[:0]
    after = frame["split"].isna().to_numpy()
    train = frame["split"].to_numpy() == "train"
    new_user = ~frame["user_id"].isin(frame.loc[train, "user_id"].unique()).to_numpy() & ~after
    new_title = ~np.isin(frame["media_id"].to_numpy(), titles) & ~after & ~new_user
    left_out = {"after_test": int(after.sum()), "new_users": int(new_user.sum()),
                "new_titles": int(new_title.sum())}
    keep = ~(after | new_user | new_title)
    return frame[keep].reset_index(drop=True), left_out, frame[new_title].reset_index(drop=True)


def _bar(progress: bool, desc: str, total: int | None = None):
    return tqdm(total=total, desc=desc, unit=" entries", unit_scale=True, disable=not progress)


def _tables(raw_blocks, media: pd.DataFrame, relations: pd.DataFrame | None,
            config: FeatureConfig, spill, rows, *, progress: bool = False,
            inputs: dict | None = None):
    """The feature computation over ``raw_blocks`` (an iterable of entry frames, each
    holding whole users, ``store.ENTRY_COLUMNS``), keeping what pass 1 reads in
    ``spill`` and handing each block's interactions to ``rows.add``. ``inputs``
    (``model_inputs``): the vocabularies, dropped features and widths to keep.

    Returns:
      ``(users, user_vectors, anime, schema)``.
    """
    timings = {}
    tick = time.perf_counter()
    known_ids = media["media_id"].to_numpy()
    scan, fingerprint = _TimeScan(), _Fingerprint()
    statuses, categorical = set(), False
    n_raw = n_known = 0
    with _bar(progress, "features 1/3: reading the store") as bar:
        for block in raw_blocks:
            fingerprint.add(block)
            if isinstance(block["status"].dtype, pd.CategoricalDtype):
                categorical = True
                statuses.update(block["status"].cat.categories)
            known = block[block["media_id"].isin(known_ids).to_numpy()]
            known = _with_time(known, config)[_SPILLED]
            scan.add(known)
            spill.add(known)
            n_raw, n_known = n_raw + len(block), n_known + len(known)
            bar.update(len(block))
    if not n_raw:
        raise InputError("The raw store has no list entries: nothing to build features from.")
    if not n_known:
        raise InputError(f"None of the {n_raw:,} list entries is of a title with metadata in "
                         "the store: run `data_query.py media` (or import the titles) first.")
    categories = sorted(statuses) if categorical else None
    plan = _plan_split(scan, config, lambda: spill.blocks(["user_id", "time"]))
    timings["read"] = time.perf_counter() - tick

    tick = time.perf_counter()
    counted = _TitleCounts(media["media_id"], plan.cutoff and plan.cutoff["as_of"])
    with _bar(progress, "features 2/3: splitting", n_known) as bar:
        for block in spill.blocks():
            frame = _split_block(block, plan, config)
            counted.add(_flags(frame[frame["split"].to_numpy() == "train"], config))
            bar.update(len(block))
    if not counted.entries.any():
        raise InputError("No entry falls in the training split; lower --as-of or the "
                         "held-out fractions.")
    global_mean = counted.global_mean()
    timings["split"] = time.perf_counter() - tick

    tick = time.perf_counter()
    trained = counted.entries > 0
    titles = np.sort(known_ids[trained])
    anime = _anime_table(media, counted, config, catalog=trained if plan.cutoff else None)
    anime, related = (anime, None) if relations is None else catalog_relations(anime, relations)
    trained_titles = anime[anime["media_id"].isin(titles)]
    vocab = {
        "user_id": [],  # filled below, from the users with training entries
        "media_id": trained_titles["media_id"].tolist(),
        "format": _vocab(trained_titles["format"], 1),
        "source": _vocab(trained_titles["source"], 1),
        "season": _vocab(trained_titles["season"], 1),
        "country": _vocab(trained_titles["country"], 1),
        "studio": _vocab(trained_titles["studio"], config.min_vocab_count),
        "genres": _vocab(trained_titles["genres"].explode(), 1),
        "tags": _vocab(trained_titles["tags"].explode(), config.min_vocab_count),
    }
    dropped = _dropped_features(trained_titles, vocab, config)
    if related is None:
        dropped.update({name: "no relations between the catalog's titles in the source"
                        for name in RELATION_SIGNALS})
    if inputs is not None:   # another model's inputs: its vocabularies, not these titles'
        vocab.update({k: v for k, v in inputs["vocab"].items() if k not in ID_VOCABS})
        dropped = dict(inputs["dropped_features"])
    kept = tuple(dataclasses.replace(f, length=config.history_length) if f.kind == "history"
                 else f for f in FEATURES if f.name not in dropped)

    user_parts, vector_parts, new_parts = [], [], []
    counts = {split: {"entries": 0, "interactions": 0, "labels": 0, "users": 0}
              for split in SPLITS}
    left_out = {"after_test": 0, "new_users": 0, "new_titles": 0} if plan.cutoff else {}
    listed_before = {"validation": 0, "test": 0}
    n_entries = n_users = split_users = random_split_users = 0
    with _bar(progress, "features 3/3: users and interactions", n_known) as bar:
        for block in spill.blocks():
            bar.update(len(block))
            frame, out, new = _leave_out(_split_block(block, plan, config), plan.cutoff, titles)
            for reason, n in out.items():
                left_out[reason] += n
            if len(new):
                new_parts.append(_flags(new, config)[NEW_ENTRY_COLUMNS])
            frame = _flags(frame, config)
            listed = (_listed_before(frame, plan.cutoff) if plan.cutoff
                      else np.zeros(len(frame), bool))
            for name in listed_before:
                listed_before[name] += int((listed & frame["is_interaction"].to_numpy()
                                            & (frame["split"].to_numpy() == name)).sum())
            # targets="added": on the list before its period, an entry is history serving
            # hides, no target of retrieval or ranking (a score given in the period stays
            # a score label); "changed" keeps it a target.
            frame["listed_before"] = listed & (config.targets == "added")
            frame["is_interaction"] &= ~frame["listed_before"]
            if categories is not None:
                frame["status"] = pd.Categorical(frame["status"], categories=categories)
            rows.add(frame[INTERACTION_COLUMNS])
            split = frame["split"].to_numpy()
            for name in SPLITS:
                part = frame[split == name]
                counts[name]["entries"] += len(part)
                counts[name]["interactions"] += int(part["is_interaction"].sum())
                counts[name]["labels"] += int(part["is_label"].sum())
                counts[name]["users"] += int(part["user_id"].nunique())
            n_entries += len(frame)
            # Whose lists are split (for the report): in the random and per-user splits
            # lists shorter than min_entries_to_split stay whole in train; timed lists
            # are split by the cutoff whatever their length.
            sizes = frame.groupby("user_id").size()
            randomly = sizes.index.isin(frame.loc[frame["random_split"], "user_id"].unique())
            is_split = (sizes >= config.min_entries_to_split).to_numpy()
            if plan.cutoff:
                is_split |= ~randomly
            n_users += len(sizes)
            split_users += int(is_split.sum())
            random_split_users += int((is_split & randomly).sum())
            train = frame[split == "train"]
            if len(train):
                users, vectors = user_features(train, anime, vocab, config, global_mean)
                user_parts.append(users)
                vector_parts.append(vectors)
    users = pd.concat(user_parts, ignore_index=True)
    user_vectors = {k: np.concatenate([v[k] for v in vector_parts])
                    for k in vector_parts[0] if k not in dropped}
    order = np.argsort(users["user_id"].to_numpy(), kind="stable")
    if (order != np.arange(len(order))).any():  # blocks not in user order
        users = users.iloc[order].reset_index(drop=True)
        user_vectors = {k: v[order] for k, v in user_vectors.items()}
    vocab["user_id"] = users["user_id"].tolist()
    new = _new_titles(new_parts, media, counted, config)
    timings["features"] = time.perf_counter() - tick

    counts = {"users": len(users), "anime": len(anime), "entries": n_entries,
              "entries_without_media": n_raw - n_known,
              "sparsity": 1.0 - n_entries / max(1, n_users * len(anime)), **counts}
    split = _split_protocol(config, plan.cutoff, left_out, split_users, random_split_users)
    if plan.cutoff:
        split["listed_before"] = listed_before
        entries = new["entries"]
        split["new_titles"] = {
            "titles": len(new["anime"]),
            **{name: int((entries["is_interaction"] & (entries["split"] == name)).sum())
               for name in ("validation", "test")}}
    counts["random_split_users"] = split["random_split_users"]
    schema = {
        "config": config.to_dict(),
        "features": [dataclasses.asdict(f) for f in kept],
        "dropped_features": dropped,
        "vocab": vocab,
        "stats": {"user": _numeric_stats(users, "user", kept, user_vectors),
                  "anime": _numeric_stats(trained_titles, "anime", kept),
                  "global_mean_score": global_mean},
        "counts": counts,
        "split": split,
        # The relations between titles (anime.parquet's relation columns); absent
        # where the source has none.
        **({"relations": related} if related else {}),
        # The media hashed are the catalog's (as of the cutoff, under one).
        "fingerprint": fingerprint.finish(media[trained] if plan.cutoff else media, relations),
        # Fixed padded widths of the multi-valued features (``model_inputs``), else each
        # reader takes the longest list of anime.parquet.
        **({"multi_widths": inputs["multi_widths"]} if inputs is not None else {}),
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    return users, user_vectors, anime, schema, new


def _new_titles(parts: list, media: pd.DataFrame, counted: "_TitleCounts",
                config: FeatureConfig) -> dict:
    """The new-title slice's tables: ``entries`` (known users' held-out entries on titles
    no one had listed before the cutoff, ``NEW_ENTRY_COLUMNS``) and ``anime`` (those
    titles' rows, as ``anime.parquet``'s, as they look at the cutoff: their metadata,
    with nothing counted, for no training entry is theirs). A model meets them only
    through its candidate tower (``towers.features``: the id is out of its vocabulary)."""
    entries = (pd.concat(parts, ignore_index=True) if parts
               else pd.DataFrame({c: pd.Series(dtype=t) for c, t in NEW_ENTRY_DTYPES.items()}))
    new = media[media["media_id"].isin(entries["media_id"].unique()).to_numpy()]
    return {"entries": entries.astype(NEW_ENTRY_DTYPES), "anime": new_title_rows(new, config)}


def new_title_rows(media: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """``anime.parquet`` rows (without relations) of the titles of ``media`` (the store's
    media table) as a title no one has listed looks: its metadata, and nothing counted
    (``COUNTED_TITLE_FEATURES``). The new-title slice's rows, and the rows serving adds
    for titles first listed after training (``Recommender.with_titles``)."""
    anime = _anime_table(media.reset_index(drop=True), _TitleCounts(media["media_id"]), config)
    return anime.assign(**COUNTED_TITLE_FEATURES)


ID_VOCABS = ("user_id", "media_id")   # a table's own users and titles, whatever ``inputs``


def model_inputs(model_config: dict) -> dict:
    """What feature tables must keep so a saved model (its ``config.json``) reads them:
    the vocabularies of its categorical, multi-valued and taste-vector features (not
    the ids: new users and titles are out of its vocabulary), its dropped features and
    the padded widths of its multi-valued inputs. The walk-forward tables are built
    with the selection model's, so its ranker reads them."""
    schema = model_config["feature_schema"]
    return {"vocab": {k: v for k, v in schema["vocab"].items() if k not in ID_VOCABS},
            "dropped_features": schema.get("dropped_features", {}),
            "multi_widths": model_config["multi_widths"]}


def build(entries: pd.DataFrame, media: pd.DataFrame, config: FeatureConfig = FeatureConfig(),
          relations: pd.DataFrame | None = None):
    """The feature computation on entries held in memory: entries + media (+ the
    relations between titles, ``store.RELATION_COLUMNS``; None = none) -> tables and
    schema, by the same passes ``run`` streams (here over one block).

    Returns:
      ``(interactions, users, user_vectors, anime, schema)``.
    """
    rows = _FrameRows()
    users, user_vectors, anime, schema, _ = _tables([entries], media, relations, config,
                                                    _MemorySpill(), rows)
    return rows.frame(), users, user_vectors, anime, schema


def run(db: str | os.PathLike = "data/anirank.db", out: str | os.PathLike = "data/features",
        config: FeatureConfig = FeatureConfig(), *, progress: bool = True,
        block_entries: int = store.ENTRY_BLOCK, inputs: dict | None = None) -> dict:
    """Stage function behind ``python -m pipelines features``: store -> Parquet tables.
    ``inputs`` (``model_inputs``): keep another model's vocabularies and widths.

    The entries stream through in blocks of about ``block_entries`` (whole users), so
    memory does not grow with their number; the tables are the same whatever the block
    size. Everything is written into a temporary sibling directory and renamed to
    ``out`` only when all of it is complete; an existing ``out`` is replaced.

    Returns:
      The ``counts`` section of the schema plus ``out`` and ``seconds``.
    """
    start = time.perf_counter()
    out = Path(out)
    conn = store.connect(db, readonly=True)
    try:
        media = store.read_media(conn)
        relations = store.read_relations(conn)
        source = store.describe_source(conn)
        with atomic.directory(out) as tmp:
            spill = _FileSpill(tmp / ".entries.spill.parquet")
            rows = _ParquetRows(tmp / "interactions.parquet")
            try:
                users, user_vectors, anime, schema, new = _tables(
                    store.iter_entries(conn, block_entries), media, relations, config,
                    spill, rows, progress=progress, inputs=inputs)
                rows.close()
            finally:
                spill.close()
            tick = time.perf_counter()
            _write_parquet(users, user_vectors, tmp / "users.parquet")
            anime.to_parquet(tmp / "anime.parquet", index=False, compression="zstd")
            new["anime"].to_parquet(tmp / NEW_TITLES_FILE, index=False, compression="zstd")
            new["entries"].to_parquet(tmp / NEW_ENTRIES_FILE, index=False, compression="zstd")
            schema["timings"]["write"] = round(time.perf_counter() - tick, 2)
            schema["source_db"] = str(Path(db).resolve())  # where a synthetic world's truth sits
            schema["source"] = source  # what the data is: the model card names it
            # schema.json last: a directory with a schema is a complete one.
            (tmp / SCHEMA_FILE).write_text(json.dumps(schema, indent=2, sort_keys=True))
    finally:
        conn.close()
    return dict(schema["counts"], out=str(out), dropped_features=schema["dropped_features"],
                split=describe_split(schema), db=str(db), source=source["kind"],
                seconds=round(time.perf_counter() - start, 2))


def format_summary(summary: dict) -> str:
    """A few human lines about a feature run."""
    lines = [f"feature tables in {summary['out']} from {summary['db']} "
             f"({summary['source']} data; {summary['seconds']} s)",
             f"  users {summary['users']:,}  anime {summary['anime']:,}  "
             f"entries {summary['entries']:,}  sparsity {summary['sparsity']:.4%}"]
    lines.append(f"  split: {summary['split']}")
    for split in SPLITS:
        part = summary[split]
        lines.append(f"  {split:<10} entries {part['entries']:>10,}  interactions "
                     f"{part['interactions']:>10,}  labels {part['labels']:>10,}  "
                     f"users {part['users']:>7,}")
    if summary["random_split_users"]:
        lines.append(f"  {summary['random_split_users']:,} users without usable entry times "
                     "(none, or all entries at one time): split in seeded random order")
    by_reason: dict[str, list[str]] = {}
    for name, reason in summary["dropped_features"].items():
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        lines.append(f"  left out of the model ({reason}): {', '.join(names)}")
    if summary["entries_without_media"]:
        lines.append(f"  skipped {summary['entries_without_media']:,} entries of titles "
                     "with no metadata in the store (run `data_query.py media`)")
    return "\n".join(lines)
