"""The stand-in servers' command lines (README, "Try it without network"): each starts as
its own process on a free port, prints its URL, and serves the real clients: the Hub
publish -> load by repo id -> pinned revision -> cache with the server gone, and an AniList
crawl with ``data_query.py``."""

import queue
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd

import data_query as dq
from pipelines import publish, store

ROOT = Path(__file__).resolve().parents[1]


def _start(*args) -> tuple[subprocess.Popen, list[str]]:
    """Starts ``python -m <args>`` from the repo root; returns it and its first three
    lines of output (the first holds the URL)."""
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    # A thread reads, so a server that never prints fails the test instead of hanging it.
    def read():
        with proc.stdout:
            for line in proc.stdout:
                lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    got = []
    while len(got) < 3:
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            _stop(proc)
            raise AssertionError(f"{args}: printed nothing in 60 s") from None
        if not line:
            raise AssertionError(f"{args} exited: {_stop(proc)}")
        got.append(line.rstrip("\n"))
    return proc, got


def _stop(proc: subprocess.Popen) -> str:
    """Stops it the way `kill PID` does; returns what it wrote on stderr (its stdout
    belongs to the reading thread)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    with proc.stderr:
        return proc.stderr.read()


def _url(line: str) -> str:
    found = re.search(r"http://127\.0\.0\.1:(\d+)/?", line)
    assert found and found.group(1) != "0", line
    return found.group(0)


def test_stand_in_hub_command_serves_publish_load_pin_and_offline(tiny_model, tmp_path):
    from serving import Recommender
    from serving.hub import resolve

    model = tmp_path / "model"
    shutil.copytree(tiny_model[0], model)
    cache = tmp_path / "hf_cache"
    proc, lines = _start("tests.hub_server", "--port", "0")
    try:
        url = _url(lines[0])
        assert f"HF_ENDPOINT={url} HF_TOKEN=any" in "\n".join(lines)
        first = publish.run(model, "demo/anirank", endpoint=url, token="x")
        assert re.fullmatch(r"[0-9a-f]{40}", first["commit"]) and url in first["url"]
        (model / "extra.txt").write_text("a second commit\n")
        second = publish.run(model, "demo/anirank", endpoint=url, token="x")["commit"]
        assert second != first["commit"]

        local = Recommender.from_pretrained(str(model))
        pinned = Recommender.from_pretrained("demo/anirank", revision=first["commit"],
                                             endpoint=url, cache_dir=cache)
        assert not (pinned.directory / "extra.txt").exists(), "the pinned commit, not main"
        users = local.users["user_id"].to_numpy()[:10]
        pd.testing.assert_frame_equal(pinned.recommend(users, k=5), local.recommend(users, k=5))
        latest = resolve("demo/anirank", endpoint=url, cache_dir=cache)
        assert (latest / "extra.txt").read_text() == "a second commit\n"
    finally:
        err = _stop(proc)
    assert "Traceback" not in err, err
    # The server is gone: the pinned revision loads from the cache.
    offline = resolve("demo/anirank", revision=first["commit"], endpoint=url, cache_dir=cache,
                      local_files_only=True)
    assert offline == pinned.directory


def test_stand_in_anilist_command_serves_a_store_to_the_crawler(tiny_db, tmp_path, capsys):
    db = tmp_path / "anilist.db"
    proc, lines = _start("tests.anilist_server", "--db", str(tiny_db), "--port", "0")
    try:
        url = _url(lines[0])
        assert "400 users" in lines[0]
        assert f"--endpoint {url} --rate 0" in "\n".join(lines)
        for command in (["users", "--discover", "--pages", "3"], ["lists"]):
            code = dq.main([*command, "--db", str(db), "--endpoint", url, "--rate", "0",
                            "--quiet"])
            assert code == 0, capsys.readouterr().err
    finally:
        err = _stop(proc)
    assert "Traceback" not in err, err
    conn = store.connect(db, readonly=True)
    try:
        got_users, got_entries = store.read_users(conn), store.read_entries(conn)
    finally:
        conn.close()
    conn = store.connect(tiny_db, readonly=True)
    try:
        want_users = store.read_users(conn).sort_values("user_id").head(150)
        want_entries = store.read_entries(conn)
    finally:
        conn.close()
    assert sorted(got_users["user_id"]) == sorted(want_users["user_id"])
    assert got_users.set_index("user_id")["name"].to_dict() == \
        want_users.set_index("user_id")["name"].to_dict()
    want_entries = want_entries[want_entries["user_id"].isin(want_users["user_id"])]
    assert len(got_entries) == len(want_entries) > 0


def test_stand_in_commands_refuse_a_taken_port_and_a_missing_store(tmp_path):
    proc, lines = _start("tests.hub_server", "--port", "0")
    try:
        port = _url(lines[0]).rsplit(":", 1)[1]
        taken = subprocess.run([sys.executable, "-m", "tests.hub_server", "--port", port],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        _stop(proc)
    assert taken.returncode == 2 and taken.stderr.startswith("error: cannot listen on")
    missing = subprocess.run([sys.executable, "-m", "tests.anilist_server", "--db",
                              str(tmp_path / "none.db")], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.startswith("error: "), missing.stderr
