"""A synthetic world that moves (issue #19, item 3): the generator's future, held back
from the store, served day by day by the stand-in AniList server's clock and brought into
a crawled store by the real client's refresh, exactly one day at a time."""

import hashlib
import sqlite3

import numpy as np
import pandas as pd
import pytest
import requests

import data_query as dq
from pipelines import store, synth
from pipelines.errors import InputError, StoreError
from tests.anilist_server import AniListStandIn
from tests.test_demo_servers import _start, _stop, _url

DAY = 86_400
KINDS = list(synth.OUTCOME_KINDS)
# A world small enough for a crawl in a second, large enough that a new title is listed
# (and so fetched by refresh) within its three days: seed 1 has one on day 1.
MOVING = dict(users=150, anime=200, entries_per_user=30, seed=1, future_days=3)


def _digest(db) -> str:
    """A hash of every table's rows (meta, relations and crawl state included)."""
    digest = hashlib.sha256()
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        for table in tables:
            digest.update(table.encode())
            rows = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            digest.update(repr(rows).encode())
    finally:
        conn.close()
    return digest.hexdigest()


def _entries(db) -> pd.DataFrame:
    conn = store.connect(db, readonly=True)
    try:
        return store.read_entries(conn)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    """(store, its future, the store's entries at the crawl)."""
    db = tmp_path_factory.mktemp("moving") / "world.db"
    synth.run(db, progress=False, **MOVING)
    return db, synth.read_future(db), _entries(db)


def test_the_future_changes_nothing_in_the_store_and_is_deterministic(tmp_path):
    sizes = dict(users=60, anime=80, entries_per_user=20, seed=4)
    with_future, again, without = (tmp_path / f"{n}.db" for n in ("a", "b", "c"))
    synth.run(with_future, future_days=3, progress=False, **sizes)
    synth.run(again, future_days=3, progress=False, **sizes)
    synth.run(without, future_days=0, progress=False, **sizes)
    # The store and the truth are those of a world without a future, byte for byte.
    assert _digest(with_future) == _digest(without) == _digest(again)
    assert (synth.truth_path(with_future).read_bytes()
            == synth.truth_path(without).read_bytes())
    assert not synth.future_path(without).exists()
    # The same seed gives the same future.
    assert _digest(synth.future_path(with_future)) == _digest(synth.future_path(again))
    a, b = synth.read_future(with_future), synth.read_future(again)
    pd.testing.assert_frame_equal(a.versions, b.versions)
    assert len(a.versions) > 0
    # Regenerating without a future removes the old world's.
    synth.run(again, future_days=0, progress=False, **sizes)
    assert not synth.future_path(again).exists()
    with pytest.raises(StoreError, match="No future at .*--future-days 7"):
        synth.read_future(again)
    assert not list(tmp_path.glob(".*.tmp*")), "temporary files left behind"


def test_a_future_of_another_world_is_refused(tmp_path):
    one, other = tmp_path / "one.db", tmp_path / "other.db"
    synth.run(one, users=30, anime=40, entries_per_user=10, future_days=1, progress=False)
    synth.run(other, users=30, anime=40, entries_per_user=10, seed=5, future_days=1,
              progress=False)
    with pytest.raises(StoreError, match="future of another world"):
        synth.read_future(one, synth.future_path(other))


def test_the_future_holds_only_its_days(moving):
    db, future, entries = moving
    versions = future.versions
    assert future.start == synth.NOW and future.days == MOVING["future_days"]
    assert future.end == synth.NOW + 3 * DAY
    assert (versions["updated_at"] > synth.NOW).all()
    assert (versions["updated_at"] <= future.end).all()
    new = versions.merge(entries[["user_id", "media_id"]], how="left", indicator=True)
    first = new[new["_merge"] == "left_only"].drop_duplicates(["user_id", "media_id"])
    assert (first["created_at"] > synth.NOW).all(), "new entries are created in the future"
    assert (versions["created_at"] <= versions["updated_at"]).all()
    # One version per change: a title's versions strictly later one after another.
    by_pair = versions.sort_values(["user_id", "media_id", "updated_at"])
    gaps = by_pair.groupby(["user_id", "media_id"])["updated_at"].diff().dropna()
    assert (gaps > 0).all()
    # New titles: inside the span, ids the store lacks, listed only once they exist.
    media = future.media
    assert len(media) > 0
    assert media["fetched_at"].between(synth.NOW + 1, future.end).all()
    conn = store.connect(db, readonly=True)
    old_ids = set(store.media_ids(conn).tolist())
    conn.close()
    assert not old_ids & set(media["media_id"].tolist())
    assert set(versions["media_id"]) <= old_ids | set(media["media_id"])
    listed = versions.merge(media[["media_id", "fetched_at"]], on="media_id")
    assert (listed["created_at"] >= listed["fetched_at"]).all()
    related = future.relations
    assert set(related["media_id"]) | set(related["related_id"]) <= old_ids | set(media["media_id"])
    assert set(future.titles["media_id"]) == set(media["media_id"])
    # The days partition the versions.
    assert sum(len(future.day_versions(d)) for d in (1, 2, 3)) == len(versions)
    for bad in (0, 4):
        with pytest.raises(InputError, match="days 1 to 3"):
            future.day_span(bad)


