"""Retraining from the daily loop: when the served model's quality has fallen, train a
candidate on the refreshed store and put it in service only if it is no worse.

    python -m pipelines daily ... --retrain-if-degraded

``run`` (called by the CLI after a day whose monitoring says the MAE stayed above its
threshold, ``monitoring.degraded``):

1. **Features** of the refreshed store, with the serving model's own feature config
   (``config.json``) and its periods moved forward by the days the store gained past
   the served model's newest entry (the same validation and test lengths), so the
   candidate learns from what the served model never saw. Nothing newer: nothing to
   retrain on, and it says so.
2. **Training** with the serving model's own retrieval, ranking and score-head configs
   (no ablations, no loss comparison: those are for a release, not a refresh), then its
   evaluation report; into ``<out>/retrain/<D>/model``, each stage atomic. Then the
   walk-forward refit of its stage one through the end of its validation period
   (``walk_forward.run``, into ``<out>/retrain/<D>/walk_forward``), as ``run`` does.
3. **The gate**, on the walk-forward test period (the newest horizon of the store), on
   the entries after the serving model's data (``config.json["trained_through"]``), so
   neither model learned from what it is judged on: both serve every user from the
   same lists (everything before those entries, ``Recommender.with_lists``), scored by
   NDCG@10 of the top 10 (leaving out what is on the lists) against what the users then
   watched; and both predict the scores given there (pairs both models know), scored
   by per-user MAE. The candidate is *no worse* unless a paired bootstrap CI (95%,
   users resampled) says it is worse on either: a difference inside the noise does not
   block a refresh, a real loss does. Where the store gained less than a horizon since
   the serving model's data, the walk-forward model has learned from fewer days than
   the serving one, and the gate leans towards keeping the serving model.
4. **Release**, only when no worse: the candidate refit on every entry
   (``walk_forward.release``: it knows today; ``trained_through`` is the store's newest
   entry), then a local model directory is replaced in one atomic swap (the one it
   replaces is kept as ``<out>/retrain/<D>/previous_model``); a Hub model is published
   as a new commit of ``publish_repo`` (default: the repo it was loaded from), whose id
   the next day's ``--revision`` pins.

Everything is written to ``<out>/retrain/<D>/decision.json`` (the comparison, the
decision and why), also when the candidate is rejected.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import artifact, atomic, evaluate, features, protocol, store, walk_forward
from pipelines.config import FeatureConfig, RankingConfig, RetrievalConfig, ScoreConfig
from pipelines.errors import InputError
from pipelines.features import LIST_COLUMNS, LIST_TIMES
from pipelines.tables import FeatureTables
from ranking.metrics import ndcg_at_k

DAY = 86_400
GATE_K = 10


def feature_config(served: dict, newest: int) -> FeatureConfig | None:
    """The serving model's feature config (``config.json``) with its periods moved
    forward: the cutoff by the time from the served model's newest entry to ``newest``
    (unix seconds), in days rounded up; the period lengths stay. None when the store has
    nothing newer (a retrain would see the same data)."""
    # A released model (refit on every entry) keeps its selection tables' split: move that.
    schema = served.get("selection") or served["feature_schema"]
    config = FeatureConfig.from_dict(schema["config"])
    split = schema.get("split") or {}
    if "as_of" not in split:  # random splits have no periods to move: take it as it is
        return config
    as_of, horizon = int(split["as_of"]), int(round(split["horizon_days"] * DAY))
    # Feature tables from before "last_entry" was saved: the end of the test period.
    last = int(split.get("last_entry", as_of + 2 * horizon - 1))
    if newest <= last:
        return None
    days = -(-(newest - last) // DAY)
    moved = pd.Timestamp(as_of + days * DAY, unit="s").strftime("%Y-%m-%d")
    data = config.to_dict() | {"as_of": moved, "horizon_days": horizon / DAY}
    return FeatureConfig.from_dict(data)


def newest_time(db: str | os.PathLike, columns) -> int:
    """The newest entry time the store holds, read as the feature stage reads times
    (the first non-NULL of ``columns``)."""
    conn = store.connect(db, readonly=True)
    try:
        newest = store.newest_entry_time(conn, columns)
    finally:
        conn.close()
    if newest is None:
        raise InputError(f"{db} has no entry times: a retrain from the daily loop moves "
                         "the as-of cutoff forward and needs them.")
    return int(newest)


def ndcg_per_user(top: pd.DataFrame, users: np.ndarray, relevant: dict, k: int = GATE_K) -> np.ndarray:
    """Binary NDCG@k of each user's served list (``top``: user_id, rank, anime_id)
    against the set of titles ``relevant[user]``; NaN for a user with none."""
    hit = np.zeros((len(users), k), bool)
    position = {u: i for i, u in enumerate(users)}
    for row in top.itertuples(index=False):
        if row.rank <= k and row.anime_id in relevant.get(row.user_id, ()):
            hit[position[row.user_id], row.rank - 1] = True
    n_relevant = np.array([len(relevant.get(u, ())) for u in users])
    return ndcg_at_k(hit, n_relevant, k)


SPLITS = ("train", "validation", "test")


def served_through(served: dict) -> int | None:
    """The newest entry time (unix seconds) the serving model learned from:
    ``config.json["trained_through"]``; None where the model records none (a source
    without entry times, or a model saved before it was recorded)."""
    through = served.get("trained_through")
    return None if through is None else int(pd.Timestamp(through).timestamp())


def compare(serving, candidate, tables: FeatureTables, k: int = GATE_K, draws: int = 1000,
            period: str = "validation", after: int | None = None,
            entries: pd.DataFrame | None = None) -> dict:
    """Both models on ``tables``' ``period``, counting only the entries after ``after``
    (unix seconds; the serving model's ``trained_through``, so neither model learned
    from what they are judged on): NDCG@k of what each serves and the per-user MAE of
    their predicted scores, per user, with the paired bootstrap of candidate minus
    serving model. Both serve every user from the same lists (``Recommender.
    with_lists``) and leave out the same titles: with ``entries`` (the store's, and
    ``after``) each list as the store knew it at ``after`` and every title on it then
    (``daily.known_at``, ``daily.list_before``: titles outside the tables' catalog too,
    which the serving model may know), else everything before the period and before
    ``after`` in the tables. A title already on the list is not a target. ``users`` is
    0 where nothing is left to judge."""
    inter = tables.interactions
    earlier = inter["split"].isin(SPLITS[:SPLITS.index(period)]).to_numpy()
    judged = (inter["split"] == period).to_numpy()
    if after is not None:
        late = inter["time"].to_numpy("float64", na_value=np.nan) > after
        earlier |= judged & ~late
        judged &= late
    judged = inter[judged]
    if entries is not None and after is not None:
        from pipelines import daily

        listed = daily.list_before(entries, after)
        lists = daily.known_at(listed, after)[[*LIST_COLUMNS, *LIST_TIMES]]
    else:
        listed = inter[earlier]
        lists = listed.rename(columns={"time": "updated_at"})[[*LIST_COLUMNS, "updated_at"]]
    own = listed.groupby("user_id")["media_id"].agg(set).to_dict()
    serving, candidate = serving.with_lists(lists), candidate.with_lists(lists)
    watched = judged[judged["is_interaction"]]
    watched = watched[[m not in own.get(u, ()) for u, m in zip(watched["user_id"],
                                                               watched["media_id"])]]
    users = np.unique(watched["user_id"].to_numpy())
    users = users[serving.known(users) & candidate.known(users)]
    out = {"period": period, "after": after, "users": int(len(users)), "k": k}
    if not len(users):
        return out
    exclude = [sorted(own.get(u, ())) for u in users]
    relevant = watched.groupby("user_id")["media_id"].apply(set).to_dict()
    # exclude_seen=False: a model directory's seen lists hold each user's whole list as
    # crawled, later periods included; both models leave out the same titles instead.
    ndcg = {name: ndcg_per_user(rec.recommend(users, k=k, exclude_seen=False, exclude=exclude),
                                users, relevant, k)
            for name, rec in (("serving", serving), ("candidate", candidate))}
    out[f"ndcg@{k}"] = {name: protocol.mean(v) for name, v in ndcg.items()}
    out[f"ndcg@{k} difference"] = protocol.paired_bootstrap(ndcg["candidate"], ndcg["serving"],
                                                           draws=draws)
    if serving.scorer is None or candidate.scorer is None:
        return out
    scored = judged[judged["score"] > 0]
    both = (serving.known(scored["user_id"]) & candidate.known(scored["user_id"])
            & scored["media_id"].isin(serving.anime["media_id"])
            & scored["media_id"].isin(candidate.anime["media_id"]))
    scored = scored[np.asarray(both)]
    if not len(scored):
        return out
    errors = {name: pd.Series(np.abs(rec.predict_scores(scored["user_id"], scored["media_id"])
                                     - scored["score"].to_numpy()), index=scored["user_id"])
              for name, rec in (("serving", serving), ("candidate", candidate))}
    mae = {name: e.groupby(level=0).mean() for name, e in errors.items()}
    out["scored_pairs"] = int(len(scored))
    out["mae"] = {name: float(e.mean()) for name, e in errors.items()}
    out["mae per user difference"] = protocol.paired_bootstrap(
        mae["candidate"].to_numpy(), mae["serving"].to_numpy(), draws=draws)
    return out


def decide(comparison: dict) -> dict:
    """``{"release": bool, "reason": str}``: release unless the candidate is worse on
    the gate period beyond the noise (NDCG@k lower, or per-user MAE higher, with a
    paired CI that excludes zero); nothing to judge on, no release."""
    k = comparison["k"]
    if not comparison["users"]:
        return {"release": False, "reason": "no user of the gate period has an entry after "
                                            "the serving model's data: nothing to judge the "
                                            "candidate on yet"}
    worse = []
    d = comparison[f"ndcg@{k} difference"]
    if d["significant"] and d["difference"] < 0:
        worse.append(f"NDCG@{k} {d['difference']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]")
    m = comparison.get("mae per user difference")
    if m and m["significant"] and m["difference"] > 0:
        worse.append(f"MAE {m['difference']:+.2f} [{m['ci'][0]:+.2f}, {m['ci'][1]:+.2f}]")
    if worse:
        return {"release": False, "reason": "the candidate is worse on the gate period: "
                                            + "; ".join(worse)}
    parts = [f"NDCG@{k} {d['difference']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]"
             if d["difference"] is not None else f"NDCG@{k}: too few users to compare"]
    if m:
        parts.append(f"MAE {m['difference']:+.2f} [{m['ci'][0]:+.2f}, {m['ci'][1]:+.2f}]")
    return {"release": True, "reason": "no worse on the gate period: " + "; ".join(parts)}


def _train(features_dir: Path, model_dir: Path, served: dict, progress: bool) -> None:
    from pipelines import train_ranking, train_retrieval, train_scores

    train_retrieval.run(features_dir, model_dir, RetrievalConfig.from_dict(served["retrieval"]),
                        ablation=False, progress=progress)
    if "ranking" in served:
        train_ranking.run(features_dir, model_dir, RankingConfig.from_dict(served["ranking"]),
                          compare_losses=False, with_ablations=False, progress=progress)
    if "scores" in served:
        train_scores.run(features_dir, model_dir, ScoreConfig.from_dict(served["scores"]),
                         progress=progress)


def release(candidate: Path, model: str, work: Path, publish_repo: str | None = None,
            endpoint: str | None = None) -> dict:
    """Puts the candidate in service: replaces a local model directory (keeping the one
    it replaces as ``work/previous_model``) or publishes it as a new commit of a Hub repo
    (``publish_repo``, default ``model``; ``endpoint``: the Hub's, default HF_ENDPOINT's)."""
    local = Path(model).is_dir()
    if publish_repo is None and not local:
        publish_repo = model
    if publish_repo is not None:
        from pipelines import publish

        result = publish.run(candidate, publish_repo, endpoint=endpoint)
        return {"published": result["repo"], "revision": result["commit"], "url": result["url"]}
    previous = work / "previous_model"
    shutil.rmtree(previous, ignore_errors=True)
    shutil.copytree(model, previous)
    with atomic.directory(model) as tmp:
        shutil.copytree(candidate, tmp, dirs_exist_ok=True)
    return {"replaced": str(model), "previous": str(previous)}


def run(db: str | os.PathLike, model: str, day: str, out: str | os.PathLike, *,
        revision: str | None = None, publish_repo: str | None = None,
        progress: bool = True) -> dict:
    """Features, training, the gate and (when no worse) the release, for the daily
    loop's day ``day`` (see the module docstring). Returns what ``decision.json`` holds."""
    from serving import Recommender

    tick = time.perf_counter()
    work = Path(out) / "retrain" / day
    serving = Recommender.from_pretrained(model, revision)
    served = artifact.read_json(serving.directory, artifact.CONFIG)
    columns = FeatureConfig.from_dict(served["feature_schema"]["config"]).time_columns
    config = feature_config(served, newest_time(db, columns))
    if config is None:
        result = {"day": day, "release": False,
                  "reason": "the store holds nothing newer than the serving model's data: "
                            "a retrain would see the same data"}
    else:
        features_dir, model_dir = work / "features", work / "model"
        walk = work / walk_forward.WORK
        features.run(db, features_dir, config, progress=progress)
        # The candidate appears whole or not at all: a failed stage leaves no model/.
        with atomic.directory(model_dir) as tmp:
            _train(features_dir, tmp, served, progress)
        evaluate.run(model_dir, features_dir, progress=progress)  # its report, for the card
        walk_forward.run(db, features_dir, model_dir, walk, progress=progress)
        gate = Recommender.from_pretrained(str(walk / "model"))
        conn = store.connect(db, readonly=True)
        try:
            entries = store.read_entries(conn)
        finally:
            conn.close()
        comparison = compare(serving, gate, FeatureTables.load(walk / "features"),
                             period="test", after=served_through(served), entries=entries)
        result = {"day": day, "as_of": config.as_of, "comparison": comparison,
                  **decide(comparison)}
        if result["release"]:
            refit = walk_forward.release(db, features_dir, model_dir, walk, progress=progress)
            result["trained_through"] = refit["trained_through"]
            result.update(release(model_dir, model, work, publish_repo))
    result["seconds"] = round(time.perf_counter() - tick, 1)
    work.mkdir(parents=True, exist_ok=True)
    atomic.write_text(work / "decision.json", json.dumps(result, indent=2))
    result["path"] = str(work / "decision.json")
    return result


def describe(result: dict) -> str:
    """The retrain's outcome as the CLI prints it."""
    lines = [f"retrain ({result['seconds']} s): "
             + ("released" if result["release"] else "not released") + f": {result['reason']}"]
    c = result.get("comparison")
    if c and c["users"]:
        k = c["k"]
        lines.append(f"gate period ({c['users']} users): NDCG@{k} serving "
                     f"{c[f'ndcg@{k}']['serving']:.4f}, candidate {c[f'ndcg@{k}']['candidate']:.4f}"
                     + (f"; MAE serving {c['mae']['serving']:.2f}, candidate "
                        f"{c['mae']['candidate']:.2f}" if "mae" in c else ""))
    if "trained_through" in result:
        lines.append(f"released model refit on every entry through {result['trained_through']}")
    if "revision" in result:
        lines.append(f"published {result['published']} at {result['revision']}: pin it with "
                     f"--revision {result['revision']}")
    if "replaced" in result:
        lines.append(f"{result['replaced']} now holds the new model (the previous one: "
                     f"{result['previous']})")
    lines.append(f"decision: {result['path']}")
    return "\n".join(lines)
