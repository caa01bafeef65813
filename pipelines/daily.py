"""The daily loop: refresh the tracked users, see what they did on day D, compare it with
what the model said the day before, keep the history, and serve day D+1.

    python -m pipelines daily --date 2026-11-02 --model data/model --endpoint URL

One run for day ``D`` (UTC):

1. **Refresh.** ``data_query.refresh`` for the tracked users (the model's training users,
   or ``--users FILE``): one small request per user, and the lists that changed since the
   store last saw them (AniList's newest ``updatedAt`` per list) are fetched again, then
   any new titles. Skipped with ``--no-refresh`` (a store kept fresh by other means).
2. **Outcomes.** The tracked users' entries whose ``updated_at`` falls on D: ``completed``
   (COMPLETED on D), ``dropped``, ``scored`` (a score given on D to an entry of another
   status) and ``started`` (a title added to the list on D and not just planned). A
   title added to the list on D (``is_new``) is one the recommendations could have
   shown. Only changes after the first run's start count (``SINCE``): the loop scores
   what it saw happen.
3. **Predictions**, from the model that was current before D (``--model``, pinned with
   ``--revision`` for a Hub repo), reading each user's list as the day before's served
   lists did (saved beside them, see 6): the score head's predicted score of every outcome,
   and where each new title stood in the list served the day before (``served_rank``;
   the lists are this module's own output for D-1, see 6). Beside them, computed from
   the store as it stood before D, the baselines a reviewer expects: the user's mean
   score, the title's mean score, and the rank the title had in the recent-popularity
   list (most added in the 30 days before D) without the user's titles.
4. **Metrics** of the day: MAE, RMSE and Spearman of predicted against real scores
   (scored outcomes on titles the model knows; the share on unknown titles, i.e. new
   releases, is reported), hit rate @10 / @100 of the day's new titles in the served
   lists and in the popularity lists, and the drift of the day's outcomes against the
   model's training period (population stability index of the score, the title's
   training popularity, its format and the user's list length).
5. **Kept** in the raw store: ``daily_outcomes``, ``daily_predictions`` and
   ``daily_metrics``, keyed by (model revision, day, user, title), written in one
   transaction per day: a rerun replaces the day exactly, and a run killed before the
   commit leaves the previous state.
6. **Served**: each tracked user's top ``k`` (default 100) for D+1 from the same model,
   from their list by the end of D (``Recommender.with_lists``: features, history and
   seen titles rebuilt from it, not frozen at training, so a tracked user the model was
   not trained on is served by the model too; users with no list get the popularity
   list) and leaving out everything on it (so a day replayed on a store that already
   holds later days serves what it would have served then), written atomically to
   ``<out>/served/<revision>/<D>.parquet``, and the lists it read to
   ``<D>.lists.parquet`` beside it. When D-1's list is missing (the first run),
   it is built before the refresh, from the store as it stood then.

Then ``pipelines.monitoring`` rewrites ``<out>/monitoring/`` from every day the store
holds for the revision.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import atomic, monitoring, store
from pipelines.features import LIST_COLUMNS, LIST_TIMES
from pipelines.errors import InputError

DAY = 86_400
RECENT_DAYS = 30  # the recent-popularity baseline counts titles added in this window
OUTCOME_KINDS = ("completed", "dropped", "scored", "started")
# The store cursor where the loop began: the newest list update the store held when the
# first day ran. Only later changes are outcomes: the loop scores what it saw happen, not
# what a crawl (or a synthetic world, whose last times pile up at its crawl instant)
# already held when the loop started.
SINCE = "daily_since"
DEFAULT_K = 100


def parse_day(value: str | dt.date | None) -> dt.date:
    """``YYYY-MM-DD`` (UTC), a date, or None for today in UTC."""
    if value is None:
        return dt.datetime.now(dt.timezone.utc).date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise InputError(f"--date must be a day as YYYY-MM-DD (UTC). Received: {value!r}.") from None


def day_bounds(day: dt.date) -> tuple[int, int]:
    """``[start, end)`` of a UTC day in Unix seconds."""
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())
    return start, start + DAY


# -- outcomes ------------------------------------------------------------------------------

def select_outcomes(entries: pd.DataFrame, start: int, end: int,
                    since: int | None = None) -> pd.DataFrame:
    """The day's outcomes among ``entries`` (the store's columns): entries updated in
    ``[start, end)`` (and after ``since``: see ``SINCE``) that were completed, dropped
    or scored then, or added then and not just planned. Columns: user_id, media_id,
    kind, status, score, is_new, updated_at."""
    start = start if since is None else max(start, since + 1)

    def within(column: str) -> np.ndarray:
        values = entries[column].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        return (values >= start) & (values < end)

    updated = within("updated_at")
    status = entries["status"].astype(str).to_numpy()
    completed_at = entries["completed_at"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    # Completed on D: updated on D with a completion date within a day of D (AniList
    # gives the date in the user's own time zone), or none; an entry completed long ago
    # and updated on D (a new score) is not a completion.
    near = (completed_at >= start - DAY) & (completed_at < end + DAY)
    completed = (status == "COMPLETED") & updated & (np.isnan(completed_at) | near)
    dropped = (status == "DROPPED") & updated
    scored = updated & (entries["score"].to_numpy() > 0) & ~completed & ~dropped
    is_new = within("created_at") & updated
    started = is_new & (status != "PLANNING") & ~completed & ~dropped & ~scored
    kind = np.select([completed, dropped, scored, started], OUTCOME_KINDS, default="")
    keep = kind != ""
    out = entries.loc[keep, ["user_id", "media_id", "status", "score", "updated_at"]].copy()
    out.insert(2, "kind", kind[keep])
    out["status"] = out["status"].astype(str)
    out["score"] = out["score"].astype(np.int64)
    out["is_new"] = is_new[keep].astype(np.int64)
    return out.reset_index(drop=True)


def list_before(entries: pd.DataFrame, start: int) -> pd.DataFrame:
    """The entries as they stood before ``start``, as far as the store can tell: those
    created before it (an entry changed later keeps its new values: the store holds the
    latest state only)."""
    created = entries["created_at"].astype("Float64").to_numpy(dtype=float, na_value=-np.inf)
    return entries[created < start]


def known_at(entries: pd.DataFrame, at: int, since: int | None = None) -> pd.DataFrame:
    """The entries whose values the store held before ``at``: not updated since, or by
    ``since`` (the loop saw them before it began: ``SINCE``); an entry without a time
    counts as known. What the model reads of a list as of ``at``, so a day replayed on a
    store that holds later days reads no later score."""
    updated = entries["updated_at"].astype("Float64").to_numpy(dtype=float, na_value=-np.inf)
    return entries[(updated < at) | (updated <= (-np.inf if since is None else since))]


def lists_of(entries: pd.DataFrame) -> dict:
    """User id -> the ids on their list (int64 arrays), from ``entries``."""
    users = entries["user_id"].to_numpy(np.int64)
    order = np.argsort(users, kind="stable")
    ids, starts = np.unique(users[order], return_index=True)
    parts = np.split(entries["media_id"].to_numpy(np.int64)[order], starts[1:])
    return dict(zip(ids.tolist(), parts))


# -- baselines -----------------------------------------------------------------------------

def score_baselines(entries: pd.DataFrame, start: int) -> tuple[pd.Series, pd.Series, float]:
    """The score baselines as of ``start``: each user's mean score, each title's mean
    score and the global mean, over the scores given before ``start``."""
    updated = entries["updated_at"].astype("Float64").to_numpy(dtype=float, na_value=-np.inf)
    scored = entries[(entries["score"].to_numpy() > 0) & (updated < start)]
    score = scored["score"].astype(float)
    global_mean = float(score.mean()) if len(score) else math.nan
    return (score.groupby(scored["user_id"]).mean(), score.groupby(scored["media_id"]).mean(),
            global_mean)


def recent_popularity(entries: pd.DataFrame, start: int, days: int = RECENT_DAYS) -> np.ndarray:
    """Title ids by how many lists added them in the ``days`` before ``start`` (ties:
    by how many lists hold them before ``start``, then id): the recent-popularity
    baseline's list, before each user's own titles are taken out."""
    before = list_before(entries, start)
    created = before["created_at"].astype("Float64").to_numpy(dtype=float, na_value=-np.inf)
    recent = before["media_id"][created >= start - days * DAY].value_counts()
    total = before["media_id"].value_counts()
    frame = pd.DataFrame({"recent": recent, "total": total}).fillna(0)
    frame = frame.rename_axis("media_id").reset_index()
    frame = frame.sort_values(["recent", "total", "media_id"], ascending=[False, False, True])
    return frame["media_id"].to_numpy(np.int64)


def ranks_without_own(order: np.ndarray, own: dict, pairs: pd.DataFrame) -> np.ndarray:
    """The 1-based rank of each (user_id, media_id) of ``pairs`` in the global ``order``
    with the user's own titles (``own``: user id -> array of ids) taken out: what the
    baseline would have shown that user. NaN for titles not in ``order``."""
    position = pd.Series(np.arange(len(order)), index=order)
    out = np.full(len(pairs), np.nan)
    title_pos = position.reindex(pairs["media_id"].to_numpy()).to_numpy()
    for i, (user, pos) in enumerate(zip(pairs["user_id"].to_numpy(), title_pos)):
        if np.isnan(pos):
            continue
        mine = position.reindex(own.get(int(user), np.zeros(0, np.int64))).to_numpy()
        out[i] = pos + 1 - np.count_nonzero(mine < pos)
    return out


# -- metrics ---------------------------------------------------------------------------

def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN under 3 pairs or for a
    constant side."""
    if len(a) < 3:
        return math.nan
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def score_metrics(real: np.ndarray, predicted: np.ndarray) -> dict:
    """MAE, RMSE and Spearman of ``predicted`` against ``real`` (NaN for no pairs)."""
    if not len(real):
        return {"mae": math.nan, "rmse": math.nan, "spearman": math.nan}
    error = predicted - real
    return {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error ** 2).mean())),
            "spearman": spearman(real, predicted)}