def _client(server):
    return dq.AniListClient(server.url, rate=0, backoff=0.001, timeout=5.0)


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """Entries as a crawl stores them: AniList gives completion dates, not times."""
    frame = frame.reset_index(drop=True).copy()
    frame["completed_at"] = frame["completed_at"] - frame["completed_at"] % DAY
    frame["status"] = frame["status"].astype(str)
    return frame


def test_refresh_through_the_clocked_server_brings_exactly_each_day(moving, tmp_path):
    db, future, entries = moving
    crawl = tmp_path / "crawl.db"
    new_ids = set(future.media["media_id"].tolist())
    fetched_new = 0
    with AniListStandIn(db, future=synth.future_path(db)) as server:
        assert server.now == synth.NOW, "the clock starts at the crawl"
        conn = store.connect(crawl)
        try:
            client = _client(server)
            dq.crawl_users(conn, client, pages=None, progress=False)
            dq.crawl_lists(conn, client, progress=False)
            dq.crawl_media(conn, client, progress=False)
            pd.testing.assert_frame_equal(_comparable(store.read_entries(conn)),
                                          _comparable(entries))
            for day in range(1, future.days + 1):
                before = store.read_entries(conn)
                media_before = set(store.media_ids(conn).tolist())
                assert not media_before & (new_ids - set(future.media_as_of(
                    future.day_span(day)[0])["media_id"].tolist()))
                server.now = future.day_span(day)[1]
                summary = dq.refresh(conn, client, progress=False)
                assert not summary.failed and not summary.stopped
                after = store.read_entries(conn)
                # The lists are the future's at the end of the day: nothing later.
                want = future.entries_as_of(entries, server.now)
                pd.testing.assert_frame_equal(_comparable(after), _comparable(want))
                assert after["updated_at"].max() <= server.now
                # The day's outcomes, exactly, from the future file and through the client.
                got = synth.outcomes(before, after)
                expected = future.day_outcomes(entries, day)
                pd.testing.assert_frame_equal(got, expected)
                assert got[KINDS].sum().sum() > 0
                # New titles' metadata: those on some list by now, fetched by refresh.
                media_now = set(store.media_ids(conn).tolist())
                listed_new = set(after["media_id"]) & new_ids
                assert media_now == media_before | listed_new
                fetched_new += len(media_now - media_before)
                # Refresh again at the same time: nothing changes, no list is fetched.
                tables = _digest(crawl)
                requests_before = len(server.requests)
                again = dq.refresh(conn, client, progress=False)
                kinds = [k for _, k in server.requests[requests_before:]]
                assert again.fetched == 0 and set(kinds) == {"last"}
                assert _digest(crawl) == tables
        finally:
            conn.close()
    assert fetched_new > 0, "this world should list a new title within its days"


def test_the_stand_in_serves_a_new_title_only_once_it_exists(moving):
    db, future, _ = moving
    title = future.media.iloc[0]
    query = {"query": dq.MEDIA_QUERY, "variables": {"ids": [int(title["media_id"])],
                                                     "perPage": 50}}
    with AniListStandIn(db, future=synth.future_path(db)) as server:
        def ask(now):
            server.now = now
            return requests.post(server.url, json=query, timeout=5).json()["data"]["Page"]["media"]

        assert ask(int(title["fetched_at"]) - 1) == []
        got = ask(int(title["fetched_at"]))
        assert [m["id"] for m in got] == [int(title["media_id"])]
        assert got[0]["title"]["romaji"] == title["title_romaji"]
        assert got[0]["popularity"] == 0 and got[0]["meanScore"] is None
        assert ask(None) == [], "no clock: the store as it is"


def test_the_users_profile_and_refresh_check_follow_the_clock(moving):
    db, future, entries = moving
    day1 = future.day_versions(1)
    scorers = entries[entries["score"] > 0].groupby("user_id").size()
    user = int(scorers.reindex(day1["user_id"].unique()).idxmax())  # busy, and scores
    newest = int(day1.loc[day1["user_id"] == user, "updated_at"].max())
    with AniListStandIn(db, future=synth.future_path(db)) as server:
        client = _client(server)
        at_crawl = client.query(dq.USER_QUERY, {"id": user})["User"]
        check_at_crawl = client.query(dq.REFRESH_QUERY, {"userId": user})
        end_of_day = server.now = future.day_span(1)[1]
        later = client.query(dq.USER_QUERY, {"id": user})["User"]
        check = client.query(dq.REFRESH_QUERY, {"userId": user})
    own = entries[entries["user_id"] == user]
    assert at_crawl["updatedAt"] == own["updated_at"].max()
    assert check_at_crawl["Page"]["mediaList"] == [{"updatedAt": int(own["updated_at"].max())}]
    assert later["updatedAt"] == newest
    assert check["Page"]["mediaList"] == [{"updatedAt": newest}]
    listed = future.entries_as_of(entries, end_of_day).query("user_id == @user")
    statuses = {s["status"]: s["count"] for s in check["User"]["statistics"]["anime"]["statuses"]}
    assert statuses == listed["status"].astype(str).value_counts().to_dict()
    assert later["statistics"]["anime"]["count"] == int((listed["status"] != "PLANNING").sum())
    scored = listed.loc[listed["score"] > 0, "score"]
    assert later["statistics"]["anime"]["meanScore"] == pytest.approx(scored.mean())


