"""The daily loop's gains over its baselines, pooled over every stored day, with paired
bootstrap CIs over users (the monitoring report shows each day's means; this says
whether the differences are beyond the noise).

    .venv/bin/python bench/daily_gains.py --db data/daily/anilist.db [--revision REV]

Score error: each user's mean absolute error on their scored outcomes, the score head
against the user-mean and title-mean baselines (users without a baseline value left
out). Hits: each user's share of newly added titles that were in the list served the
day before (top 10, top 100), against the recent-popularity list.
"""

import argparse

import numpy as np

from pipelines import protocol, store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="data/daily/anilist.db")
    parser.add_argument("--revision", default=None, help="one model's rows (default: all)")
    args = parser.parse_args()
    conn = store.connect(args.db, readonly=True)
    outcomes = store.read_daily(conn, "outcomes")
    predictions = store.read_daily(conn, "predictions", args.revision)
    conn.close()
    joined = outcomes.merge(predictions, on=["day", "user_id", "media_id"])
    scored = joined[(joined["score"] > 0) & joined["predicted_score"].notna()]

    def user_mae(column):
        return (scored[column] - scored["score"]).abs().groupby(scored["user_id"]).mean()

    model = user_mae("predicted_score")
    print(f"{len(scored):,} scored outcomes of {model.size:,} users, days "
          f"{', '.join(sorted(joined['day'].unique()))}")
    for base in ("user_mean", "title_mean"):
        d = protocol.paired_bootstrap(model.to_numpy(), user_mae(base).reindex(model.index).to_numpy())
        print(f"MAE score head - {base}: {d['difference']:+.2f} [{d['ci'][0]:+.2f}, "
              f"{d['ci'][1]:+.2f}] ({d['users']} users)")
    new = joined[joined["is_new"] == 1]
    for k in (10, 100):
        def hits(column):
            return (new[column].fillna(np.inf) <= k).groupby(new["user_id"]).mean()

        m, p = hits("served_rank"), hits("popularity_rank")
        d = protocol.paired_bootstrap(m.to_numpy(), p.to_numpy())
        print(f"hit@{k}: model {m.mean():.3f}, recent popularity {p.mean():.3f}, difference "
              f"{d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] ({d['users']} users)")


if __name__ == "__main__":
    main()
