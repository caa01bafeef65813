"""Serving users from their current lists (``Recommender.with_lists``): the training lists
give back exactly the model as trained, a changed list changes what is served and
predicted in the ways it must, a user the model was not trained on is served like a new
user's history, and bad lists are named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import InputError
from pipelines.tables import load
from serving import Recommender


@pytest.fixture(scope="module")
def rec(tiny_scored):
    return Recommender.from_pretrained(str(tiny_scored[0]))


@pytest.fixture(scope="module")
def training_lists(tiny_features):
    """The tiny world's training lists with the store's columns (the feature stage's
    ``time`` is the entry's ``updated_at`` there)."""
    inter = load(tiny_features)["interactions"]
    train = inter[inter["split"] == "train"]
    return pd.DataFrame({"user_id": train["user_id"].to_numpy(np.int64),
                         "media_id": train["media_id"].to_numpy(np.int64),
                         "status": train["status"].astype(str).to_numpy(),
                         "score": train["score"].to_numpy(np.int64),
                         "updated_at": train["time"].astype("Int64").to_numpy()})


def test_the_training_lists_give_back_the_model_as_trained(rec, training_lists):
    """Features rebuilt from every user's training list equal users.parquet's, column by
    column, and so do the histories and what is served and predicted."""
    fresh = rec.with_lists(training_lists)
    assert len(fresh.users) == len(rec.users)
    users = rec.users["user_id"].to_numpy()
    mine = fresh.users.set_index("user_id").loc[users]
    theirs = rec.users.set_index("user_id")
    for column in theirs.columns:
        a, b = mine[column].to_numpy(), theirs[column].to_numpy()
        if a.dtype == object:
            for x, y in zip(a, b):
                np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float),
                                           rtol=1e-6, err_msg=column)
        else:
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=1e-9,
                                       err_msg=column)
    # The history (EASE's and the franchise signal's input) is the training interactions
    # as seen.parquet has them; the seen titles are the list given.
    listed = training_lists.groupby("user_id")["media_id"].apply(set)
    for i, r in enumerate(fresh._user_row.get_indexer(users)):
        np.testing.assert_array_equal(np.sort(fresh._history[r]), np.sort(rec._history[i]))
        assert set(fresh._seen[r]) == listed[users[i]]
    sample = users[:40]
    pd.testing.assert_frame_equal(fresh.recommend(sample, k=10, exclude_seen=False),
                                  rec.recommend(sample, k=10, exclude_seen=False))
    titles = rec.anime["media_id"].to_numpy()[:40]
    np.testing.assert_allclose(fresh.predict_scores(sample, titles),
                               rec.predict_scores(sample, titles), atol=1e-4)


def test_a_changed_list_is_what_is_served(rec, training_lists):
    """A user completes their top recommendation with 100: it leaves their served list,
    joins their history, their counts and mean score move, the score head reads the new
    mean, and every other user and the model loaded from disk are untouched."""
    user = int(rec.users["user_id"].iloc[0])
    before = rec.recommend([user], k=10)
    top = int(before["anime_id"].iloc[0])
    added = pd.DataFrame({"user_id": [user], "media_id": [top], "status": ["COMPLETED"],
                          "score": [100],
                          "updated_at": [int(training_lists["updated_at"].max()) + 86_400]})
    lists = pd.concat([training_lists, added], ignore_index=True)
    fresh = rec.with_lists(lists)
    after = fresh.recommend([user], k=10)
    assert top not in set(after["anime_id"])
    assert top in fresh.history_ids(user) and top not in rec.history_ids(user)
    old, new = (r.users.set_index("user_id").loc[user] for r in (rec, fresh))
    assert new["n_train"] == old["n_train"] + 1
    assert new["n_scored"] == old["n_scored"] + 1
    mine = training_lists[(training_lists["user_id"] == user) & (training_lists["score"] > 0)]
    assert new["mean_score"] == pytest.approx((mine["score"].sum() + 100) / (len(mine) + 1))
    other = rec.users["user_id"].to_numpy()[1:30]
    pd.testing.assert_frame_equal(fresh.recommend(other, k=10, exclude_seen=False),
                                  rec.recommend(other, k=10, exclude_seen=False))
    assert fresh.predict_scores([user], [top])[0] != rec.predict_scores([user], [top])[0]
    # The loaded model is the same object underneath and unchanged.
    assert fresh.index is rec.index and fresh.ranker is rec.ranker
    pd.testing.assert_frame_equal(rec.recommend([user], k=10), before)


