"""Serving known users from their current lists against the lists frozen at training, on
the days a daily job stored, with paired bootstrap CIs over users.

    .venv/bin/python bench/current_lists.py --model data/model --out data/daily
    python -m tests.simulate_days --model data/walk_forward/selection --out /tmp/old --days 3
    .venv/bin/python bench/current_lists.py --model data/walk_forward/selection --out /tmp/old

For each stored day D and each of the model's training users, two lists of the top 100
as of D's start, leaving out everything on the user's list then (as the daily loop
does): **frozen**, the user's features and history as the model was trained
(``rec.recommend``, what the daily loop served before it read current lists), and
**current**, rebuilt from the list as the store knew it at the end of D-1 (the lists
the daily job saved beside its served lists; ``rec.with_lists``). Hits: each user's share of the titles they newly added on D
that each list held in its top 10 / top 100. Score error: the score head's mean
absolute error on the user's scored outcomes of D, reading either set of features.
Pooled over the days, per user.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from pipelines import _env  # noqa: F401

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipelines import daily, protocol, store  # noqa: E402
from serving import Recommender  # noqa: E402
from serving.batch import revision_of  # noqa: E402

K = 100


def hits(rec: Recommender, users: np.ndarray, listed: pd.DataFrame,
         new: pd.DataFrame) -> pd.Series:
    """Per (user, title) of ``new``: its rank in the user's served top ``K`` (inf if
    absent)."""
    own = daily.lists_of(listed)
    exclude = [own.get(u, np.zeros(0, np.int64)) for u in users]
    served = rec.recommend(users, k=K, exclude=exclude)
    lookup = served.set_index(["user_id", "anime_id"])["rank"]
    keys = pd.MultiIndex.from_arrays([new["user_id"], new["media_id"]])
    return pd.Series(lookup.reindex(keys).to_numpy(float), index=new.index).fillna(np.inf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/model", help="model dir (default: %(default)s)")
    parser.add_argument("--out", default="data/daily",
                        help="a daily job's directory, run with --model (default: %(default)s)")
    args = parser.parse_args()
    rec = Recommender.from_pretrained(args.model)
    revision = revision_of(rec, None)
    out = Path(args.out)
    conn = store.connect(out / "anilist.db", readonly=True)
    outcomes = store.read_daily(conn, "outcomes")
    conn.close()
    users = rec.users["user_id"].to_numpy(np.int64)
    outcomes = outcomes[outcomes["user_id"].isin(users)
                        & outcomes["media_id"].isin(rec.anime["media_id"])]
    rows = []
    for day in sorted(outcomes["day"].unique()):
        before = daily.parse_day(day) - dt.timedelta(days=1)
        path = daily.lists_path(out, revision, before)
        if not path.exists():
            raise SystemExit(f"error: {path} is missing: run the daily job with this model "
                             f"(make run, or python -m tests.simulate_days --model {args.model})")
        lists = pd.read_parquet(path)
        lists = lists[lists["user_id"].isin(users)]
        current = rec.with_lists(lists)
        today = outcomes[outcomes["day"] == day]
        new = today[today["is_new"] == 1]
        scored = today[today["score"] > 0]
        frame = pd.DataFrame({"user_id": new["user_id"], "kind": "new",
                              "frozen": hits(rec, users, lists, new),
                              "current": hits(current, users, lists, new)})
        if rec.scorer is not None:
            u, m = scored["user_id"].to_numpy(), scored["media_id"].to_numpy()
            real = scored["score"].to_numpy(float)
            frame = pd.concat([frame, pd.DataFrame({
                "user_id": u, "kind": "score",
                "frozen": np.abs(rec.predict_scores(u, m) - real),
                "current": np.abs(current.predict_scores(u, m) - real)})])
        rows.append(frame)
    rows = pd.concat(rows, ignore_index=True)
    days = sorted(outcomes["day"].unique())
    print(f"model {args.model} (trained through {rec.config.get('trained_through', '?')}), "
          f"days {days[0]} to {days[-1]}, {len(users):,} training users")
    new = rows[rows["kind"] == "new"]
    for k in (10, 100):
        per_user = (new[["frozen", "current"]] <= k).groupby(new["user_id"]).mean()
        d = protocol.paired_bootstrap(per_user["current"].to_numpy(), per_user["frozen"].to_numpy())
        print(f"hit@{k} of new titles: frozen {per_user['frozen'].mean():.3f}, current "
              f"{per_user['current'].mean():.3f}, current - frozen {d['difference']:+.3f} "
              f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] ({d['users']} users, {len(new)} titles)")
    score = rows[rows["kind"] == "score"]
    if len(score):
        per_user = score[["frozen", "current"]].groupby(score["user_id"]).mean()
        d = protocol.paired_bootstrap(per_user["current"].to_numpy(), per_user["frozen"].to_numpy())
        print(f"score MAE: frozen {per_user['frozen'].mean():.2f}, current "
              f"{per_user['current'].mean():.2f}, current - frozen {d['difference']:+.2f} "
              f"[{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] ({d['users']} users, {len(score)} scores)")


if __name__ == "__main__":
    main()
