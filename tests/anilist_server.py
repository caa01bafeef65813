"""A stand-in AniList GraphQL server on 127.0.0.1 for the crawler's tests.

It serves a world read from a raw store (e.g. a synthetic one) in AniList's response
shapes, for the queries ``data_query.py`` sends, and can inject the faults the crawler
must survive: 429 with Retry-After, 5xx, slow answers (timeouts), truncated JSON,
private users (404 + GraphQL error), other GraphQL errors, titles AniList no longer
returns, and a 403 "API disabled". It records when each request arrived, so tests
measure the client's rate.

From the command line (the README's "Try it without network"), serving a store until
Ctrl-C, e.g. the synthetic world `make run` writes:

    python -m tests.anilist_server --db data/anirank.db --port 8766
    python data_query.py users --pages 10 --endpoint http://127.0.0.1:8766/ --rate 0
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler

import pandas as pd

from pipelines import store
from tests.loopback import LoopbackServer, port_argument, serve_until_interrupted


def _int(v):
    return None if v is None or pd.isna(v) else int(v)


def _float(v):
    return None if v is None or pd.isna(v) else float(v)


GRAPHQL_ERROR = "Internal error in a resolver"  # what the "graphql" fault answers
STATUS_LISTS = {"COMPLETED": "Completed", "CURRENT": "Watching", "PAUSED": "Paused",
                "DROPPED": "Dropped", "PLANNING": "Planning", "REPEATING": "Rewatching"}


def _fuzzy(seconds):
    if seconds is None:
        return {"year": None, "month": None, "day": None}
    d = dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc)
    return {"year": d.year, "month": d.month, "day": d.day}


class AniListStandIn(LoopbackServer):
    """``with AniListStandIn(db) as server: server.url``.

    Attributes:
      faults: ``{key: [fault, ...]}``; each request matching ``key`` pops the next fault.
        Keys: ``("list", user_id)``, ``("media", first_id_of_batch)``, ``("page", n)``,
        ``("user", id)``, ``("last", user_id)``, or ``"any"`` (the next requests of any
        kind). Faults: ``"429"``, ``"500"``, ``"503"``, ``"timeout"``, ``"truncated"``,
        ``"disabled"``, ``"graphql"`` (HTTP 400 with the GraphQL error ``GRAPHQL_ERROR``),
        ``"low"`` (answers, with ``X-RateLimit-Remaining: 1`` and a reset half a second
        away).
      private_users: user ids answered with AniList's 404 "Private User" error.
      missing_media: media ids left out of ``media(id_in: ...)`` answers.
      delay: seconds to wait before answering each request.
      timeout_seconds: how long a "timeout" fault stalls.
      requests: ``[(monotonic time, kind)]`` of every request received.
      port: where it listens on 127.0.0.1 (0: a free port).
    """

    def __init__(self, db, *, delay: float = 0.0, timeout_seconds: float = 1.0,
                 port: int = 0):
        self.port = port
        conn = store.connect(db, readonly=True)
        try:
            self.users = store.read_users(conn).set_index("user_id", drop=False)
            self.media = store.read_media(conn).set_index("media_id", drop=False)
            entries = store.read_entries(conn)
        finally:
            conn.close()
        self.entries = {u: g for u, g in entries.groupby("user_id")}
        self.faults: dict = defaultdict(list)
        self.private_users: set[int] = set()
        self.missing_media: set[int] = set()
        self.delay, self.timeout_seconds = delay, timeout_seconds
        self.requests: list[tuple[float, str]] = []
        self.request_event = threading.Event()
        self.notify_after: int | None = None
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> "AniListStandIn":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                status, headers, payload = server.answer(body["query"], body.get("variables") or {})
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        return self._serve(Handler)

    @property
    def url(self) -> str:
        return self.origin + "/"

    # -- dispatch -------------------------------------------------------------------
    def answer(self, query: str, variables: dict):
        if "MediaListCollection" in query:
            kind, key = "list", ("list", variables["userId"])
        elif "mediaList(" in query:
            kind, key = "last", ("last", variables["userId"])
        elif "media(id_in" in query:
            kind, key = "media", ("media", (variables["ids"] or [None])[0])
        elif "users(" in query:
            kind, key = "page", ("page", variables["page"])
        elif "User(" in query:
            kind, key = "user", ("user", variables.get("id"))
        else:
            return 400, {}, json.dumps({"data": None, "errors": [
                {"message": "Unknown query", "status": 400}]}).encode()
        with self._lock:
            self.requests.append((time.monotonic(), kind))
            n = len(self.requests)
            fault = None
            for k in (key, "any"):
                if self.faults.get(k):
                    fault = self.faults[k].pop(0)
                    break
        if self.notify_after is not None and n >= self.notify_after:
            self.request_event.set()
        if self.delay:
            time.sleep(self.delay)
        headers = {"X-RateLimit-Limit": "90", "X-RateLimit-Remaining": "60"}
        if fault == "429":
            return 429, {"Retry-After": "0", "X-RateLimit-Reset": str(int(time.time())),
                         "X-RateLimit-Remaining": "0"}, json.dumps(
                {"data": None, "errors": [{"message": "Too Many Requests.", "status": 429}]}).encode()
        if fault in ("500", "503"):
            return int(fault), {}, b"<html>Bad Gateway</html>"
        if fault == "disabled":
            return 403, {}, json.dumps({"data": None, "errors": [
                {"message": "The AniList API has been temporarily disabled", "status": 403}]}).encode()
        if fault == "graphql":
            return 400, {}, json.dumps({"data": None, "errors": [
                {"message": GRAPHQL_ERROR, "status": 400}]}).encode()
        if fault == "timeout":
            time.sleep(self.timeout_seconds)
        if fault == "low":  # a normal answer that says the window is nearly spent
            headers = {"X-RateLimit-Limit": "90", "X-RateLimit-Remaining": "1",
                       "X-RateLimit-Reset": str(time.time() + 0.5)}
        status, data = getattr(self, f"_{kind}")(variables)
        payload = json.dumps(data).encode()
        if fault == "truncated":
            payload = payload[: len(payload) // 2]
        return status, headers, payload

    # -- AniList shapes -------------------------------------------------------------
    def _user_json(self, user_id):
        u = self.users.loc[user_id]
        return {"id": int(user_id), "name": u["name"],
                "createdAt": _int(u["created_at"]) or 0, "updatedAt": _int(u["updated_at"]) or 0,
                "statistics": {"anime": {
                    "count": _int(u["anime_count"]), "meanScore": _float(u["mean_score"]),
                    "standardDeviation": _float(u["std_score"]),
                    "minutesWatched": _int(u["minutes_watched"]),
                    "episodesWatched": _int(u["episodes_watched"])}}}

    def _private(self, user_id):
        return 404, {"data": None, "errors": [{"message": "Private User", "status": 404}]}

    def _page(self, variables):
        page, per_page = variables["page"], min(variables.get("perPage") or 50, 50)
        ids = sorted(self.users.index)
        chunk = ids[(page - 1) * per_page: page * per_page]
        return 200, {"data": {"Page": {
            "pageInfo": {"hasNextPage": page * per_page < len(ids)},
            "users": [self._user_json(i) for i in chunk]}}}

    def _user(self, variables):
        user_id = variables.get("id")
        if user_id is None:
            match = self.users.index[self.users["name"] == variables.get("name")]
            user_id = int(match[0]) if len(match) else None
        if user_id is None or user_id not in self.users.index:
            return 404, {"data": {"User": None}, "errors": [{"message": "Not Found.", "status": 404}]}
        if user_id in self.private_users:
            return self._private(user_id)
        return 200, {"data": {"User": self._user_json(user_id)}}

    def _entry_json(self, e):
        return {"mediaId": int(e.media_id), "status": e.status, "score": int(e.score),
                "progress": _int(e.progress), "repeat": _int(e.repeat),
                "createdAt": _int(e.created_at) or 0, "updatedAt": _int(e.updated_at) or 0,
                "completedAt": _fuzzy(_int(e.completed_at))}

    def _list(self, variables):
        user_id = variables["userId"]
        if user_id in self.private_users:
            return self._private(user_id)
        rows = self.entries.get(user_id)
        rows = [] if rows is None else list(rows.itertuples(index=False))
        chunk, per = variables.get("chunk") or 1, variables.get("perChunk") or 500
        part = rows[(chunk - 1) * per: chunk * per]
        lists: dict[str, dict] = {}
        custom = {"name": "My picks", "isCustomList": True, "entries": []}
        for i, e in enumerate(part):
            item = self._entry_json(e)
            # Every 11th entry is hidden from the status lists (custom list only); every
            # 7th appears in both: the crawler must read both and de-duplicate.
            if i % 11 != 10:
                name = STATUS_LISTS[e.status]
                lists.setdefault(name, {"name": name, "isCustomList": False, "entries": []})
                lists[name]["entries"].append(item)
            if i % 11 == 10 or i % 7 == 0:
                custom["entries"].append(item)
        favourites = [{"id": int(e.media_id)} for e in rows if e.is_favourite]
        return 200, {"data": {"MediaListCollection": {
            "hasNextChunk": chunk * per < len(rows),
            "lists": list(lists.values()) + ([custom] if custom["entries"] else []),
            "user": {"id": user_id, "favourites": {"anime": {"nodes": favourites}}}}}}

    def _last(self, variables):
        user_id = variables["userId"]
        if user_id in self.private_users:
            return self._private(user_id)
        rows = self.entries.get(user_id)
        latest = [] if rows is None else [{"updatedAt": int(rows["updated_at"].max())}]
        return 200, {"data": {"Page": {"mediaList": latest}}}

    def _media(self, variables):
        out = []
        for media_id in variables["ids"]:
            if media_id in self.missing_media or media_id not in self.media.index:
                continue
            m = self.media.loc[media_id]
            num = _int
            out.append({
                "id": int(media_id), "idMal": num(m["id_mal"]),
                "title": {"romaji": m["title_romaji"], "english": m["title_english"]},
                "format": m["format"], "status": m["status"], "episodes": num(m["episodes"]),
                "duration": num(m["duration"]), "source": m["source"], "season": m["season"],
                "seasonYear": num(m["season_year"]), "averageScore": num(m["average_score"]),
                "meanScore": num(m["mean_score"]), "popularity": num(m["popularity"]),
                "favourites": num(m["favourites"]),
                "isAdult": None if pd.isna(m["is_adult"]) else bool(m["is_adult"]),
                "countryOfOrigin": m["country"],
                "studios": {"nodes": [] if pd.isna(m["studio"]) else [{"name": m["studio"]}]},
                "genres": list(m["genres"]), "tags": list(m["tags"]),
                "description": m["description"]})
        return 200, {"data": {"Page": {"media": out}}}


def main(argv: list[str] | None = None) -> int:
    from pipelines.errors import AnirankError

    parser = argparse.ArgumentParser(
        prog="python -m tests.anilist_server",
        description="Serves a raw store (e.g. the synthetic world of `make run`) as AniList's "
                    "GraphQL API on 127.0.0.1 until Ctrl-C, in AniList's response shapes, "
                    "for `python data_query.py --endpoint`. No faults are injected.")
    parser.add_argument("--db", default="data/anirank.db",
                        help="raw store to serve (default: %(default)s)")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="seconds to wait before each answer (default: %(default)s)")
    port_argument(parser, 8766)
    args = parser.parse_args(argv)
    try:
        server = AniListStandIn(args.db, delay=args.delay, port=args.port)
    except AnirankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    def describe(server: AniListStandIn) -> list[str]:
        entries = sum(len(rows) for rows in server.entries.values())
        return [f"stand-in AniList GraphQL API at {server.url} serving {args.db} "
                f"({len(server.users):,} users, {len(server.media):,} titles, "
                f"{entries:,} list entries; Ctrl-C stops it)",
                "crawl it into a store of its own with data_query.py, passing:",
                f"  --endpoint {server.url} --rate 0 --db data/anilist.db",
                f"e.g. python data_query.py users --pages 10 --endpoint {server.url} "
                "--rate 0 --db data/anilist.db"]

    return serve_until_interrupted(server, describe)


if __name__ == "__main__":
    sys.exit(main())
