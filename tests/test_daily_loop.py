"""The daily loop end to end on the tiny world's next days, through the real AniList client
and the clocked stand-in server: the outcomes it stores are the world's, a rerun keeps
one copy, a run killed mid-day and rerun equals an uninterrupted one, and the trained
model predicts the days better than the baselines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import daily, store, synth
from tests.anilist_server import AniListStandIn
from tests.simulate_days import copy_store, simulate

ROOT = Path(__file__).resolve().parents[1]
DAYS = 3


@pytest.fixture(scope="module")
def loop(tiny_db, tiny_scored, tmp_path_factory):
    """Three simulated days of the tiny world with the tiny scored model: (job dir,
    summaries, store)."""
    out = tmp_path_factory.mktemp("daily") / "job"
    summaries = simulate(tiny_db, str(tiny_scored[0]), DAYS, out, progress=False)
    return out, summaries, out / "anilist.db"


def _tables(db: Path, revision: str, day: str | None = None) -> dict:
    conn = store.connect(db, readonly=True)
    try:
        out = {name: store.read_daily(conn, name, None if name == "outcomes" else revision)
               for name in ("outcomes", "predictions", "metrics")}
    finally:
        conn.close()
    return {k: (v if day is None else v[v["day"] == day]).reset_index(drop=True)
            for k, v in out.items()}


def test_the_stored_outcomes_are_the_worlds(loop, tiny_db, tiny_scored):
    """Each day's stored outcomes, fetched through the client, equal the outcomes of the
    world's own lists at the day's end (the future file), exactly, for the tracked users
    (the model's)."""
    out, summaries, db = loop
    future = synth.read_future(tiny_db)
    conn = store.connect(tiny_db, readonly=True)
    crawled = store.read_entries(conn)
    conn.close()
    tracked = pd.read_parquet(tiny_scored[0] / "users.parquet", columns=["user_id"])["user_id"]
    crawled = crawled[crawled["user_id"].isin(tracked)]
    since = int(crawled["updated_at"].max())
    stored = _tables(db, summaries[0]["revision"])["outcomes"]
    for d, summary in enumerate(summaries, 1):
        start, end = daily.day_bounds(daily.parse_day(summary["day"]))
        lists = future.entries_as_of(crawled, future.day_span(d)[1])
        truth = daily.select_outcomes(lists[lists["user_id"].isin(tracked)], start, end, since)
        got = stored[stored["day"] == summary["day"]]
        assert len(truth) > 10, "a day of the tiny world has outcomes"
        assert (sorted(zip(got["user_id"], got["media_id"], got["kind"], got["score"]))
                == sorted(zip(truth["user_id"], truth["media_id"], truth["kind"], truth["score"])))
        assert summary["metrics"]["outcomes"] == len(truth)


def test_a_rerun_day_replaces_it_exactly(loop, tiny_scored):
    out, summaries, db = loop
    rev, day = summaries[-1]["revision"], summaries[-1]["day"]
    before = _tables(db, rev)
    served = pd.read_parquet(daily.served_path(out, rev, daily.parse_day(day)))
    again = daily.run(day, db=db, model=str(tiny_scored[0]), refresh=False, out=out,
                      progress=False)
    after = _tables(db, rev)
    for name in before:
        pd.testing.assert_frame_equal(before[name], after[name])
    assert not after["predictions"].duplicated(["day", "user_id", "media_id"]).any()
    assert after["metrics"]["day"].tolist() == [s["day"] for s in summaries]
    pd.testing.assert_frame_equal(
        served, pd.read_parquet(daily.served_path(out, rev, daily.parse_day(day))))
    assert again["metrics"] == summaries[-1]["metrics"]


def test_the_model_predicts_the_days_better_than_the_baselines(loop):
    """Pooled over the days: the score head's MAE is below the user-mean and title-mean
    baselines', and the lists the model served hold more of the next day's new titles
    at 100 than the recent-popularity lists."""
    out, summaries, db = loop
    preds = _tables(db, summaries[0]["revision"])["predictions"]
    outcomes = _tables(db, summaries[0]["revision"])["outcomes"]
    joined = outcomes.merge(preds, on=["day", "user_id", "media_id"])
    scored = joined[(joined["score"] > 0) & joined["predicted_score"].notna()]
    fallback = scored["score"].mean()

    def mae(column):
        return float((scored[column].fillna(fallback) - scored["score"]).abs().mean())

    assert len(scored) > 30
    assert mae("predicted_score") < mae("user_mean")
    assert mae("predicted_score") < mae("title_mean")
    new = joined[joined["is_new"] == 1]
    model_hits = (new["served_rank"].fillna(np.inf) <= 100).mean()
    popular_hits = (new["popularity_rank"].fillna(np.inf) <= 100).mean()
    assert len(new) > 10 and model_hits > popular_hits


def test_each_day_is_served_and_predicted_from_the_current_lists(loop, tiny_db, tiny_scored):
    """The lists saved beside day D's served list are the tracked users' lists in the
    world at D's end (D's outcomes included); day D+1's predicted scores are the score head
    reading those lists, not the lists the model was trained on; D's served list is the
    model serving those lists."""
    from serving import Recommender, batch

    out, summaries, db = loop
    rec = Recommender.from_pretrained(str(tiny_scored[0]))
    rev = summaries[0]["revision"]
    tables = _tables(db, rev)
    future = synth.read_future(tiny_db)
    conn = store.connect(tiny_db, readonly=True)
    crawled = store.read_entries(conn)
    conn.close()
    conn = store.connect(db, readonly=True)
    titles = batch.read_titles(conn)   # the loop's store: every title it has crawled
    conn.close()
    moved, previous = 0, []
    for d, (first, second) in enumerate(zip(summaries, summaries[1:]), 1):
        day = daily.parse_day(first["day"])
        lists = pd.read_parquet(daily.lists_path(out, rev, day))
        # The loop's day is [start, end); the world's (after, until]: the lists before end.
        truth = future.entries_as_of(crawled, daily.day_bounds(day)[1] - 1)
        truth = truth[truth["user_id"].isin(rec.users["user_id"])]
        assert (sorted(zip(lists["user_id"], lists["media_id"], lists["status"], lists["score"]))
                == sorted(zip(truth["user_id"], truth["media_id"], truth["status"].astype(str),
                              truth["score"])))
        outcomes = tables["outcomes"][tables["outcomes"]["day"] == first["day"]]
        assert set(zip(outcomes["user_id"], outcomes["media_id"])) <= set(
            zip(lists["user_id"], lists["media_id"]))
        preds = tables["predictions"][tables["predictions"]["day"] == second["day"]]
        preds = preds[preds["predicted_score"].notna()]
        u, m = preds["user_id"].to_numpy(), preds["media_id"].to_numpy()
        # The titles first listed after training that day D's serving added, through the
        # candidate tower: the store's, and D+1's predictions read the same.
        added = pd.read_parquet(daily.titles_path(out, rev, day))["media_id"]
        assert set(added) <= set(titles["media"]["media_id"]) - set(rec.anime["media_id"])
        assert set(added) >= set(previous) and first["served"]["new_titles"] == len(added) > 0
        previous = added
        trained = rec.with_titles(titles["media"][titles["media"]["media_id"].isin(added)],
                                  titles["relations"])
        current = trained.with_lists(lists)
        # (the store keeps whole points)
        np.testing.assert_allclose(preds["predicted_score"], current.predict_scores(u, m),
                                   atol=0.5 + 1e-3)
        moved += int((np.abs(trained.predict_scores(u, m) - current.predict_scores(u, m)) > 1).sum())
        served = pd.read_parquet(daily.served_path(out, rev, day))
        some = served["user_id"].unique()[:20]
        own = daily.lists_of(lists)
        again = current.recommend(some, k=daily.DEFAULT_K, exclude=[own[x] for x in some])
        assert (served[served["user_id"].isin(some)]["anime_id"].tolist()
                == again["anime_id"].tolist())
    assert moved > 10, "the lists the days read moved the score head's predictions"


def test_monitoring_report_holds_every_day(loop):
    out, summaries, db = loop
    report = (out / "monitoring" / "report.md").read_text()
    for s in summaries:
        assert f"| {s['day']} |" in report
        assert s["metrics"]["drift"].keys() >= {"score", "title_popularity", "format"}
    assert (out / "monitoring" / "scores.png").stat().st_size > 1000


def test_killed_mid_day_then_rerun_equals_an_uninterrupted_day(loop, tiny_db, tiny_scored,
                                                                tmp_path):
    """SIGKILL while the day's refresh is fetching lists, then a rerun: the day's tables
    and served lists equal those of the run that was never interrupted."""
    out, summaries, clean_db = loop
    future = synth.read_future(tiny_db)
    killed_db, job = tmp_path / "anilist.db", tmp_path / "job"
    copy_store(tiny_db, killed_db)
    day = summaries[0]["day"]
    command = [sys.executable, "-m", "pipelines", "daily", "--date", day, "--db", str(killed_db),
               "--model", str(tiny_scored[0]), "--out", str(job), "--rate", "0", "--quiet"]
    with AniListStandIn(tiny_db, future=synth.future_path(tiny_db)) as server:
        server.now = future.day_span(1)[1]
        server.pause_at = ("list", 5)
        proc = subprocess.Popen(command + ["--endpoint", server.url], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert server.paused.wait(120), "the refresh never reached its 5th list"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        server.resume.set()
    rev = summaries[0]["revision"]
    assert _tables(killed_db, rev)["metrics"].empty, "nothing of the day was committed"
    with AniListStandIn(tiny_db, future=synth.future_path(tiny_db)) as server:
        server.now = future.day_span(1)[1]
        result = subprocess.run(command + ["--endpoint", server.url], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    clean, rerun = _tables(clean_db, rev, day), _tables(killed_db, rev, day)
    for name in clean:
        pd.testing.assert_frame_equal(clean[name], rerun[name])
    for d in (daily.parse_day(day), daily.parse_day(day) - __import__("datetime").timedelta(1)):
        pd.testing.assert_frame_equal(pd.read_parquet(daily.served_path(out, rev, d)),
                                      pd.read_parquet(daily.served_path(job, rev, d)))
