"""What the served order does with titles first listed after training: the walk-forward
test's users served by the walk-forward model with the test period's new titles added
through the candidate tower (``Recommender.with_titles``), the served order (the ranker,
where validation chose it) against the two-tower's own order of the same candidates.

    .venv/bin/python bench/new_titles_served.py --model data/walk_forward/model \\
        --features data/walk_forward/features

Each user with a test interaction gets a top 10 from 100 candidates in each order,
leaving out what they had before the test period (``protocol.seen_before``, as the
report does). Per user: NDCG@10 of all their test
interactions, known titles and new ones; for users with a new-title interaction, hit@10
of one of them; and the share of the top 10 that is new titles. Paired bootstrap CIs
(users) of the served order minus the two-tower's order.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import _env  # noqa: E402,F401

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipelines import protocol, store  # noqa: E402
from pipelines.formatting import interval  # noqa: E402
from pipelines.tables import FeatureTables  # noqa: E402
from ranking.metrics import ndcg_at_k  # noqa: E402
from serving import Recommender  # noqa: E402

K, CANDIDATES = 10, 100


def measure(rec: Recommender, users: np.ndarray, relevant: dict, new_ids: set,
            before: dict) -> dict:
    # The model directory's seen titles hold the test period too (its tables' every
    # split): leave out what the protocol leaves out instead, the entries before it.
    top = rec.recommend(users, k=K, candidates=CANDIDATES, exclude_seen=False,
                        exclude=[before.get(u, []) for u in users])
    per_user = {"ndcg@10": [], "new_hit@10": [], "new_share": []}
    for user, rows in top.groupby("user_id", sort=False):
        ids = rows.sort_values("rank")["anime_id"].to_numpy()
        mine = relevant[user]
        hit = np.isin(ids, list(mine))[None, :]
        per_user["ndcg@10"].append(ndcg_at_k(hit, np.array([len(mine)]), K)[0])
        mine_new = mine & new_ids
        per_user["new_hit@10"].append(float(bool(set(ids) & mine_new)) if mine_new else np.nan)
        per_user["new_share"].append(float(np.isin(ids, list(new_ids)).mean()))
    return {k: np.array(v) for k, v in per_user.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/walk_forward/model")
    parser.add_argument("--features", default="data/walk_forward/features",
                        help="the walk-forward feature tables (their new-title slice)")
    args = parser.parse_args()
    tables = FeatureTables.load(args.features)
    if tables.new_entries is None:
        sys.exit(f"error: {args.features} has no new-title slice; rebuild it.")
    conn = store.connect(tables.schema["source_db"], readonly=True)
    try:
        media, relations = store.read_media(conn), store.read_relations(conn)
    finally:
        conn.close()
    entries = tables.new_entries
    entries = entries[(entries["split"] == "test") & entries["is_interaction"]
                      & (entries["user_row"] >= 0)]
    new_ids = set(entries["media_id"].tolist())
    base = Recommender.from_pretrained(args.model)
    orders = {"served": base, "two-tower": Recommender.from_pretrained(args.model, use_ranker=False)}
    orders = {name: rec.with_titles(media[media["media_id"].isin(new_ids)], relations)
              for name, rec in orders.items()}
    test = tables.interactions
    test = test[(test["split"] == "test") & test["is_interaction"] & ~test["listed_before"]]
    pairs = pd.concat([test[["user_id", "media_id"]], entries[["user_id", "media_id"]]])
    relevant = pairs.groupby("user_id")["media_id"].agg(set).to_dict()
    users = np.array(sorted(u for u in relevant if base.known([u])[0]), np.int64)
    seen = protocol.seen_before(tables, "test")
    ids = tables.anime["media_id"].to_numpy()
    before = {tables.users["user_id"].iloc[r]: ids[rows].tolist()
              for r, rows in seen.groupby("user_row")["anime_row"].agg(list).items()}
    got = {name: measure(rec, users, relevant, new_ids, before) for name, rec in orders.items()}
    print(f"{len(users):,} test users, {len(new_ids)} new titles; served order: "
          f"{base.serving['order']}")
    for name, m in got.items():
        print(f"{name:>10}: NDCG@10 {np.nanmean(m['ndcg@10']):.4f}, a new title of theirs in "
              f"the top 10 {np.nanmean(m['new_hit@10']):.3f} ({np.isfinite(m['new_hit@10']).sum():,} "
              f"users), new titles' share of the top 10 {np.mean(m['new_share']):.3f}")
    for metric in ("ndcg@10", "new_hit@10", "new_share"):
        d = protocol.paired_bootstrap(got["served"][metric], got["two-tower"][metric])
        print(f"served - two-tower {metric}: {interval(d)}")


if __name__ == "__main__":
    main()
