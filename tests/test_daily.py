"""The daily loop's parts on hand-made fixtures: which entries are a day's outcomes, the
baselines as of the day before, the metrics and PSI against hand-computed values, and
the store's one-transaction day (a rerun leaves one copy)."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from pipelines import daily, monitoring, store
from pipelines.errors import InputError

D = dt.date(2026, 11, 3)
START, END = daily.day_bounds(D)
H = 3600


def _entries(rows) -> pd.DataFrame:
    """Entries in the store's columns from (user, media, status, score, created, updated,
    completed) tuples (None: NULL)."""
    frame = pd.DataFrame(rows, columns=["user_id", "media_id", "status", "score", "created_at",
                                        "updated_at", "completed_at"])
    for column in ("created_at", "updated_at", "completed_at"):
        frame[column] = frame[column].astype("Int64")
    frame["score"] = frame["score"].astype("int16")
    return frame


FIXTURE = _entries([
    # user 1: completed on D (scored), dropped on D, planned on D (not an outcome),
    # an old completed entry (not on D)
    (1, 10, "COMPLETED", 80, START - 30 * 86400, START + 5 * H, START + 5 * H),
    (1, 11, "DROPPED", 0, START - 2 * 86400, START + 6 * H, None),
    (1, 12, "PLANNING", 0, START + 7 * H, START + 7 * H, None),
    (1, 13, "COMPLETED", 70, START - 90 * 86400, START - 60 * 86400, START - 60 * 86400),
    # user 2: added and started on D; scored a CURRENT title on D; completed a week ago
    # but updated (re-scored) on D: scored, not completed; completed on the day before
    # by its date (AniList's dates are the user's local day) and updated on D: completed
    (2, 10, "CURRENT", 0, START + 1 * H, START + 2 * H, None),
    (2, 14, "CURRENT", 60, START - 5 * 86400, START + 3 * H, None),
    (2, 15, "COMPLETED", 90, START - 9 * 86400, START + 4 * H, START - 7 * 86400),
    (2, 18, "COMPLETED", 75, START - 9 * 86400, START + 4 * H, START - 86400),
    # user 3: completed on D with no completion date (the update counts), added on D
    (3, 16, "COMPLETED", 0, START + 1 * H, START + 9 * H, None),
    # user 3: updated just after the day ends: not on D
    (3, 17, "COMPLETED", 50, START - 86400, END, END),
])


def test_outcomes_of_a_day_by_kind():
    out = daily.select_outcomes(FIXTURE, START, END).set_index(["user_id", "media_id"])
    assert out["kind"].to_dict() == {
        (1, 10): "completed", (1, 11): "dropped", (2, 10): "started",
        (2, 14): "scored", (2, 15): "scored", (2, 18): "completed", (3, 16): "completed"}
    assert out["is_new"].to_dict() == {
        (1, 10): 0, (1, 11): 0, (2, 10): 1, (2, 14): 0, (2, 15): 0, (2, 18): 0, (3, 16): 1}
    assert out.loc[(1, 10), "score"] == 80
    # Only what changed after the loop began counts: (1, 10) changed at 05:00.
    later = daily.select_outcomes(FIXTURE, START, END, since=START + 5 * H)
    assert set(zip(later["user_id"], later["media_id"])) == {(1, 11), (3, 16)}


def test_the_lists_known_at_a_time():
    """What the model reads of a list as of the day's start: entries not updated since, or
    updated by the loop's start (``since``: it saw them before it began); an entry without
    a time counts as known."""
    untimed = _entries([(4, 19, "COMPLETED", 60, None, None, None)])
    frame = pd.concat([FIXTURE, untimed], ignore_index=True)
    pairs = lambda f: set(zip(f["user_id"], f["media_id"]))  # noqa: E731
    assert pairs(daily.known_at(frame, START)) == {(1, 13), (4, 19)}
    assert pairs(daily.known_at(frame, START, since=START + 2 * H)) == {(1, 13), (2, 10), (4, 19)}
    assert pairs(daily.known_at(frame, END + 1)) == pairs(frame)


def test_score_baselines_use_only_scores_given_before_the_day():
    user_mean, title_mean, global_mean = daily.score_baselines(FIXTURE, START)
    # Before D: only (1, 13) = 70 (others were updated on D or later).
    assert user_mean.to_dict() == {1: 70.0}
    assert title_mean.to_dict() == {13: 70.0}
    assert global_mean == 70.0


def test_popularity_ranks_leave_out_the_users_own_titles():
    entries = _entries([
        # three titles added in the last 30 days by 3, 2 and 1 lists: order 20, 21, 22
        (5, 20, "CURRENT", 0, START - 86400, START - 86400, None),
        (6, 20, "CURRENT", 0, START - 86400, START - 86400, None),
        (7, 20, "CURRENT", 0, START - 86400, START - 86400, None),
        (5, 21, "CURRENT", 0, START - 86400, START - 86400, None),
        (6, 21, "CURRENT", 0, START - 86400, START - 86400, None),
        (8, 22, "CURRENT", 0, START - 86400, START - 86400, None),
        # title 23: on two lists, added long ago: after the recent ones
        (5, 23, "COMPLETED", 0, START - 400 * 86400, START - 400 * 86400, None),
        (6, 23, "COMPLETED", 0, START - 400 * 86400, START - 400 * 86400, None),
    ])
    order = daily.recent_popularity(entries, START)
    assert order.tolist() == [20, 21, 22, 23]
    own = daily.lists_of(daily.list_before(entries, START))
    pairs = pd.DataFrame({"user_id": [8, 5, 9, 9], "media_id": [23, 22, 22, 99]})
    # user 8 holds 22 (rank 3): 23 moves from 4 to 3; user 5 holds 20, 21, 23: 22 is first;
    # user 9 holds nothing; title 99 is in no list.
    ranks = daily.ranks_without_own(order, own, pairs)
    assert ranks[:3].tolist() == [3, 1, 3] and math.isnan(ranks[3])


def test_metrics_against_hand_computed_values():
    m = daily.score_metrics(np.array([80.0, 60.0, 70.0]), np.array([70.0, 60.0, 90.0]))
    assert m["mae"] == pytest.approx(10.0)
    assert m["rmse"] == pytest.approx(math.sqrt(500 / 3))
    # ranks real (3, 1, 2), predicted (2, 1, 3): Pearson of the ranks = 0.5
    assert m["spearman"] == pytest.approx(0.5)
    assert daily.hit_rates(np.array([1, 10, 11, 100, np.nan])) == {"hit@10": 0.4, "hit@100": 0.8}
    assert math.isnan(daily.spearman(np.array([1.0, 2.0]), np.array([1.0, 2.0])))


def test_day_metrics_score_every_predictor_on_the_same_pairs():
    outcomes = pd.DataFrame({"user_id": [1, 1, 2, 3], "media_id": [10, 11, 10, 99],
                             "kind": ["completed", "dropped", "started", "completed"],
                             "score": [80, 0, 0, 50], "is_new": [0, 0, 1, 1]})
    predictions = pd.DataFrame({
        "predicted_score": [70.0, 40.0, 65.0, np.nan],  # title 99: unknown to the model
        "served_rank": pd.array([pd.NA, pd.NA, 4, pd.NA], "Int64"),
        "popularity_rank": pd.array([1, 2, 30, 200], "Int64"),
        "user_mean": [60.0, 60.0, np.nan, np.nan], "title_mean": [np.nan, 50.0, 75.0, np.nan]})
    m = daily.day_metrics(outcomes, predictions, global_mean=65.0, served=True)
    assert (m["scored"], m["scored_known"], m["unknown_title_share"]) == (2, 1, 0.5)
    assert m["scores"]["model"]["mae"] == 10.0          # |70 - 80| on the one known pair
    assert m["scores"]["user_mean"]["mae"] == 20.0      # |60 - 80|
    assert m["scores"]["title_mean"]["mae"] == 15.0     # no title mean: global 65
    assert m["new_titles"] == 2
    assert m["hits"]["model"] == {"hit@10": 0.5, "hit@100": 0.5}
    assert m["hits"]["recent_popularity"] == {"hit@10": 0.0, "hit@100": 0.5}
    assert (m["completed"], m["dropped"], m["started"]) == (2, 1, 1)


def test_psi_against_hand_computed_value():
    expected = pd.Series(["a"] * 50 + ["b"] * 50)
    actual = pd.Series(["a"] * 80 + ["b"] * 20)
    want = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert monitoring.psi(expected, actual) == pytest.approx(want)
    assert monitoring.psi(expected, expected) == 0.0
    # a bin the reference never had counts with the floor's share, not infinitely
    assert monitoring.psi(expected, pd.Series(["c"] * 10)) == pytest.approx(
        2 * (1e-4 - 0.5) * math.log(1e-4 / 0.5) + (1 - 1e-4) * math.log(1 / 1e-4))


def test_alerts_need_the_threshold_crossed_on_consecutive_days():
    def day(mae, p):
        return {"scores": {"model": {"mae": mae}}, "drift": {"score": p}}
    def frame(*metrics):
        return pd.DataFrame({"day": [f"d{i}" for i in range(len(metrics))],
                             "metrics": list(metrics)})
    t = monitoring.Thresholds(mae=12.0, days=3)
    assert monitoring.alerts(frame(day(13, 0.3), day(13, 0.3), day(11, 0.3), day(13, 0.3)), t) \
        == ["retrain: score drifted (PSI 0.30 > 0.25 for 3 days)"]
    assert monitoring.alerts(frame(day(11, 0), day(14.2, 0), day(13, 0), day(13, 0)), t) \
        == ["retrain: MAE 13.0 > 12.0 for 3 days"]
    assert monitoring.alerts(frame(day(13, 0.3), day(13, 0.3)), t) == []  # too few days


def test_a_rerun_day_replaces_the_day(tmp_path):
    conn = store.connect(tmp_path / "s.db")
    outcomes = daily.select_outcomes(FIXTURE, START, END)
    predictions = pd.DataFrame({"user_id": outcomes["user_id"], "media_id": outcomes["media_id"],
                                "predicted_score": 70.0, "served_rank": None,
                                "popularity_rank": 3, "user_mean": 60.0, "title_mean": None})
    for _ in range(2):
        store.replace_day(conn, "rev", "2026-11-03", outcomes, predictions, {"n": 1})
    store.replace_day(conn, "rev", "2026-11-04", outcomes.head(2), predictions.head(2), {"n": 2})
    kept = store.read_daily(conn, "predictions", "rev")
    assert kept.groupby("day").size().to_dict() == {"2026-11-03": 7, "2026-11-04": 2}
    assert store.read_daily(conn, "metrics")["metrics"].tolist() == [{"n": 1}, {"n": 2}]
    # a failure inside the day's transaction leaves the day as it was
    with pytest.raises(ValueError):
        store.replace_day(conn, "rev", "2026-11-04", outcomes, predictions.drop(columns="user_id"),
                          {"n": 3})
    assert store.read_daily(conn, "metrics")["metrics"].tolist() == [{"n": 1}, {"n": 2}]
    assert len(store.read_daily(conn, "outcomes")) == 9


def test_bad_dates_and_user_files_are_named(tmp_path):
    with pytest.raises(InputError, match="YYYY-MM-DD"):
        daily.parse_day("2026-13-01")
    bad = tmp_path / "users.txt"
    bad.write_text("12\nalice\n")
    with pytest.raises(InputError, match="line 2: 'alice'"):
        daily.tracked_users(None, str(bad))


def test_a_store_the_loop_cannot_judge_is_one_error_and_nothing_is_written(
        tiny_db, tiny_scored, tmp_path, capsys):
    """A missing store, a store with none of the tracked users' lists and a store of
    another source (under half of the model's training entries of its users) are each
    one ``error:`` line, exit 2, and leave no store and no daily directory behind. The
    model's own store passes the check."""
    from pipelines.__main__ import main
    from serving import Recommender
    from tests.simulate_days import copy_store

    model = str(tiny_scored[0])
    rec = Recommender.from_pretrained(model)
    tracked = rec.users["user_id"].to_numpy(np.int64)
    empty = tmp_path / "empty.db"
    store.connect(empty).close()
    other = tmp_path / "other.db"
    copy_store(tiny_db, other)
    conn = store.connect(other)
    # Three fifths of every list gone: 40% of the model's entries are left.
    conn.execute("DELETE FROM entries WHERE (user_id + media_id) % 5 < 3")
    conn.close()
    cases = {tmp_path / "nothere.db": "no such store",
             empty: "holds no list of the",
             other: "of the model's training entries of its users"}
    for db, message in cases.items():
        out = tmp_path / f"job-{db.stem}"
        assert main(["daily", "--date", "2026-11-02", "--db", str(db), "--model", model,
                     "--out", str(out), "--no-refresh", "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --db ") and message in err[0], err
        assert not out.exists(), "nothing written"
    assert not (tmp_path / "nothere.db").exists(), "no empty store created"
    share = float(next(line for line in err).split(" holds ")[1].split("%")[0]) / 100
    assert 0.3 < share < 0.5, share
    daily.check_store(tiny_db, rec, tracked)   # the model's own store: no error
