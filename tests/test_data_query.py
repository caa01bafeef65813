"""The AniList crawler against a stand-in GraphQL server on 127.0.0.1: exact crawls
(favourites across pages, enums in their newest versions), every injected fault survived
as documented, answers about one item skipped and rejected queries stopping the crawl,
SIGKILL-and-resume, AniList's degraded rate limit, capped lists, refresh after deletions,
and discovery as an opt-in."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

import data_query as dq
from pipelines import store, synth
from tests.anilist_server import GRAPHQL_ERROR, AniListStandIn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small synthetic world, completion times at midnight UTC (AniList keeps dates);
    the longest list's every title a favourite (77: four pages of 25), and a few titles
    on hiatus (MediaStatus version 2 only), besides the world's own WEB_NOVEL and NOVEL
    sources (MediaSource versions 3 and 2)."""
    db = tmp_path_factory.mktemp("anilist") / "world.db"
    synth.run(db, users=40, anime=150, entries_per_user=46, seed=3, progress=False)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE entries SET completed_at = completed_at - completed_at % 86400")
    conn.execute("UPDATE entries SET is_favourite = 1 WHERE user_id = (SELECT user_id FROM "
                 "entries GROUP BY user_id ORDER BY COUNT(*) DESC, user_id LIMIT 1)")
    conn.execute("UPDATE media SET status = 'HIATUS' WHERE media_id IN "
                 "(SELECT DISTINCT media_id FROM entries ORDER BY media_id LIMIT 3)")
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
        favourites = {u: int(rows["is_favourite"].sum()) for u, rows in server.entries.items()}
    got, want = _tables(db), _tables(world)
    assert got["users"] == want["users"]
    assert got["entries"] == want["entries"]
    seen = {row[1] for row in want["entries"]}
    assert got["media"] == [m for m in want["media"] if m[0] in seen]
    assert lists.fetched == 40 and lists.entries == len(want["entries"])
    assert media.fetched == len(seen) and not media.skipped
    kinds = [k for _, k in server.requests]
    assert kinds.count("media") == -(-len(seen) // dq.MEDIA_BATCH)
    # Favourites: once per user (with the first of many chunks), 25 a page, every page.
    assert max(favourites.values()) == 77
    assert server.favourite_pages == {u: max(1, -(-n // 25)) for u, n in favourites.items()}
    assert kinds.count("favourites") == 3
    # Enums in the versions asked for: the stand-in answers version 1 to a query without.
    statuses = {m[5] for m in got["media"]}
    sources = {m[8] for m in got["media"]}
    assert "HIATUS" in statuses and {"WEB_NOVEL", "NOVEL"} <= sources
    # Re-running finds nothing to do and changes nothing.
    with AniListStandIn(world) as server:
        _crawl(db, _client(server))
        assert [k for _, k in server.requests] == ["page"]
    assert _tables(db) == got


def test_transient_faults_are_retried(world, tmp_path):
    # Every fault answers at once, and no answer comes near the client's 30 s timeout:
    # the counts are exact whatever the machine's speed.
    db = tmp_path / "crawl.db"
    with AniListStandIn(world, retry_after=0) as server:
        ids = sorted(server.users.index)
        server.faults[("list", ids[0])] = ["429", "429"]
        server.faults[("list", ids[1])] = ["500", "503"]
        server.faults[("list", ids[3])] = ["truncated"]
        server.faults[("list", ids[4])] = ["disabled"]
        client = _client(server, timeout=30.0)
        lists, _ = _crawl(db, client)
        list_requests = [k for _, k in server.requests].count("list")
    assert lists.fetched == 40 and not lists.failed and not lists.skipped
    assert client.stats.rate_limited == 2  # 429s wait, they are not retries
    assert client.stats.retries == 4  # 500, 503, truncated JSON, 403 disabled
    assert list_requests == 40 + 2 + 4
    assert _tables(db)["entries"] == _tables(world)["entries"]


def test_a_request_that_times_out_is_retried_and_its_reason_recorded(world):
    # The "timeout" fault never answers while the server runs (the stall outlasts the
    # test; leaving the with block ends it): the client's 0.5 s timeout always fires on
    # it. A slow machine may time out another try too, so retries are a bounded range.
    with AniListStandIn(world, timeout_seconds=600) as server:
        victim = sorted(server.users.index)[2]
        want = dq.fetch_list(_client(server), victim)
        server.faults[("list", victim)] = ["timeout"]
        client = _client(server, timeout=0.5, max_retries=3)
        assert dq.fetch_list(client, victim) == want
        assert 1 <= client.stats.retries <= 3
        server.faults[("list", victim)] = ["timeout"]
        with pytest.raises(dq.TransientError, match=r"^timeout \(after 0 retries\)$"):
            dq.fetch_list(_client(server, timeout=0.5, max_retries=0), victim)


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


NOT_FOUND = "Not Found. (HTTP 404)"  # AniList's answer for a private or unknown user


def test_private_users_and_deleted_titles_are_skipped_with_the_message_never_retried(
        world, tmp_path):
    db = tmp_path / "crawl.db"
    with AniListStandIn(world) as server:
        private = sorted(server.users.index)[:2]
        server.private_users.update(private)
        want = _tables(world)
        gone = want["entries"][0][1]
        server.missing_media.add(gone)
        lists, media = _crawl(db, _client(server))
        raw = requests.post(server.url, json={"query": dq.USER_QUERY,
                                              "variables": {"id": int(private[0])}}, timeout=10)
    assert raw.status_code == 404 and raw.json()["errors"] == [
        {"message": "Not Found.", "status": 404}], "as AniList answers a private user"
    assert lists.skipped == {NOT_FOUND: 2} and not lists.stopped
    assert media.skipped == {"not returned by AniList": 1}
    conn = store.connect(db, readonly=True)
    rows = conn.execute("SELECT kind, item_id, state, message FROM crawl_state "
                        "WHERE state='skipped' ORDER BY kind, item_id").fetchall()
    conn.close()
    assert rows == [("lists", private[0], "skipped", NOT_FOUND),
                    ("lists", private[1], "skipped", NOT_FOUND),
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
    # The stand-in holds the 16th list request unanswered until the test has killed the
    # crawler: 15 lists are saved, the 16th is in flight, whatever the machine's speed.
    with AniListStandIn(world) as server:
        server.pause_at = ("list", 16)
        proc = subprocess.Popen(command + ["--endpoint", server.url], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert server.paused.wait(120), "the crawl never reached its 16th list"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        server.resume.set()
    conn = store.connect(killed, readonly=True)
    done = conn.execute("SELECT COUNT(*) FROM crawl_state WHERE kind='lists' AND state='done'").fetchone()[0]
    users_with_entries = conn.execute("SELECT COUNT(DISTINCT user_id) FROM entries").fetchone()[0]
    conn.close()
    assert done == 15, "killed mid-crawl, on the 16th list"
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


def _most_in_a_window(times, window: float) -> int:
    """The most of ``times`` in any half-open window (t - window, t]."""
    times = np.sort(np.asarray(times))
    return int(max(((times > t - window) & (times <= t)).sum() for t in times))


class StartSpacing:
    """The client's old limit, to show what it did: starts evenly spaced, completions not
    counted."""

    def __init__(self, per_window: int, window: float):
        self.interval, self._next, self._hold_until = window / per_window, 0.0, 0.0

    def wait(self) -> float:
        now = time.monotonic()
        start = max(now, self._next, self._hold_until)
        if start > now:
            time.sleep(start - now)
        self._next = start + self.interval
        return start - now

    def completed(self) -> None:
        pass

    def hold(self, seconds: float) -> None:
        self._hold_until = max(self._hold_until, time.monotonic() + seconds)


def test_a_degraded_limit_is_kept_by_completion_where_start_spacing_broke_it(world, tmp_path):
    """AniList counts a request when it serves it: one held up in its queue is counted
    late, next to the ones after it. Spacing starts (the old client) then crowds more
    than the limit into a window; counting completions never does."""
    def crawl(name, limiter=None):
        with AniListStandIn(world, rate_limit=4, rate_window=1.0, retry_after=2,
                            slow_seconds=0.6) as server:
            server.faults[("page", 1)] = ["slow"]
            client = _client(server, rate=4, window=1.0)
            if limiter is not None:
                client.limiter = limiter
            conn = store.connect(tmp_path / f"{name}.db")
            summary = dq.crawl_users(conn, client, pages=6, per_page=5, progress=False)
            conn.close()
        return summary, client, server

    _, old, old_server = crawl("old", StartSpacing(4, 1.0))
    assert old_server.throttled >= 1 and old.stats.rate_limited >= 1
    summary, new, server = crawl("new")
    assert server.throttled == 0 and new.stats.rate_limited == 0
    assert summary.fetched == 30 and len(server.served) == 6
    assert _most_in_a_window(server.served, 1.0) == 4, "at the limit, never over it"


def test_the_degraded_servers_headers_and_a_429_waited_out_for_its_retry_after(world):
    """AniList degraded: its headers say 90 while it serves fewer; Retry-After and
    X-RateLimit-Reset come with a 429 only, and the client waits that long."""
    page = {"query": dq.USERS_PAGE_QUERY, "variables": {"page": 1, "perPage": 5}}
    with AniListStandIn(world, rate_limit=3, rate_window=1.0, retry_after=2) as server:
        served = [requests.post(server.url, json=page, timeout=10) for _ in range(3)]
        asked = time.time()
        refused = requests.post(server.url, json=page, timeout=10)
        client = _client(server)  # no client-side limit: the server's 429 decides
        data = client.query(dq.USERS_PAGE_QUERY, {"page": 1, "perPage": 5})
        arrivals = [t for t, _ in server.requests]
    assert [r.status_code for r in served] == [200] * 3
    assert [r.headers["X-RateLimit-Limit"] for r in served] == ["90"] * 3
    assert [r.headers["X-RateLimit-Remaining"] for r in served] == ["89", "88", "87"]
    assert not {"Retry-After", "X-RateLimit-Reset"} & set(served[0].headers)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
    assert abs(int(refused.headers["X-RateLimit-Reset"]) - (asked + 2)) < 1.5
    assert refused.json() == {"data": None, "errors": [
        {"message": "Too Many Requests.", "status": 429}]}
    assert len(data["Page"]["users"]) == 5
    assert client.stats.rate_limited == 1 and client.stats.requests == 2
    # The client's first try fell in the timeout; its retry came after the timeout ended.
    assert arrivals[5] - arrivals[3] >= 1.9 and client.stats.waited_seconds >= 1.5


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
    assert refresh.skipped == {NOT_FOUND: 1, "unchanged": 39}
    assert not refresh.failed
    assert _states(db, "lists") == [(gone, "skipped", NOT_FOUND)]
    assert kinds.count("list") == 0 and lists.fetched == 0, "skipped: never retried"
    assert _tables(db)["entries"] == _tables(world)["entries"], "what was crawled stays"


def test_refresh_refetches_a_list_the_user_deleted_entries_from(world, tmp_path):
    """The newest update alone misses a deletion (here the newest entry's: the newest
    update even goes back); the list's count, smaller than the store's, does not."""
    db = tmp_path / "crawl.db"
    with AniListStandIn(world) as server:
        _crawl(db, _client(server))
    with AniListStandIn(world) as server:
        victim = max(server.entries, key=lambda u: (len(server.entries[u]), u))
        rows = server.entries[victim]
        newest = rows["updated_at"].idxmax()
        gone = int(rows.loc[newest, "media_id"])
        server.entries[victim] = rows.drop(index=newest)
        conn = store.connect(db)
        refresh = dq.crawl_refresh(conn, _client(server), progress=False)
        state = conn.execute("SELECT state, message FROM crawl_state WHERE kind='lists' "
                             "AND item_id=?", (victim,)).fetchone()
        conn.close()
        code = dq.main(["refresh", "--db", str(db), "--endpoint", server.url, "--rate", "0",
                        "--quiet"])
        kinds = [k for _, k in server.requests]
    assert refresh.fetched == 1 and refresh.skipped == {"unchanged": 39}
    assert state == ("pending", "entries removed since last crawl")
    assert code == 0 and kinds.count("list") == 1
    want = [e for e in _tables(world)["entries"] if (e[0], e[1]) != (victim, gone)]
    assert _tables(db)["entries"] == want, "the deleted entry is gone from the store"


def test_a_rejected_users_page_stops_discovery_with_its_cursor_on_it(world, tmp_path):
    """A query AniList rejects (HTTP 400) would be rejected for every page alike: the
    crawl stops with the message, marks nothing, and the next run resumes on that page."""
    db = tmp_path / "crawl.db"
    with AniListStandIn(world) as server:
        server.faults[("page", 2)] = ["graphql"]
        conn = store.connect(db)
        summary = dq.crawl_users(conn, _client(server), pages=None, per_page=10,
                                 progress=False)
        cursor = store.get_cursor(conn, "users_page")
        kinds = [k for _, k in server.requests]
        again = dq.crawl_users(conn, _client(server), pages=None, per_page=10,
                               progress=False)
        conn.close()
    message = f"{GRAPHQL_ERROR} (HTTP 400)"
    assert kinds == ["page"] * 2, "page 1, then page 2 once: a rejected query is not retried"
    assert summary.stopped == f"AniList rejected the query: {message}" and summary.rejected
    assert not summary.skipped and not summary.failed and summary.fetched == 10
    assert _states(db, "users_page") == [] and cursor == "2"
    assert again.fetched == 30 and not again.stopped
    assert _tables(db)["users"] == _tables(world)["users"]


def test_a_query_anilist_rejects_stops_the_crawl_exits_1_and_marks_nothing(
        world, tmp_path, capsys):
    db = tmp_path / "crawl.db"
    args = ["--db", str(db), "--rate", "0", "--quiet"]
    with AniListStandIn(world, max_media_per_page=20) as server:
        conn = store.connect(db)
        dq.crawl_users(conn, _client(server), pages=None, progress=False)
        dq.crawl_lists(conn, _client(server), progress=False)
        conn.close()
        code = dq.main(["media", *args, "--endpoint", server.url])
        printed = capsys.readouterr()
        kinds = [k for _, k in server.requests]
    message = "Max query complexity should be 500 but got 1250. (HTTP 400)"
    summary = json.loads(printed.out)
    assert code == 1
    assert summary["stopped"] == f"AniList rejected the query: {message}"
    assert summary["skipped"] == {} and summary["failed"] == {} and summary["fetched"] == 0
    assert printed.err.startswith(f"error: AniList rejected the query: {message}")
    assert printed.err.count("\n") == 1
    assert kinds.count("media") == 1, "stopped at the first rejection"
    media = _states(db, "media")
    assert media and {state for _, state, _ in media} == {"pending"}, "nothing skipped"
    with AniListStandIn(world) as server:  # the query fits again: the next run fetches all
        assert dq.main(["media", *args, "--endpoint", server.url]) == 0
    assert _states(db, "media") == [] and json.loads(capsys.readouterr().out)["fetched"] == len(media)


def test_a_capped_list_is_kept_noted_and_counted(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dq, "LIST_CAP", 20)
    db = tmp_path / "crawl.db"
    with AniListStandIn(world, list_cap=20) as server:
        conn = store.connect(db)
        dq.crawl_users(conn, _client(server), pages=None, progress=False)
        conn.close()
        code = dq.main(["lists", "--db", str(db), "--endpoint", server.url, "--rate", "0",
                        "--quiet"])
        lists = {u: rows for u, rows in server.entries.items()}
    summary = _summary(capsys)
    capped = sorted(u for u, rows in lists.items() if len(rows) >= 20)
    assert code == 0 and summary["capped lists"] == len(capped) > 0
    conn = store.connect(db, readonly=True)
    notes = dict(conn.execute("SELECT item_id, message FROM crawl_state WHERE kind='lists' "
                              "AND message IS NOT NULL").fetchall())
    longest = max(capped, key=lambda u: len(lists[u]))
    stored = {r[0] for r in conn.execute("SELECT media_id FROM entries WHERE user_id=?",
                                         (longest,))}
    conn.close()
    assert notes == {u: "capped: AniList returned only the 20 most recently updated entries"
                     for u in capped}
    newest = lists[longest].sort_values(["updated_at", "media_id"], ascending=[False, True])
    assert len(lists[longest]) > 20 and stored == set(newest["media_id"][:20])


def test_users_needs_a_curated_list_or_opt_in_discovery(world, tmp_path, capsys):
    db = tmp_path / "crawl.db"
    for argv, says in ((["users"], "users needs --ids FILE / --names FILE"),
                       (["users", "--pages", "3"], "users needs --ids FILE"),
                       (["users", "--discover", "--ids", "x.txt"], "pass one or the other"),
                       (["users", "--discover", "--pages", "0"], "--pages must be at least 1")):
        assert dq.main([*argv, "--db", str(db)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
    assert not db.exists(), "refused before anything was written"
    with AniListStandIn(world) as server:
        code = dq.main(["users", "--discover", "--pages", "2", "--db", str(db), "--endpoint",
                        server.url, "--rate", "0", "--quiet"])
    printed = capsys.readouterr()
    assert code == 0 and json.loads(printed.out)["fetched"] == 40
    notice = printed.err.strip()
    assert "\n" not in notice and "terms of use" in notice and "mass collection" in notice
    assert "up to 2 requests (2 pages of 50 users)" in notice
    assert "about 4 min at 25 requests/minute" in dq.discovery_notice(100, 25, None)
    assert "up to 7 requests" in dq.discovery_notice(100, 25, 7)


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
    return json.loads(capsys.readouterr().out)


def test_summary_names_the_filters_and_leaves_out_keys_that_do_not_apply(world, tmp_path, capsys):
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
        assert dq.main(["--quiet", "users", *args, "--discover", "--pages", "10", "--min-entries",
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
        assert lists["capped lists"] == 0
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