def hit_rates(ranks: np.ndarray) -> dict:
    """Share of titles at rank <= 10 and <= 100 (NaN ranks: not shown)."""
    if not len(ranks):
        return {"hit@10": math.nan, "hit@100": math.nan}
    ranks = np.nan_to_num(np.asarray(ranks, float), nan=np.inf)
    return {"hit@10": float(np.mean(ranks <= 10)), "hit@100": float(np.mean(ranks <= 100))}


def day_metrics(outcomes: pd.DataFrame, predictions: pd.DataFrame, global_mean: float,
                served: bool) -> dict:
    """The day's metrics from its outcomes and predictions (same rows, same order).

    Score metrics: scored outcomes (score > 0) on titles the model knows, every predictor
    on the same pairs (a baseline without a value for a pair falls back to the global
    mean). Hit rates: the new titles (``is_new``) against the served list (NaN when no
    list was served the day before) and the popularity list."""
    counts = outcomes["kind"].value_counts()
    scored = outcomes["score"].to_numpy() > 0
    known = predictions["predicted_score"].notna().to_numpy()
    pairs = scored & known
    real = outcomes["score"].to_numpy(float)[pairs]
    fallback = lambda c: predictions[c].astype(float).fillna(global_mean).to_numpy()[pairs]  # noqa: E731
    new = outcomes["is_new"].to_numpy() == 1
    return {
        "outcomes": int(len(outcomes)),
        "users": int(outcomes["user_id"].nunique()),
        **{kind: int(counts.get(kind, 0)) for kind in OUTCOME_KINDS},
        "scored": int(scored.sum()),
        "scored_known": int(pairs.sum()),
        "unknown_title_share": float(np.mean(~known[scored])) if scored.any() else math.nan,
        "scores": {
            "model": score_metrics(real, predictions["predicted_score"].to_numpy(float)[pairs]),
            "user_mean": score_metrics(real, fallback("user_mean")),
            "title_mean": score_metrics(real, fallback("title_mean")),
            "global_mean": score_metrics(real, np.full(len(real), global_mean)),
        },
        "new_titles": int(new.sum()),
        "hits": {
            "model": (hit_rates(predictions["served_rank"].to_numpy(float)[new]) if served
                      else {"hit@10": math.nan, "hit@100": math.nan}),
            "recent_popularity": hit_rates(predictions["popularity_rank"].to_numpy(float)[new]),
        },
    }


