"""Retraining from the daily loop (``daily --retrain-if-degraded``, pipelines/retrain.py):
the periods move forward by the days the store gained, the gate's NDCG and decision
by hand, a model compared with itself is a tie, and a degraded day on the tiny world
trains a candidate on the refreshed store and puts it in service when it is no worse."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pipelines import daily, retrain, store, synth
from pipelines.__main__ import main
from pipelines.tables import FeatureTables
from tests.anilist_server import AniListStandIn
from tests.hub_server import HubStandIn
from tests.simulate_days import copy_store

DAY = retrain.DAY
AS_OF = 1_700_006_400  # 2023-11-15 00:00 UTC


def _served(horizon_days=10.0, split=True, last=None) -> dict:
    schema = {"config": {"validation_fraction": 0.1, "test_fraction": 0.1}}
    if split:
        schema["split"] = {"as_of": AS_OF, "horizon_days": horizon_days}
        if last is not None:
            schema["split"]["last_entry"] = last
    return {"feature_schema": schema}


def test_the_periods_move_forward_by_the_days_the_store_gained():
    last = AS_OF + 19 * DAY + 3600   # the served model's newest entry
    served = _served(last=last)
    assert retrain.feature_config(served, last) is None, "nothing newer: nothing to learn"
    one = retrain.feature_config(served, last + 3600)   # an hour later
    assert one.as_of == "2023-11-16" and one.horizon_days == 10.0
    three = retrain.feature_config(served, last + 2 * DAY + 5)
    assert three.as_of == "2023-11-18" and three.horizon_days == 10.0
    assert three.validation_fraction == 0.1, "the rest of the served model's config stays"
    # Tables from before last_entry was saved: the end of the test period stands for it.
    end = AS_OF + 20 * DAY
    assert retrain.feature_config(_served(), end - 1) is None
    assert retrain.feature_config(_served(), end - 1 + DAY).as_of == "2023-11-16"
    # Lists without times were split at random: nothing to move, the config as it was.
    assert retrain.feature_config(_served(split=False), end).as_of is None


def test_ndcg_of_the_served_lists_by_hand():
    users = np.array([1, 2, 3])
    top = pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 3], "rank": [1, 2, 3, 1, 2, 1],
                        "anime_id": [10, 11, 12, 20, 21, 30]})
    relevant = {1: {11, 99}, 2: {20}}
    got = retrain.ndcg_per_user(top, users, relevant, k=3)
    # User 1: a hit at rank 2 of 2 relevant: (1/log2 3) / (1 + 1/log2 3).
    assert got[0] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert got[1] == 1.0
    assert np.isnan(got[2]), "nothing relevant: left out of the mean"


def _comparison(ndcg, mae=None) -> dict:
    out = {"k": 10, "users": 100,
           "ndcg@10 difference": dict(zip(("difference", "ci", "significant"), ndcg))}
    if mae:
        out["mae per user difference"] = dict(zip(("difference", "ci", "significant"), mae))
    return out


def test_the_gate_blocks_only_a_loss_beyond_the_noise():
    noise = (-0.004, [-0.010, 0.002], False)
    assert retrain.decide(_comparison(noise))["release"]
    worse = retrain.decide(_comparison((-0.02, [-0.03, -0.01], True)))
    assert not worse["release"] and "NDCG@10 -0.0200" in worse["reason"]
    assert retrain.decide(_comparison((0.02, [0.01, 0.03], True)))["release"]
    mae_worse = retrain.decide(_comparison(noise, (0.8, [0.3, 1.2], True)))
    assert not mae_worse["release"] and "MAE +0.80" in mae_worse["reason"]
    assert retrain.decide(_comparison(noise, (-0.8, [-1.2, -0.3], True)))["release"]
    nothing = retrain.decide({"k": 10, "users": 0})
    assert not nothing["release"] and "nothing to judge" in nothing["reason"]


def test_a_model_compared_with_itself_is_a_tie(tiny_scored, tiny_features):
    from serving import Recommender

    rec = Recommender.from_pretrained(str(tiny_scored[0]))
    c = retrain.compare(rec, rec, FeatureTables.load(tiny_features), draws=200)
    assert c["users"] > 100 and c["scored_pairs"] > 100
    assert c["ndcg@10"]["serving"] == c["ndcg@10"]["candidate"] > 0.05
    assert c["ndcg@10 difference"]["difference"] == 0.0
    assert c["ndcg@10 difference"]["ci"] == [0.0, 0.0]
    assert c["mae"]["serving"] == c["mae"]["candidate"]
    assert retrain.decide(c)["release"]


def test_a_degraded_day_retrains_and_releases_a_candidate_no_worse(tiny_db, tiny_scored,
                                                                   tmp_path, capsys):
    """One simulated day with an MAE threshold nothing meets: the CLI trains a candidate
    on the refreshed store (periods one day later) and its walk-forward refit, compares
    that with the serving model on the entries after the serving model's data and, no
    worse, swaps the candidate refit on every entry into the model directory; the next
    day runs on it."""
    from serving import Recommender
    from serving.batch import model_digest

    model, db, out = tmp_path / "model", tmp_path / "anilist.db", tmp_path / "job"
    shutil.copytree(tiny_scored[0], model)
    copy_store(tiny_db, db)
    before = model_digest(Recommender.from_pretrained(str(model)))
    future = synth.read_future(tiny_db)
    days = [daily.parse_day(pd.Timestamp(future.day_span(d)[0], unit="s").date())
            for d in (1, 2)]
    common = ["--db", str(db), "--model", str(model), "--out", str(out), "--rate", "0",
              "--quiet"]
    with AniListStandIn(tiny_db, future=synth.future_path(tiny_db)) as server:
        server.now = future.day_span(1)[1]
        assert main(["daily", "--date", days[0].isoformat(), "--endpoint", server.url,
                     "--retrain-if-degraded", "--mae-threshold", "0.1", "--alert-days", "1",
                     *common]) == 0
        printed = capsys.readouterr().out
        decision = json.loads((out / "retrain" / days[0].isoformat() / "decision.json").read_text())
        c = decision["comparison"]
        assert c["users"] > 100 and c["scored_pairs"] > 100
        assert decision == {**decision, **retrain.decide(c)}, "the decision is the gate's"
        assert decision["release"], decision["reason"]
        assert "released: no worse on the gate period" in printed
        # Judged only on what neither model learned from: after the serving model's data.
        served = json.loads((tiny_scored[0] / "config.json").read_text())
        assert c["period"] == "test" and c["after"] == retrain.served_through(served)
        walked = FeatureTables.load(out / "retrain" / days[0].isoformat() / "walk_forward"
                                    / "features").interactions
        gate = walked[(walked["split"] == "test") & (walked["time"] > c["after"])
                      & walked["is_interaction"]]
        # A title already on the list (as the store knew it then) is not a target.
        conn = store.connect(db, readonly=True)
        listed = daily.list_before(store.read_entries(conn), c["after"])
        conn.close()
        on_list = set(zip(listed["user_id"], listed["media_id"]))
        gate = gate[[pair not in on_list for pair in zip(gate["user_id"], gate["media_id"])]]
        # Of those users, the ones both models can serve from their lists then (a new
        # user whose titles are all outside a model's catalog cannot be).
        assert 0.8 * gate["user_id"].nunique() <= c["users"] <= gate["user_id"].nunique()
        # The release knows today: refit on every entry of the refreshed store.
        newest = retrain.newest_time(db, ("updated_at", "completed_at", "created_at"))
        released = json.loads((model / "config.json").read_text())
        assert retrain.served_through(released) == newest == retrain.served_through(
            {"trained_through": decision["trained_through"]})
        cutoff = pd.Timestamp(json.loads(
            (out / "retrain" / days[0].isoformat() / "features" / "schema.json").read_text()
        )["split"]["as_of"], unit="s")
        assert cutoff.strftime("%Y-%m-%d") == decision["as_of"]
        candidate = Recommender.from_pretrained(str(out / "retrain" / days[0].isoformat() / "model"))
        after = model_digest(Recommender.from_pretrained(str(model)))
        assert after == model_digest(candidate) != before
        previous = Recommender.from_pretrained(decision["previous"])
        assert model_digest(previous) == before, "the replaced model is kept"

        server.now = future.day_span(2)[1]
        summary = daily.run(days[1], db=db, model=str(model), endpoint=server.url, rate=0,
                            out=out, progress=False)
    assert summary["revision"] == after[:12], "the next day is scored under the new model"
    assert summary["metrics"]["outcomes"] > 10


def test_a_release_to_the_hub_is_a_new_commit_of_the_repo(tiny_scored, tiny_model, tmp_path,
                                                            monkeypatch):
    """A model served from a Hub repo: the released candidate is the repo's next commit,
    which loads as the candidate; the first commit still loads as the old model."""
    from pipelines import publish
    from serving import Recommender
    from serving.batch import model_digest

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_123")
    serving_dir, candidate = tmp_path / "serving", tmp_path / "candidate"
    shutil.copytree(tiny_model[0], serving_dir)
    shutil.copytree(tiny_scored[0], candidate)
    with HubStandIn() as hub:
        first = publish.run(serving_dir, "tester/anirank", endpoint=hub.url)["commit"]
        got = retrain.release(candidate, "tester/anirank", tmp_path / "work", endpoint=hub.url)
        assert got["published"] == "tester/anirank" and got["revision"] != first
        new = Recommender.from_pretrained("tester/anirank", got["revision"], endpoint=hub.url)
        old = Recommender.from_pretrained("tester/anirank", first, endpoint=hub.url)
    assert model_digest(new) == model_digest(Recommender.from_pretrained(str(candidate)))
    assert model_digest(old) == model_digest(Recommender.from_pretrained(str(serving_dir)))
    assert not (tmp_path / "work" / "previous_model").exists(), "nothing local replaced"