def test_completions_are_scored_by_the_same_hidden_tastes(tmp_path):
    """The future's scores come from the truth: a completed title's score follows the
    user's expected score (random scores would not: about 0), and what users drop they
    like less than what they complete."""
    db = tmp_path / "w.db"
    synth.run(db, users=400, anime=300, entries_per_user=40, seed=7, future_days=7,
              progress=False)
    future = synth.read_future(db)
    truth = future.extend(synth.Truth.load(synth.truth_path(db)))
    entries = _entries(db)
    found = pd.concat([future.day_outcomes(entries, d) for d in range(1, 8)])
    latest = future.versions.drop_duplicates(["user_id", "media_id"], keep="last")
    done = found[found["completed"]].merge(latest, on=["user_id", "media_id"])
    done = done[done["score"] > 0]
    assert len(done) > 150
    expected = truth.expected_score(done["user_id"], done["media_id"])
    assert np.corrcoef(expected, done["score"])[0, 1] > 0.7
    shuffled = np.random.default_rng(0).permutation(done["score"].to_numpy())
    assert abs(np.corrcoef(expected, shuffled)[0, 1]) < 0.2, "the bar random scores miss"
    dropped = found[found["dropped"]]
    assert len(dropped) > 30
    assert (truth.affinity(dropped["user_id"], dropped["media_id"]).mean()
            < truth.affinity(done["user_id"], done["media_id"]).mean() - 0.5)
    # A continuation that appears is added by users who had its prequel.
    sequels = future.titles.dropna(subset=["prequel_id"])
    adds = future.versions.merge(sequels, on="media_id")
    if len(adds):
        had = adds.merge(entries, left_on=["user_id", "prequel_id"],
                         right_on=["user_id", "media_id"], how="left", indicator=True)
        assert (had["_merge"] == "both").mean() > 0.9


def test_the_clock_of_a_running_server_moves_from_another_process(moving):
    db, future, entries = moving
    user = int(future.day_versions(1)["user_id"].iloc[0])
    proc, lines = _start("tests.anilist_server", "--db", str(db), "--future",
                         str(synth.future_path(db)), "--now", "2026-11-01", "--port", "0")
    try:
        url = _url(lines[0])
        clock = url.rstrip("/") + "/_clock"
        assert requests.get(clock, timeout=5).json() == {"now": synth.NOW,
                                                         "start": synth.NOW, "days": 3}

        def newest():
            body = {"query": dq.REFRESH_QUERY, "variables": {"userId": user}}
            answer = requests.post(url, json=body, timeout=5).json()
            return answer["data"]["Page"]["mediaList"][0]["updatedAt"]

        assert newest() == int(entries.loc[entries["user_id"] == user, "updated_at"].max())
        moved = requests.post(clock, json={"day": 1}, timeout=5)
        assert moved.status_code == 200 and moved.json()["now"] == synth.NOW + DAY
        day1 = future.day_versions(1)
        assert newest() == int(day1.loc[day1["user_id"] == user, "updated_at"].max())
        bad = requests.post(clock, json={"day": 9}, timeout=5)
        assert bad.status_code == 400 and "days 1 to 3" in bad.json()["error"]
        bad = requests.post(clock, json={"when": 1}, timeout=5)
        assert bad.status_code == 400 and '{"now"' in bad.json()["error"]
        assert requests.post(clock, json={"now": None}, timeout=5).json()["now"] is None
    finally:
        err = _stop(proc)
    assert "Traceback" not in err, err


def test_synth_command_prints_the_future(tmp_path, capsys):
    from pipelines import __main__ as cli

    db = tmp_path / "w.db"
    assert cli.main(["synth", "--db", str(db), "--users", "40", "--anime", "40",
                     "--future-days", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"future: 2 days after the crawl in {synth.future_path(db)}" in out
    future = synth.read_future(db)
    entries = _entries(db)
    for day in (1, 2):
        counts = future.day_outcomes(entries, day)[KINDS].sum()
        row = next(line for line in out.splitlines()
                   if line.strip().startswith(f"{day}  2026-11-0{day}"))
        assert row.split()[-3:] == [str(counts[k]) for k in KINDS]
    assert cli.main(["synth", "--db", str(db), "--users", "40", "--anime", "40",
                     "--future-days", "-1", "--quiet"]) == 2
    assert "future_days` must be between 0 (no future) and 366" in capsys.readouterr().err
