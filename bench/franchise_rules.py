"""The franchise rules at serving (serving/franchise.py), measured: NDCG@10 of the served
top 10 with each rule and without, with paired bootstrap CIs over users, beside what the
rules are for (titles served before their prequel or parent show, franchises repeated
in a top 10) and what a list gives up or gains (distinct franchises, catalog coverage,
novelty).

    .venv/bin/python bench/franchise_rules.py --model data/walk_forward/model \\
        --features data/walk_forward/features

The walk-forward model (refit on every entry before the walk-forward cutoff T+h) serves
the walk-forward test users from their lists at T+h, leaving out everything on them;
relevant: the titles each user added in the test period [T+h, T+2h) (the report's walk-
forward test). Orders: the ranked order (no rule), each rule alone, and both (the
default).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import _env  # noqa: E402,F401

import numpy as np  # noqa: E402

from pipelines import protocol  # noqa: E402
from pipelines.formatting import interval  # noqa: E402
from pipelines.tables import FeatureTables  # noqa: E402
from ranking.metrics import ndcg_at_k  # noqa: E402
from serving import Filters, Recommender  # noqa: E402

ORDERS = {
    "ranked order (no rule)": Filters(entry_points=False, per_franchise=None),
    "entry points only": Filters(entry_points=True, per_franchise=None),
    "one per franchise only": Filters(entry_points=False, per_franchise=1),
    "both (the default)": Filters(),
}


def walk_forward_test(tables: FeatureTables, rec: Recommender) -> tuple[np.ndarray, dict, dict]:
    """The walk-forward test users the model knows (sorted), the titles each added in the
    test period (relevant) and every title on each one's list at the cutoff (listed)."""
    frame = tables.interactions
    lists = frame[frame["split"] == "train"]
    test = frame[(frame["split"] == "test") & frame["is_interaction"] & ~frame["listed_before"]]
    relevant = test.groupby("user_id")["media_id"].agg(set).to_dict()
    users = np.array(sorted(u for u in relevant if rec.known([u])[0]), np.int64)
    listed = lists.groupby("user_id")["media_id"].agg(list).to_dict()
    return users, relevant, {u: listed.get(u, []) for u in users}


def served(rec: Recommender, users: np.ndarray, listed: dict, filters: Filters) -> np.ndarray:
    """``[users, 10]`` title rows of each user's top 10 (-1 where fewer); ``users``
    sorted, their lists at the cutoff left out."""
    top = rec.recommend(users, k=10, exclude_seen=False, filters=filters,
                        exclude=[listed[u] for u in users])
    out = np.full((len(users), 10), -1, np.int64)
    at = np.searchsorted(users, top["user_id"].to_numpy())
    out[at, top["rank"].to_numpy() - 1] = rec._anime_row.get_indexer(top["anime_id"].to_numpy())
    return out


def measure(rec: Recommender, rows: np.ndarray, users: np.ndarray, relevant: dict) -> dict:
    """Per user: NDCG@10 of their relevant titles, and what the list is."""
    ids = rec.anime["media_id"].to_numpy(np.int64)
    franchise = rec._franchises.franchise
    histories = [rec._history[r] for r in rec._user_row.get_indexer(users)]
    unmet = rec._franchises.unmet(rows, histories)
    ok = rows >= 0
    popularity = rec.anime["popularity"].to_numpy(float)
    share = np.maximum(popularity, 1) / max(len(rec.users), 1)
    out = {"ndcg@10": [], "unmet": [], "repeats": [], "franchises": [], "novelty": []}
    for i, user in enumerate(users):
        mine, row = relevant[user], rows[i][ok[i]]
        hit = np.isin(ids[np.maximum(rows[i], 0)], list(mine)) & ok[i]
        out["ndcg@10"].append(ndcg_at_k(hit[None, :], np.array([len(mine)]), 10)[0])
        out["unmet"].append(unmet[i][ok[i]].mean() if len(row) else 0.0)
        groups = franchise[row]
        out["repeats"].append((len(groups) - len(np.unique(groups))) / max(len(row), 1))
        out["franchises"].append(len(np.unique(groups)))
        out["novelty"].append(float(np.mean(-np.log2(share[row]))) if len(row) else 0.0)
    result = {k: np.array(v, float) for k, v in out.items()}
    result["coverage"] = len(np.unique(rows[ok])) / len(rec.anime)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/walk_forward/model",
                        help="the walk-forward model (default: %(default)s)")
    parser.add_argument("--features", default="data/walk_forward/features",
                        help="the walk-forward feature tables (default: %(default)s)")
    args = parser.parse_args()
    tables = FeatureTables.load(args.features)
    rec = Recommender.from_pretrained(args.model)
    if not rec._franchises.known:
        sys.exit(f"error: {args.model} records no relations between titles: the rules change nothing.")
    users, relevant, listed = walk_forward_test(tables, rec)
    got = {name: measure(rec, served(rec, users, listed, f), users, relevant)
           for name, f in ORDERS.items()}
    print(f"model {args.model}, {len(users):,} test users, top 10 each")
    print(f"{'order':<26}{'NDCG@10':>9}{'unmet':>8}{'repeats':>9}{'franchises':>12}"
          f"{'coverage':>10}{'novelty':>9}")
    for name, m in got.items():
        print(f"{name:<26}{m['ndcg@10'].mean():>9.4f}{m['unmet'].mean():>8.1%}"
              f"{m['repeats'].mean():>9.1%}{m['franchises'].mean():>12.2f}"
              f"{m['coverage']:>10.1%}{m['novelty'].mean():>9.2f}")
    base = got["ranked order (no rule)"]
    for name, m in got.items():
        if m is not base:
            d = protocol.paired_bootstrap(m["ndcg@10"], base["ndcg@10"])
            print(f"{name} - ranked order, NDCG@10: {interval(d)}")


if __name__ == "__main__":
    main()