# -- the run ---------------------------------------------------------------------------

def tracked_users(rec, users: str | None) -> np.ndarray:
    """The user ids to follow: the model's training users, or the ids in ``users`` (a
    file of one integer per line)."""
    if users is None:
        return rec.users["user_id"].to_numpy(np.int64)
    path = Path(users)
    if not path.is_file():
        raise InputError(f"--users {users}: no such file (one AniList user id per line).")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"--users {users} is not a UTF-8 text file: one AniList user id "
                         "per line.") from None
    ids, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            (ids if line.strip().isdigit() else bad).append(
                int(line) if line.strip().isdigit() else (number, line.strip()))
    if bad:
        raise InputError(f"--users {users}: lines that are not user ids, e.g. line {bad[0][0]}: "
                         f"{bad[0][1]!r}. Put one integer id per line.")
    return pd.unique(np.asarray(ids, np.int64))


def served_path(out: Path, revision: str, day: dt.date) -> Path:
    return out / "served" / revision / f"{day.isoformat()}.parquet"


def lists_path(out: Path, revision: str, day: dt.date) -> Path:
    """The lists the day's served lists were made from (the next day's predictions
    read them)."""
    return out / "served" / revision / f"{day.isoformat()}.lists.parquet"


def titles_path(out: Path, revision: str, day: dt.date) -> Path:
    """The titles the day's served lists added to the model's (``with_titles``): the
    next day's predictions add the same."""
    return out / "served" / revision / f"{day.isoformat()}.titles.parquet"


