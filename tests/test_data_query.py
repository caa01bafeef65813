"""The AniList crawler against a stand-in GraphQL server on 127.0.0.1: exact crawls,
every injected fault survived as documented, SIGKILL-and-resume, and the rate limit."""

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data_query as dq
from pipelines import store, synth
from tests.anilist_server import GRAPHQL_ERROR, AniListStandIn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small synthetic world, completion times at midnight UTC (AniList keeps dates)."""
    db = tmp_path_factory.mktemp("anilist") / "world.db"
    synth.run(db, users=40, anime=150, entries_per_user=25, seed=3, progress=False)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE entries SET completed_at = completed_at - completed_at % 86400")
    conn.commit()
    conn.close()
    return db


def _client(server, **kwargs):
    kwargs = {"rate": 0, "backoff": 0.001, "timeout": 2.0, **kwargs}
    client = dq.AniListClient(server.url, **kwargs)
    client.disabled_pause = 0.01
    return client


def _crawl(db, client):
    conn = store.connect(db)
    try:
        dq.crawl_users(conn, client, pages=None, progress=False)
        lists = dq.crawl_lists(conn, client, progress=False)
        media = dq.crawl_media(conn, client, progress=False)
    finally:
        conn.close()
    return lists, media


def _tables(db, fetched=False):
    """Users, entries and media as comparable row lists (fetched_at left out: it is the
    time of the crawl)."""
    conn = store.connect(db, readonly=True)
    try:
        out = {}
        for table, columns, key in (("users", store.USER_COLUMNS, "user_id"),
                                    ("entries", store.ENTRY_COLUMNS, "user_id, media_id"),
                                    ("media", store.MEDIA_COLUMNS, "media_id")):
            cols = [c for c in columns if fetched or c != "fetched_at"]
            out[table] = conn.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {key}").fetchall()
        return out
    finally:
        conn.close()


def test_full_crawl_reproduces_the_world(world, tmp_path, monkeypatch):
    monkeypatch.setattr(dq, "LIST_CHUNK", 7)  # force multi-chunk lists
    db = tmp_path / "crawl.db"
    with AniListStandIn(world) as server:
        lists, media = _crawl(db, _client(server))
    got, want = _tables(db), _tables(world)
    assert got["users"] == want["users"]
    assert got["entries"] == want["entries"]
    seen = {row[1] for row in want["entries"]}
    assert got["media"] == [m for m in want["media"] if m[0] in seen]
    assert lists.fetched == 40 and lists.entries == len(want["entries"])
    assert media.fetched == len(seen) and not media.skipped
    kinds = [k for _, k in server.requests]
    assert kinds.count("media") == -(-len(seen) // dq.MEDIA_BATCH)
    # Re-running finds nothing to do and changes nothing.
    with AniListStandIn(world) as server:
        _crawl(db, _client(server))
        assert [k for _, k in server.requests] == ["page"]
    assert _tables(db) == got


def test_transient_faults_are_retried(world, tmp_path):
    db = tmp_path / "crawl.db"
    with AniListStandIn(world, timeout_seconds=0.6) as server:
        ids = sorted(server.users.index)
        server.faults[("list", ids[0])] = ["429", "429"]
        server.faults[("list", ids[1])] = ["500", "503"]
        server.faults[("list", ids[2])] = ["timeout"]
        server.faults[("list", ids[3])] = ["truncated"]
        server.faults[("list", ids[4])] = ["disabled"]
        client = _client(server, timeout=0.3)
        lists, _ = _crawl(db, client)
    assert lists.fetched == 40 and not lists.failed and not lists.skipped
    assert client.stats.rate_limited == 2
    assert client.stats.retries == 5  # 500, 503, timeout, truncated JSON, 403 disabled
    assert _tables(db)["entries"] == _tables(world)["entries"]


def test_persistent_failure_is_recorded_then_retried_by_the_next_run(world, tmp_path):
    db = tmp_path / "crawl.db"
    with AniListStandIn(world) as server:
        victim = sorted(server.users.index)[5]
        server.faults[("list", victim)] = ["500"] * 3
        lists, _ = _crawl(db, _client(server, max_retries=2))
    assert lists.failed == {"HTTP 500": 1} and lists.fetched == 39
    conn = store.connect(db, readonly=True)
    state = conn.execute("SELECT state, message, attempts FROM crawl_state "
                         "WHERE kind='lists' AND item_id=?", (victim,)).fetchone()
    assert state[0] == "failed" and "HTTP 500" in state[1] and state[2] == 1
    assert conn.execute("SELECT COUNT(*) FROM entries WHERE user_id=?", (victim,)).fetchone()[0] == 0
    conn.close()
    with AniListStandIn(world) as server:
        lists, _ = _crawl(db, _client(server))
        assert [k for _, k in server.requests].count("list") == 1  # only the failed one
    assert lists.fetched == 1
    assert _tables(db)["entries"] == _tables(world)["entries"]


def test_graphql_errors_are_skipped_with_the_message_and_never_retried(world, tmp_path):
    db = tmp_path / "crawl.db"
    with AniListStandIn(world) as server:
        private = sorted(server.users.index)[:2]
        server.private_users.update(private)
        want = _tables(world)
        gone = want["entries"][0][1]
        server.missing_media.add(gone)
        lists, media = _crawl(db, _client(server))
    assert lists.skipped == {"Private User (HTTP 404)": 2}
    assert media.skipped == {"not returned by AniList": 1}
    conn = store.connect(db, readonly=True)
    rows = conn.execute("SELECT kind, item_id, state, message FROM crawl_state "
                        "WHERE state='skipped' ORDER BY kind, item_id").fetchall()
    conn.close()
    assert rows == [("lists", private[0], "skipped", "Private User (HTTP 404)"),
                    ("lists", private[1], "skipped", "Private User (HTTP 404)"),
                    ("media", gone, "skipped", "not returned by AniList")]
    with AniListStandIn(world) as server:
        _crawl(db, _client(server))
        assert [k for _, k in server.requests] == ["page"]


def test_sigkill_mid_crawl_then_rerun_equals_an_uninterrupted_crawl(world, tmp_path):
    clean, killed = tmp_path / "clean.db", tmp_path / "killed.db"
    with AniListStandIn(world) as server:
        _crawl(clean, _client(server))
    for db in (killed,):
        with AniListStandIn(world) as server:
            conn = store.connect(db)
            dq.crawl_users(conn, _client(server), pages=None, progress=False)
            conn.close()
    command = [sys.executable, "data_query.py", "lists", "--db", str(killed), "--rate", "0",
               "--quiet"]
    with AniListStandIn(world, delay=0.02) as server:
        server.notify_after = 15
        proc = subprocess.Popen(command + ["--endpoint", server.url], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert server.request_event.wait(60), "the crawl never got going"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    conn = store.connect(killed, readonly=True)
    done = conn.execute("SELECT COUNT(*) FROM crawl_state WHERE kind='lists' AND state='done'").fetchone()[0]
    users_with_entries = conn.execute("SELECT COUNT(DISTINCT user_id) FROM entries").fetchone()[0]
    conn.close()
    assert 0 < done < 40, "killed mid-crawl"
    assert users_with_entries == done, "no half-written list"
    with AniListStandIn(world) as server:
        result = subprocess.run(command + ["--endpoint", server.url], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert [k for _, k in server.requests].count("list") == 40 - done
        conn = store.connect(killed)
        dq.crawl_media(conn, _client(server), progress=False)
        conn.close()
    assert _tables(killed) == _tables(clean)


def test_rate_limit_is_never_exceeded(world):
    with AniListStandIn(world) as server:
        client = _client(server, rate=600)  # 10 requests/s
        # Open the connection first: a cold connect delays the first arrival and would
        # make the spacing look shorter than what the client actually kept.
        client.query(dq.USERS_PAGE_QUERY, {"page": 1, "perPage": 5})
        server.requests.clear()
        for page in range(1, 13):
            client.query(dq.USERS_PAGE_QUERY, {"page": page % 3 + 1, "perPage": 5})
        times = np.array([t for t, _ in server.requests])
    assert len(times) == 12
    # In any window of one second, at most 10 requests + the one opening the window.
    in_window = [(times[i:] < t + 1.0).sum() for i, t in enumerate(times)]
    assert max(in_window) <= 11
    assert times[-1] - times[0] >= 11 * 0.1 * 0.95


def test_429_waits_for_retry_after_then_retries(world):
    with AniListStandIn(world) as server:
        server.faults["any"] = ["429"]
        client = _client(server)
        data = client.query(dq.USERS_PAGE_QUERY, {"page": 1, "perPage": 5})
    assert len(data["Page"]["users"]) == 5
    assert client.stats.rate_limited == 1 and client.stats.requests == 2


def test_low_remaining_budget_slows_down_before_a_429(world):
    with AniListStandIn(world) as server:
        server.faults["any"] = ["low"]
        client = _client(server)
        client.query(dq.USERS_PAGE_QUERY, {"page": 1, "perPage": 5})
        client.query(dq.USERS_PAGE_QUERY, {"page": 2, "perPage": 5})
        (first, _), (second, _) = server.requests
    assert second - first >= 0.35  # waited for the window's reset (0.5 s away)
    assert client.stats.rate_limited == 0


def test_refresh_refetches_only_changed_lists(world, tmp_path):
    db = tmp_path / "crawl.db"
    with AniListStandIn(world) as server:
        _crawl(db, _client(server))
    with AniListStandIn(world) as server:
        changed = sorted(server.users.index)[3]
        rows = server.entries[changed]
        first = rows.index[0]
        rows.loc[first, "score"] = 1 if rows.loc[first, "score"] != 1 else 2
        rows.loc[first, "updated_at"] = int(rows["updated_at"].max()) + 100
        code = dq.main(["refresh", "--db", str(db), "--endpoint", server.url, "--rate", "0",
                        "--quiet"])
        kinds = [k for _, k in server.requests]
    assert code == 0
    assert kinds.count("last") == 40 and kinds.count("list") == 1
    conn = store.connect(db, readonly=True)
    score = conn.execute("SELECT score FROM entries WHERE user_id=? AND media_id=?",
                         (changed, int(rows.loc[first, "media_id"]))).fetchone()[0]
    conn.close()
    assert score == rows.loc[first, "score"]


def _states(db, kind):
    conn = store.connect(db, readonly=True)
    try:
        return conn.execute("SELECT item_id, state, message FROM crawl_state WHERE kind=? "
                            "AND state != 'done' ORDER BY item_id", (kind,)).fetchall()
    finally:
        conn.close()


def test_refresh_skips_a_user_gone_private_as_the_lists_crawl_does(world, tmp_path):
    db = tmp_path / "crawl.db"
    with AniListStandIn(world) as server:
        _crawl(db, _client(server))
    with AniListStandIn(world) as server:
        gone = sorted(server.users.index)[4]
        server.private_users.add(gone)
        conn = store.connect(db)
        refresh = dq.crawl_refresh(conn, _client(server), progress=False)
        lists = dq.crawl_lists(conn, _client(server), progress=False)
        conn.close()
        kinds = [k for _, k in server.requests]
    assert refresh.skipped == {"Private User (HTTP 404)": 1, "unchanged": 39}
    assert not refresh.failed
    assert _states(db, "lists") == [(gone, "skipped", "Private User (HTTP 404)")]
    assert kinds.count("list") == 0 and lists.fetched == 0, "skipped: never retried"
    assert _tables(db)["entries"] == _tables(world)["entries"], "what was crawled stays"


def test_a_users_page_with_a_graphql_error_is_skipped_and_the_crawl_goes_on(world, tmp_path):
    db = tmp_path / "crawl.db"
    with AniListStandIn(world) as server:
        server.faults[("page", 2)] = ["graphql"]
        conn = store.connect(db)
        summary = dq.crawl_users(conn, _client(server), pages=None, per_page=10,
                                 progress=False)
        cursor = store.get_cursor(conn, "users_page")
        conn.close()
        kinds = [k for _, k in server.requests]
    message = f"{GRAPHQL_ERROR} (HTTP 400)"
    assert kinds == ["page"] * 4, "pages 1-4, page 2 once: a GraphQL error is not retried"
    assert summary.skipped == {message: 1} and not summary.failed and not summary.stopped
    assert summary.fetched == 30
    assert _states(db, "users_page") == [(2, "skipped", message)]
    assert cursor == "4"
    want = sorted(u[0] for u in _tables(world)["users"])
    assert [u[0] for u in _tables(db)["users"]] == want[:10] + want[20:]


def test_users_from_files_with_curation_filters(world, tmp_path):
    db = tmp_path / "crawl.db"
    with AniListStandIn(world) as server:
        users = server.users.sort_index()
        ids_file = tmp_path / "ids.txt"
        ids_file.write_text("\n".join(str(i) for i in users["user_id"][:5]) + "\n")
        names_file = tmp_path / "names.txt"
        names_file.write_text(users["name"].iloc[5] + "\nno-such-user\n")
        threshold = int(users["anime_count"][:6].median())
        code = dq.main(["users", "--db", str(db), "--endpoint", server.url, "--rate", "0",
                        "--quiet", "--ids", str(ids_file), "--names", str(names_file),
                        "--min-entries", str(threshold)])
    assert code == 0
    conn = store.connect(db, readonly=True)
    kept = {r[0] for r in conn.execute("SELECT user_id FROM users")}
    queued = {r[0] for r in conn.execute("SELECT item_id FROM crawl_state WHERE kind='lists'")}
    conn.close()
    expected = set(users["user_id"][:6][users["anime_count"][:6] >= threshold])
    assert kept == queued == expected and 0 < len(kept) < 6


def test_bad_input_and_help(tmp_path, capsys):
    bad = tmp_path / "ids.txt"
    bad.write_text("123\nsomeone\n")
    assert dq.main(["users", "--db", str(tmp_path / "x.db"), "--ids", str(bad)]) == 2
    assert "one numeric AniList user id per line" in capsys.readouterr().err
    result = subprocess.run([sys.executable, "data_query.py", "--help"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("users", "lists", "media", "refresh"):
        assert command in result.stdout
        sub = subprocess.run([sys.executable, "data_query.py", command, "--help"], cwd=ROOT,
                             capture_output=True, text=True)
        assert sub.returncode == 0 and "--rate" in sub.stdout and "--endpoint" in sub.stdout


def test_fuzzy_dates_and_zero_times():
    assert dq._fuzzy_date({"year": 2020, "month": 1, "day": 2}) == 1577923200
    assert dq._fuzzy_date({"year": 2020, "month": None, "day": None}) is None
    assert dq._fuzzy_date({"year": 2021, "month": 2, "day": 30}) is None
    assert dq._seconds(0) is None and dq._seconds(5) == 5


@pytest.mark.parametrize("argv, quiet", [
    (["--quiet", "users"], True),
    (["users", "--quiet"], True),
    (["--quiet", "media", "--quiet"], True),
    (["lists"], False),
    (["--quiet", "refresh", "--rate", "0"], True),
])
def test_quiet_goes_before_or_after_the_command(argv, quiet):
    assert dq.build_parser().parse_args(argv).quiet is quiet


def _summary(capsys) -> dict:
    import json

    return json.loads(capsys.readouterr().out)


def test_summary_names_the_filters_and_leaves_out_keys_that_do_not_apply(world, tmp_path, capsys):
    import time

    db = tmp_path / "crawl.db"
    with AniListStandIn(world) as server:
        users = server.users.sort_index()
        min_entries = int(users["anime_count"].median())
        now = time.time()
        updated = users["updated_at"].astype(float)
        # A cutoff halfway between two users' update times, far from either.
        gaps = np.sort(((now - updated) / 86_400).to_numpy())
        active_days = int(gaps[len(gaps) // 3]) + 1
        assert (np.abs(gaps - active_days) > 0.01).all()
        few = users["anime_count"] < min_entries
        inactive = ~few & (updated < now - active_days * 86_400)
        args = ["--db", str(db), "--endpoint", server.url, "--rate", "0"]
        # --quiet before the command here, after it below: both work.
        assert dq.main(["--quiet", "users", *args, "--pages", "10", "--min-entries",
                        str(min_entries), "--active-days", str(active_days)]) == 0
        summary = _summary(capsys)
        assert summary["skipped"] == {
            f"fewer than {min_entries} entries (--min-entries)": int(few.sum()),
            f"inactive for more than {active_days} days (--active-days)": int(inactive.sum())}
        assert 0 < few.sum() and 0 < inactive.sum()
        assert summary["fetched"] == int((~few & ~inactive).sum())
        assert "entries" not in summary, "discovering users fetches no list entries"
        assert dq.main(["lists", *args, "--quiet"]) == 0
        lists = _summary(capsys)
        assert lists["fetched"] == summary["fetched"] and lists["entries"] > 0
        assert dq.main(["media", *args, "--quiet"]) == 0
        media = _summary(capsys)
        assert "entries" not in media and media["fetched"] > 0
        assert set(media) == {"fetched", "skipped", "failed", "requests", "429s", "retries",
                              "stopped", "seconds"}
    conn = store.connect(db, readonly=True)
    messages = dict(conn.execute("SELECT item_id, message FROM crawl_state "
                                 "WHERE kind='user' AND state='skipped'").fetchall())
    conn.close()
    first_few = int(users.index[few][0])
    count = int(users.loc[first_few, "anime_count"])
    assert messages[first_few] == f"{count} entries, fewer than {min_entries} (--min-entries)"
    first_inactive = int(users.index[inactive][0])
    assert messages[first_inactive].endswith(f"days ago, more than {active_days} (--active-days)")
