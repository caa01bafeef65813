"""A model served past its training: the titles' counted statistics frozen at training
against counted again from the current lists, with paired bootstrap CIs over users. It
decided that serving keeps the training counts (docs/benchmarks.md, section 14).

    .venv/bin/python bench/fresh_activity.py --model data/walk_forward/selection \\
        --features data/walk_forward/features

The selection model (``make run`` keeps it: stage one fitted before T, its ranker on
the lists at T) is served at the walk-forward cutoff T+h, one horizon after it was
trained, as the daily loop serves a release until the next retrain: every user from
their list as of T+h (``with_lists``, the walk-forward tables' training entries), the
titles first listed in [T, T+h) added through the candidate tower (``with_titles``).
Orders of the same users' top 100, leaving out everything on their list at T+h:

- **frozen**: every title statistic as counted at T (what serving does);
- **recent**: the titles' entries in the last 7 / 30 days counted again as of T+h by
  the feature stage's own ``recent_counts``, for the titles the model knows, or for
  every title (the new ones then show activity with no popularity, which the
  cold-start dropout never showed the towers);
- **all counts**: every counted statistic (popularity, interactions, mean score and
  the recent counts) counted again as of T+h, the feature stage's ``_TitleCounts``.

Each refreshed order re-embeds every title with the candidate tower, rebuilds the
index and re-encodes the titles for the ranker and the score head. Per user with an
entry added in the test period [T+h, T+2h) on a title of the catalog: NDCG@10 and
Recall@100 of those entries. The walk-forward model (refit on every entry before T+h)
is printed for reference: what a retrain serves.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import _env  # noqa: E402,F401

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import protocol, store  # noqa: E402
from pipelines.config import RECENT_FEATURES, FeatureConfig  # noqa: E402
from pipelines.features import _TitleCounts, list_entries, recent_counts  # noqa: E402
from pipelines.formatting import interval  # noqa: E402
from pipelines.tables import FeatureTables  # noqa: E402
from ranking.metrics import ndcg_at_k  # noqa: E402
from serving import Recommender  # noqa: E402
from towers.features import feature_specs, raw_features  # noqa: E402
from towers.index import CandidateIndex, IndexConfig  # noqa: E402

K = 100


def measure(rec: Recommender, users: np.ndarray, relevant: dict, listed: dict) -> dict:
    """Per user (``users``' order): NDCG@10 and Recall@100 of their relevant titles,
    leaving out what was on their list at T+h (``listed``; the refit model's own seen
    titles hold the test period too)."""
    top = rec.recommend(users, k=K, candidates=K, exclude_seen=False,
                        exclude=[listed[u] for u in users])
    ranked = top.sort_values(["user_id", "rank"]).groupby("user_id", sort=False)["anime_id"]
    ranked = ranked.agg(list).to_dict()
    out = {"ndcg@10": [], "recall@100": []}
    for user in users:
        ids, mine = np.array(ranked.get(user, []), np.int64), relevant[user]
        hit = np.isin(ids, list(mine))
        out["ndcg@10"].append(ndcg_at_k(hit[None, :10], np.array([len(mine)]), 10)[0])
        out["recall@100"].append(hit.sum() / len(mine))
    return {k: np.array(v, float) for k, v in out.items()}


def counted(rec: Recommender, lists: pd.DataFrame, now: int, statistics: str,
            titles: str) -> pd.DataFrame:
    """``rec.anime`` with its ``statistics`` ("recent" or "all") counted from ``lists``
    as of ``now``, for the titles the model was trained on ("known": the titles
    ``with_titles`` added keep the counts of a title no one has listed) or "every"
    title."""
    entries = list_entries(lists, FeatureConfig.from_dict(rec.schema["config"]))
    if titles == "known":
        entries = entries[~entries["media_id"].isin(rec.new_titles)]
    if statistics == "recent":
        rows = pd.Index(rec.anime["media_id"]).get_indexer(entries["media_id"])
        when = entries["time"].to_numpy("float64", na_value=np.nan)
        counts = recent_counts(rows, when, len(rec.anime), now)
        return rec.anime.assign(**{n: c.astype("float64") for n, c in counts.items()})
    counts = _TitleCounts(rec.anime["media_id"], now)
    counts.add(entries.assign(random_split=False, is_favourite=False))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts.scored > 0, counts.score_sum / counts.scored, np.nan)
    return rec.anime.assign(popularity=counts.entries.astype("float64"),
                            train_count=counts.interactions.astype("float64"),
                            average_score=mean,
                            **{n: counts.recent[n].astype("float64") for n in RECENT_FEATURES})


def serving_titles(rec: Recommender, anime: pd.DataFrame) -> Recommender:
    """``rec`` reading ``anime``'s title features (same titles, same order): every title
    re-embedded by the candidate tower, the index rebuilt, the titles re-encoded for the
    ranker and the score head, as ``Recommender.__init__`` and ``with_titles`` do."""
    fresh = copy.copy(rec)
    fresh.anime = anime
    fresh._anime_raw = raw_features(anime, feature_specs(rec.schema, "anime"), rec.widths)
    fresh.index = CandidateIndex.build(rec.retrieval.embed_titles(anime),
                                       anime["media_id"].to_numpy(),
                                       IndexConfig(**rec.config["index"]))
    fresh._popularity = anime["train_count"].to_numpy(dtype=float)
    if rec._encoded is not None:
        signatures = rec._saved["ranker"].signatures
        fresh._encoded = tf.constant(fresh._encode_catalog(signatures["encode_anime"]))
        fresh._score_rows, fresh._score_inputs, fresh._score_signals = fresh._scorer(
            signatures["score_encoded"])
    if rec._titles_for_scores is not None:
        fresh._titles_for_scores = fresh._encode_catalog(
            rec._saved["scorer"].signatures["encode_titles"])
    return fresh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/walk_forward/selection",
                        help="a model trained before the walk-forward cutoff (default: %(default)s)")
    parser.add_argument("--features", default="data/walk_forward/features",
                        help="the walk-forward feature tables (default: %(default)s)")
    parser.add_argument("--refit", default="data/walk_forward/model",
                        help="the walk-forward model, for reference (default: %(default)s)")
    args = parser.parse_args()
    tables = FeatureTables.load(args.features)
    split = tables.schema["split"]
    if split.get("protocol") != "as_of":
        sys.exit(f"error: {args.features} was not split by time; recent activity needs one.")
    now = int(split["as_of"])
    frame = tables.interactions
    lists = frame[frame["split"] == "train"].rename(columns={"time": "updated_at"})
    lists = lists[["user_id", "media_id", "status", "score", "updated_at"]]
    rec = Recommender.from_pretrained(args.model)
    conn = store.connect(tables.schema["source_db"], readonly=True)
    try:
        media, relations = store.read_media(conn), store.read_relations(conn)
    finally:
        conn.close()
    rec = rec.with_titles(media[media["media_id"].isin(tables.anime["media_id"])], relations)
    orders = {"frozen": rec}
    for statistics in ("recent", "all counts"):
        for titles in ("known", "every"):
            anime = counted(rec, lists, now, statistics.split()[0], titles)
            orders[f"{statistics}, {titles} title"] = serving_titles(rec, anime)
    orders = {name: r.with_lists(lists) for name, r in orders.items()}
    test = frame[(frame["split"] == "test") & frame["is_interaction"] & ~frame["listed_before"]]
    relevant = test.groupby("user_id")["media_id"].agg(set).to_dict()
    users = np.array(sorted(u for u in relevant if orders["frozen"].known([u])[0]), np.int64)
    listed = lists.groupby("user_id")["media_id"].agg(list).to_dict()
    got = {name: measure(r, users, relevant, listed) for name, r in orders.items()}
    refit = Recommender.from_pretrained(args.refit)
    got["refit (reference)"] = measure(refit, users, relevant, listed)
    print(f"model {args.model} (trained through {rec.config.get('trained_through')}), served "
          f"at {split['periods']['test'][0]} for the test period {split['periods']['test']}: "
          f"{len(users):,} users, {len(rec.new_titles)} titles first listed since training")
    for name, m in got.items():
        print(f"{name:>25}: NDCG@10 {m['ndcg@10'].mean():.4f}, Recall@100 "
              f"{m['recall@100'].mean():.4f}")
    for name in got:
        if name != "frozen":
            for metric in ("ndcg@10", "recall@100"):
                d = protocol.paired_bootstrap(got[name][metric], got["frozen"][metric])
                print(f"{name} - frozen {metric}: {interval(d)}")


if __name__ == "__main__":
    main()