def titles_served(titles: dict, path: Path) -> dict:
    """``titles`` (``serving.batch.read_titles``) cut to those a day's serving added (``titles_path``),
    all of them where no such file exists (a day served before it was kept)."""
    if not path.exists():
        return titles
    ids = pd.read_parquet(path)["media_id"]
    return {**titles, "media": titles["media"][titles["media"]["media_id"].isin(ids)]}


def with_titles(rec, titles: dict | None):
    """``rec`` serving the store's titles too (``titles``: its ``media`` and
    ``relations``; ``Recommender.with_titles``: those first listed after training placed
    by the candidate tower); ``rec`` itself for None."""
    return rec if titles is None else rec.with_titles(titles["media"], titles["relations"])


def serve(rec, users: np.ndarray, entries: pd.DataFrame, at: int, since: int, out: Path,
          revision: str, day: dt.date, k: int, titles: dict | None = None) -> dict:
    """Each user's top ``k`` as of ``at`` (the end of ``day``), from their list as the
    store knew it then (``known_at``, with ``since``: features, history and seen titles rebuilt by
    ``Recommender.with_lists``), leaving out everything on it (``list_before``), among
    the model's titles and the store's new ones (``titles``, ``with_titles``); users
    with no list at all get the popularity list. Written atomically to ``served_path``,
    and the lists read to ``lists_path`` and the titles added to ``titles_path`` (first:
    a served list is never without them)."""
    listed = list_before(entries, at)
    lists = known_at(listed, at, since)[[*LIST_COLUMNS, *LIST_TIMES]].reset_index(drop=True)
    current = with_titles(rec, titles).with_lists(lists)
    own = lists_of(listed)
    known = current.known(users)
    frames = []
    if known.any():
        ids = users[known]
        exclude = [own.get(u, np.zeros(0, np.int64)) for u in ids]
        frames.append(current.recommend(ids, k=k, exclude=exclude).assign(source="model"))
    if (~known).any():
        frames.append(rec.popular(users[~known], k).assign(source="popularity"))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    path = served_path(out, revision, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.file(lists_path(out, revision, day)) as tmp:
        lists.to_parquet(tmp, index=False)
    with atomic.file(titles_path(out, revision, day)) as tmp:
        pd.DataFrame({"media_id": current.new_titles}).to_parquet(tmp, index=False)
    with atomic.file(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return {"path": str(path), "users": int(len(users)), "rows": int(len(frame)),
            "model_users": int(known.sum()), "new_titles": int(len(current.new_titles)),
            "new_title_rows": int(frame["anime_id"].isin(current.new_titles).sum()) if len(frame) else 0}


def predict(rec, outcomes: pd.DataFrame, entries: pd.DataFrame, start: int,
            served: pd.DataFrame | None, lists: pd.DataFrame | None = None,
            titles: dict | None = None) -> tuple[pd.DataFrame, float]:
    """The prediction rows of ``outcomes`` (same order) and the global mean score.
    ``lists``: the users' lists before the day (the day before's ``lists_path``), which
    the score head reads; None: the lists the model was trained on. ``titles``: the
    titles the day before's serving added (``titles_served``, ``with_titles``); a title
    outside those and the model's is one the model lacks."""
    user_mean, title_mean, global_mean = score_baselines(entries, start)
    predicted = np.full(len(outcomes), np.nan)
    # The score head reads each user's list as the day before's served lists did.
    current = with_titles(rec, titles)
    current = current if lists is None else current.with_lists(lists)
    ok = current.known(outcomes["user_id"].to_numpy()) & np.isin(
        outcomes["media_id"].to_numpy(), current.anime["media_id"].to_numpy())
    if rec.scorer is not None and ok.any():
        predicted[ok] = current.predict_scores(outcomes["user_id"].to_numpy()[ok],
                                               outcomes["media_id"].to_numpy()[ok])
    served_rank = np.full(len(outcomes), np.nan)
    if served is not None and len(served):
        lookup = served.set_index(["user_id", "anime_id"])["rank"]
        keys = pd.MultiIndex.from_arrays([outcomes["user_id"], outcomes["media_id"]])
        served_rank = lookup.reindex(keys).to_numpy(float)
    before = list_before(entries, start)
    own = lists_of(before)
    popularity_rank = ranks_without_own(recent_popularity(entries, start), own, outcomes)
    rows = pd.DataFrame({
        "user_id": outcomes["user_id"].to_numpy(), "media_id": outcomes["media_id"].to_numpy(),
        "predicted_score": predicted, "served_rank": served_rank,
        "popularity_rank": popularity_rank,
        "user_mean": user_mean.reindex(outcomes["user_id"]).to_numpy(),
        "title_mean": title_mean.reindex(outcomes["media_id"]).to_numpy()})
    for column in ("served_rank", "popularity_rank"):
        rows[column] = rows[column].astype("Int64")
    return rows, global_mean


# A store the loop can judge the model on holds at least this share of the model's
# training entries of the users it tracks (another world's store holds next to none).
MIN_STORE_OVERLAP = 0.5


def check_store(db: str | os.PathLike, rec, tracked: np.ndarray) -> None:
    """Refuses a store the daily loop cannot judge ``rec`` on, before anything is
    written: a store that does not exist (the loop would create an empty one and report
    nothing wrong), one that holds none of the tracked users' lists, or one of another
    source, where fewer than ``MIN_STORE_OVERLAP`` of the model's training entries of
    those users are found.

    Raises:
      InputError: naming the store, what is wrong and how to fix it.
    """
    path = Path(db)
    if not path.is_file():
        raise InputError(f"--db {db}: no such store. The daily loop refreshes and judges the "
                         "model on the store of its users' lists: pass the store the model "
                         "was trained on (or a copy), or crawl one first (`python "
                         f"data_query.py --db {db}`).")
    conn = store.connect(path, readonly=True)
    try:
        stored = store.read_entries(conn)[["user_id", "media_id"]]
    finally:
        conn.close()
    stored = stored[stored["user_id"].isin(tracked)]
    if stored.empty:
        raise InputError(f"--db {db} holds no list of the {len(tracked):,} tracked users "
                         f"(e.g. user {int(tracked[0]) if len(tracked) else '-'}): it is not "
                         "this model's store. Pass the store the model was trained on, or "
                         "--users with ids the store holds.")
    # The model's training lists (seen.parquet: every entry it was trained with).
    pairs = pd.read_parquet(rec.directory / "seen.parquet", columns=["user_id", "media_id"])
    pairs = pairs[pairs["user_id"].isin(tracked)]
    if len(pairs):
        found = pairs.merge(stored.drop_duplicates(), on=["user_id", "media_id"]).shape[0]
        share = found / len(pairs)
        if share < MIN_STORE_OVERLAP:
            raise InputError(
                f"--db {db} holds {share:.0%} of the model's training entries of its users "
                f"(at least {MIN_STORE_OVERLAP:.0%} expected): it is the store of another "
                "source or world than the model's. Pass the store the model was trained on "
                "(or a copy), or a model trained on this store.")


def run(date: str | dt.date | None = None, *, db: str | os.PathLike = "data/anirank.db",
        model: str = "data/model", revision: str | None = None, endpoint: str | None = None,
        users: str | None = None, out: str | os.PathLike = "data/daily", k: int = DEFAULT_K,
        refresh: bool = True, rate: float | None = None, mae_threshold: float | None = None,
        alert_days: int = 3, progress: bool = True) -> dict:
    """Stage function behind ``python -m pipelines daily`` (see the module docstring).
    ``mae_threshold`` / ``alert_days``: when the monitoring report asks for a retrain
    (``monitoring.Thresholds``; default MAE: 1.25 x the model's test MAE). Returns the
    day's summary: metrics, counts, paths, seconds per step."""
    from serving import Recommender  # serving loads TensorFlow: only when a day runs
    from serving.batch import read_titles, revision_of

    day = parse_day(date)
    start, end = day_bounds(day)
    out = Path(out)
    for name, value in (("k", k), ("alert_days", alert_days)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer. "
                             f"Received: {value!r}.")
    if mae_threshold is not None and not (math.isfinite(mae_threshold) and mae_threshold > 0):
        raise InputError(f"--mae-threshold must be a positive number of score points. "
                         f"Received: {mae_threshold!r}.")
    seconds, tick = {}, time.perf_counter()
    rec = Recommender.from_pretrained(model, revision)
    rev = revision_of(rec, revision)
    tracked = tracked_users(rec, users)
    check_store(db, rec, tracked)
    seconds["load"] = time.perf_counter() - tick
    conn = store.connect(db)
    try:
        summary = {"day": day.isoformat(), "revision": rev, "tracked_users": int(len(tracked))}
        since = store.get_cursor(conn, SINCE)
        yesterday = served_path(out, rev, day - dt.timedelta(days=1))
        # The first day (or a new revision) starts from the store as it stands before
        # this refresh: read once, only then.
        before = (_tracked(store.read_entries(conn), tracked)
                  if since is None or not yesterday.exists() else None)
        if since is None:
            newest = before["updated_at"].max()
            since = str(int(newest) if pd.notna(newest) else start - 1)
            with store.transaction(conn):
                store.set_cursor(conn, SINCE, since)
        since = int(since)
        # The titles the store knew before this refresh: those the day before was served
        # from (a refresh at each day's end), and its predictions' catalog.
        titles_before = read_titles(conn)
        if not yesterday.exists():
            # The list D-1 would have served.
            tick = time.perf_counter()
            summary["served_yesterday"] = serve(rec, tracked, before, start, since, out, rev,
                                                day - dt.timedelta(days=1), k, titles_before)
            seconds["serve_yesterday"] = time.perf_counter() - tick
        if refresh:
            if endpoint is None:
                raise InputError("The daily run refreshes the tracked users' lists from "
                                 "AniList: pass --endpoint URL (e.g. "
                                 "https://graphql.anilist.co), or --no-refresh.")
            import data_query

            tick = time.perf_counter()
            client = data_query.AniListClient(
                endpoint, **({} if rate is None else {"rate": rate}))
            result = data_query.refresh(conn, client, users=tracked, progress=progress)
            summary["refresh"] = {"lists_refetched": int(result.fetched),
                                  "entries": int(result.entries or 0),
                                  "requests": int(client.stats.requests),
                                  "failed": int(sum(result.failed.values())),
                                  "stopped": result.stopped}
            seconds["refresh"] = time.perf_counter() - tick
        tick = time.perf_counter()
        everyone = store.read_entries(conn)
        entries = _tracked(everyone, tracked)
        outcomes = select_outcomes(entries, start, end, since)
        served = pd.read_parquet(yesterday)
        listed = lists_path(out, rev, day - dt.timedelta(days=1))
        predictions, global_mean = predict(rec, outcomes, everyone, start, served,
                                           pd.read_parquet(listed) if listed.exists() else None,
                                           titles_served(titles_before, titles_path(
                                               out, rev, day - dt.timedelta(days=1))))
        metrics = day_metrics(outcomes, predictions, global_mean, served=True)
        media = store.read_media(conn)
        metrics["drift"] = monitoring.drift(rec, outcomes, entries, start,
                                            media.set_index("media_id")["format"])
        store.replace_day(conn, rev, day.isoformat(), outcomes, predictions, metrics)
        seconds["outcomes_and_predictions"] = time.perf_counter() - tick
        tick = time.perf_counter()
        summary["served"] = serve(rec, tracked, entries, end, since, out, rev, day, k,
                                  read_titles(conn))
        seconds["serve"] = time.perf_counter() - tick
        tick = time.perf_counter()
        summary["monitoring"] = monitoring.write(
            store.read_daily(conn, "metrics", rev), out / "monitoring", rev,
            monitoring.Thresholds.for_model(rec, mae=mae_threshold, days=alert_days))
        seconds["monitoring"] = time.perf_counter() - tick
    finally:
        conn.close()
    summary["metrics"] = metrics
    summary["seconds"] = {k2: round(v, 2) for k2, v in seconds.items()}
    return summary


def _tracked(entries: pd.DataFrame, tracked: np.ndarray) -> pd.DataFrame:
    """The tracked users' rows of the store's entries."""
    return entries[entries["user_id"].isin(tracked)].reset_index(drop=True)


def describe(summary: dict) -> str:
    """The day's summary as the CLI prints it."""
    m = summary["metrics"]
    s, h = m["scores"], m["hits"]
    lines = [f"day {summary['day']} (model {summary['revision']}): {m['outcomes']} outcomes "
             f"from {m['users']} of {summary['tracked_users']} tracked users "
             f"({m['completed']} completed, {m['dropped']} dropped, {m['scored']} scored, "
             f"{m['new_titles']} new titles)"]
    if "refresh" in summary:
        r = summary["refresh"]
        lines.append(f"refresh: {r['lists_refetched']} lists re-fetched, {r['requests']} "
                     f"requests, {r['failed']} failed")
    from pipelines.formatting import num

    lines.append(f"scores ({m['scored_known']} scored on known titles; "
                 f"{num(m['unknown_title_share'], '.1%')} on titles the model lacks): "
                 + ", ".join(f"{name} MAE {num(v['mae'], '.2f')} RMSE {num(v['rmse'], '.2f')}"
                             for name, v in s.items()))
    lines.append(f"new titles in yesterday's lists: model hit@10 {num(h['model']['hit@10'], '.3f')} "
                 f"@100 {num(h['model']['hit@100'], '.3f')}; recent popularity hit@10 "
                 f"{num(h['recent_popularity']['hit@10'], '.3f')} "
                 f"@100 {num(h['recent_popularity']['hit@100'], '.3f')}")
    served = summary["served"]
    lines.append(f"served {served['rows']} rows for tomorrow"
                 + (f" ({served['new_title_rows']} of them titles first listed after training, "
                    "placed by the candidate tower)" if served.get("new_title_rows") else "")
                 + f": {served['path']}")
    lines.append(f"monitoring report: {summary['monitoring']['report']}")
    for line in summary["monitoring"].get("alerts", []):
        lines.append(line)
    return "\n".join(lines)