def test_a_user_the_model_was_not_trained_on_is_served_like_a_history(rec, training_lists):
    """A list under an id the model never saw becomes a known user, served exactly as
    recommend_for_history serves the same titles, scores and times (both read the
    unknown-id embedding); a list of titles outside the catalog alone changes nothing."""
    donor = int(rec.users["user_id"].iloc[3])
    theirs = training_lists[training_lists["user_id"] == donor]
    theirs = theirs.assign(user_id=10**9, status="COMPLETED")
    outside = pd.DataFrame({"user_id": [10**9 + 1], "media_id": [999_999_999],
                            "status": ["COMPLETED"], "score": [80], "updated_at": [0]})
    fresh = rec.with_lists(pd.concat([theirs, outside], ignore_index=True))
    assert fresh.known([10**9]).all() and not rec.known([10**9]).any()
    assert not fresh.known([10**9 + 1]).any()
    got = fresh.recommend([10**9], k=10)
    want = rec.recommend_for_history(
        [(int(m), int(s) or None, int(t)) for m, s, t in
         zip(theirs["media_id"], theirs["score"], theirs["updated_at"])], k=10)
    assert got["anime_id"].tolist() == want["anime_id"].tolist()
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5)
    np.testing.assert_allclose(got["predicted_score"], want["predicted_score"], rtol=1e-5)


@pytest.mark.parametrize("entries, message", [
    ([(1, 2, "COMPLETED", 80)], "must be a pandas DataFrame"),
    (pd.DataFrame({"user_id": [1], "media_id": [2], "score": [80]}), r"lacks the columns \['status'\]"),
    (pd.DataFrame({"user_id": [1.5], "media_id": [2], "status": ["COMPLETED"], "score": [80]}),
     r"entries\['user_id'\]` must hold integer ids"),
    (pd.DataFrame({"user_id": [1], "media_id": [2], "status": ["WATCHED"], "score": [80]}),
     "'WATCHED'"),
    (pd.DataFrame({"user_id": [1], "media_id": [2], "status": ["COMPLETED"], "score": [101]}),
     r"from 0 to 100.*101"),
])
def test_bad_lists_are_named(rec, entries, message):
    with pytest.raises(InputError, match=message):
        rec.with_lists(entries)


def test_the_batch_job_serves_the_stores_lists(tiny_scored, tiny_db, tmp_path):
    """``serving.batch --db``: every user of the store, those the model was not trained on
    too, is served by the model from their list in the store, exactly as ``with_lists``
    serves them; a rerun after the store changed is another job."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from pipelines import store
    from serving import batch

    db = tmp_path / "store.db"
    shutil.copy(tiny_db, db)
    out = tmp_path / "recs"
    result = subprocess.run([sys.executable, "-m", "serving.batch", "--model", str(tiny_scored[0]),
                             "--db", str(db), "--out", str(out), "--k", "5", "--quiet"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    got = batch.read_output(out)
    conn = store.connect(db)
    entries = store.read_entries(conn)
    rec = Recommender.from_pretrained(str(tiny_scored[0]))
    listed = entries["user_id"].unique()
    strangers = listed[~rec.known(listed)]
    assert len(strangers) > 0, "the store has users the model was not trained on"
    assert set(got["user_id"]) == set(listed) | set(rec.users["user_id"])
    assert (got.loc[got["user_id"].isin(strangers), "source"] == "model").all()
    # The store's titles first listed after training are served too, through the
    # candidate tower (``with_titles``), before the lists are read.
    current = batch.current(rec, batch.read_store(db))
    assert len(current.new_titles) > 0
    assert json.loads((out / batch.MANIFEST).read_text())["new_titles"] == len(current.new_titles)
    want = current.recommend(got["user_id"].unique(), k=5)
    pd.testing.assert_frame_equal(got.drop(columns="source"), want, atol=1e-5)
    # The store changes: the same command is another job.
    user, title = int(listed[0]), int(got["anime_id"].iloc[0])
    with store.transaction(conn):
        store.upsert_entries(conn, pd.DataFrame({
            "user_id": [user], "media_id": [title], "score": [90], "status": ["COMPLETED"],
            "progress": [None], "repeat": [0], "is_favourite": [0], "created_at": [None],
            "updated_at": [int(entries["updated_at"].max())], "completed_at": [None]}))
    conn.close()
    with pytest.raises(InputError, match="different job"):
        batch.run(str(tiny_scored[0]), "all", out, k=5, db=db, progress=False)


def test_the_service_serves_the_stores_lists(tiny_scored, tiny_db):
    """``serving.app --db``: a user_id the model was not trained on, listed in the store,
    is answered from their list there, among the store's titles (exactly ``with_titles``
    and ``with_lists``'s list); without it, 404."""
    import requests

    from pipelines import store
    from serving.app import build_service, create_app
    from tests.app_harness import serving

    conn = store.connect(tiny_db, readonly=True)
    entries = store.read_entries(conn)
    conn.close()
    rec = Recommender.from_pretrained(str(tiny_scored[0]))
    listed = entries["user_id"].unique()
    stranger = int(listed[~rec.known(listed)][0])
    from serving import batch
    want = batch.current(rec, batch.read_store(tiny_db)).recommend([stranger], k=6)
    for db, status in ((str(tiny_db), 200), (None, 404)):
        service = build_service(str(tiny_scored[0]), None, "http://127.0.0.1:9", 0, 10, 0, db)
        with serving(create_app(service)) as url:
            got = requests.post(url + "/recommend", json={"user_id": stranger, "k": 6}, timeout=60)
        assert got.status_code == status, got.text
        if status == 200:
            assert [r["anime_id"] for r in got.json()["results"]] == want["anime_id"].tolist()
