"""A stand-in AniList GraphQL server on 127.0.0.1 for the crawler's tests.

It serves a world read from a raw store (e.g. a synthetic one) in AniList's response
shapes, for the queries ``data_query.py`` sends, and behaves as AniList does where the
crawler must get it right: favourites 25 a page with ``pageInfo``, enum values in the
version a query asks for (version 1 without one), lists cut to their ``list_cap`` most
recently updated entries, private and unknown users as HTTP 404 "Not Found.", a
complexity error for a media query of a ``perPage`` over ``max_media_per_page``, and,
with ``rate_limit``, AniList's degraded rate limit (headers that say 90 while it enforces
fewer, a 429 with ``Retry-After`` and a timeout when exceeded). It can inject the faults the crawler must
survive: 429 with Retry-After, 5xx, slow answers (timeouts), truncated JSON, GraphQL
errors, titles AniList no longer returns, and a 403 "API disabled". It records when each
request arrived and when each was counted against the rate limit, so tests measure the
client's rate as the server sees it.

A world that moves. Given a synthetic world's future (``future=``, ``<db>.future.db``:
see ``pipelines.synth.read_future``), the server has a clock, ``now`` (Unix seconds; None:
the store as it is), which a test may set at any time, from any thread. Every answer is
the world as of ``now``: a user's list is the store's entries with, per title, the latest
future version whose ``updatedAt`` is at most ``now`` in its place (new entries added),
and the user's ``updatedAt``, statistics, favourites and refresh's check
(``mediaList(sort: UPDATED_TIME_DESC)``) follow from that list. A new title is answered
by ``media(id_in: ...)`` once it exists: from the moment it appears on the site (its
``fetched_at`` in the future file; no list can hold it before). Titles' statistics
(popularity, scores) stay the crawl's. So ``data_query.py refresh`` at the end of a
day brings that day's changes into a crawled store through the real client code path.

From the command line (the README's "Try it without network"), serving a store until
Ctrl-C, e.g. the synthetic world `make run` writes:

    python -m tests.anilist_server --db data/anirank.db --port 8766
    python data_query.py users --discover --pages 10 --endpoint http://127.0.0.1:8766/ --rate 0

With its future, the clock at the crawl (``--now``: Unix seconds or an ISO date in UTC;
default the future's start), moved by another process with a POST to ``/_clock`` on the
same port (``{"now": seconds}``, ``{"day": d}`` for the end of the future's day ``d``, or
``{"now": null}`` for the store as it is; answered only to loopback clients, with the
clock as ``{"now", "start", "days"}``, which ``GET /_clock`` also answers):

    python -m tests.anilist_server --db data/anirank.db --future data/anirank.db.future.db --port 8766
    curl -s -X POST -d '{"day": 1}' http://127.0.0.1:8766/_clock
    python data_query.py refresh --endpoint http://127.0.0.1:8766/ --rate 0 --db data/anilist.db
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import math
import sys
import threading
import time
from collections import Counter, defaultdict
from functools import lru_cache
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import graphql
import numpy as np
import pandas as pd

from pipelines import store, synth
from pipelines.errors import InputError
from tests.loopback import LoopbackServer, port_argument, serve_until_interrupted


def _int(v):
    return None if v is None or pd.isna(v) else int(v)


def _float(v):
    return None if v is None or pd.isna(v) else float(v)


# What the "graphql" fault answers (HTTP 400): the example of AniList's guide to errors.
GRAPHQL_ERROR = 'Cannot query field "nonexistentField" on type "MediaList".'
STATUS_LISTS = {"COMPLETED": "Completed", "CURRENT": "Watching", "PAUSED": "Paused",
                "DROPPED": "Dropped", "PLANNING": "Planning", "REPEATING": "Rewatching"}

# AniList's schema, from its published API reference (tests/make_anilist_schema.py).
SCHEMA_FILE = Path(__file__).with_name("anilist_schema.graphql")


@lru_cache(maxsize=None)
def schema() -> graphql.GraphQLSchema:
    return graphql.build_schema(SCHEMA_FILE.read_text(encoding="utf-8"))


def rejection(query) -> bytes | None:
    """AniList's HTTP 400 body for a query that does not parse or does not validate
    against its schema (every request is checked before it is answered), else None."""
    if not isinstance(query, str) or not query.strip():
        return _errors_body((graphql.GraphQLError("Must provide query string."),))
    return _validated(query)


@lru_cache(maxsize=256)  # the crawler sends a handful of distinct query texts
def _validated(query: str) -> bytes | None:
    try:
        errors = graphql.validate(schema(), graphql.parse(query))
    except graphql.GraphQLError as err:  # a syntax error
        errors = [err]
    return _errors_body(errors) if errors else None


def _errors_body(errors) -> bytes:
    return json.dumps({"errors": [
        {"message": e.message, "status": 400,
         "locations": [{"line": at.line, "column": at.column} for at in e.locations or ()]}
        for e in errors], "data": None}).encode()


def _fuzzy(seconds):
    if seconds is None:
        return {"year": None, "month": None, "day": None}
    d = dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc)
    return {"year": d.year, "month": d.month, "day": d.day}


# Enum values by version (AniList's reference: docs/reference/enum/mediasource.md and
# mediastatus.md). A value newer than the version asked for is answered as OTHER /
# RELEASING: what AniList answers then is not documented; the point is that it is not
# the newer value.
SOURCE_VERSIONS = {1: {"ORIGINAL", "MANGA", "LIGHT_NOVEL", "VISUAL_NOVEL", "VIDEO_GAME",
                       "OTHER"}}
SOURCE_VERSIONS[2] = SOURCE_VERSIONS[1] | {"NOVEL", "DOUJINSHI", "ANIME"}
SOURCE_VERSIONS[3] = SOURCE_VERSIONS[2] | {"WEB_NOVEL", "LIVE_ACTION", "GAME", "COMIC",
                                           "MULTIMEDIA_PROJECT", "PICTURE_BOOK"}
STATUS_VERSIONS = {1: {"FINISHED", "RELEASING", "NOT_YET_RELEASED", "CANCELLED"}}
STATUS_VERSIONS[2] = STATUS_VERSIONS[1] | {"HIATUS"}
NOT_FOUND = {"message": "Not Found.", "status": 404}  # AniList's answer for a private user


def _in_version(value, versions: dict, version, fallback):
    known = versions.get(version or 1, versions[max(versions)])
    return value if value is None or pd.isna(value) or value in known else fallback


@lru_cache(maxsize=256)
def _selections(query: str) -> dict:
    """Each field name in ``query`` -> ``(arguments, directives)`` of its first selection:
    ``{argument: value}`` and ``{directive: {argument: value}}``, a value being a literal
    or ``"$name"`` for a variable."""
    def value(node):
        if isinstance(node, graphql.VariableNode):
            return "$" + node.name.value
        return graphql.value_from_ast_untyped(node)

    def arguments(node):
        return {a.name.value: value(a.value) for a in node.arguments or ()}

    found = {}

    class Fields(graphql.Visitor):
        def enter_field(self, node, *_):
            found.setdefault(node.name.value, (
                arguments(node), {d.name.value: arguments(d) for d in node.directives or ()}))

    graphql.visit(graphql.parse(query), Fields())
    return found


def _argument(query: str, variables: dict, field: str, name: str, default=None):
    """The value ``field``'s argument ``name`` has in this request, or ``default``."""
    value = _selections(query).get(field, ({}, {}))[0].get(name, default)
    if isinstance(value, str) and value.startswith("$"):
        value = variables.get(value[1:], default)
    return default if value is None else value


def _included(query: str, variables: dict, field: str) -> bool:
    """Whether ``field`` is selected in this request (``@include`` / ``@skip`` applied)."""
    if field not in _selections(query):
        return False
    directives = _selections(query)[field][1]
    resolve = lambda v: variables.get(v[1:]) if isinstance(v, str) and v.startswith("$") else v  # noqa: E731
    if "include" in directives and not resolve(directives["include"].get("if")):
        return False
    return not ("skip" in directives and resolve(directives["skip"].get("if")))


class AniListStandIn(LoopbackServer):
    """``with AniListStandIn(db) as server: server.url``.

    Attributes:
      faults: ``{key: [fault, ...]}``; each request matching ``key`` pops the next fault.
        Keys: ``("list", user_id)``, ``("favourites", user_id)``, ``("media",
        first_id_of_batch)``, ``("page", n)``, ``("user", id)``, ``("last", user_id)``, or
        ``"any"`` (the next requests of any kind). Faults: ``"429"`` (with ``Retry-After:
        retry_after``), ``"500"``, ``"503"``, ``"timeout"``, ``"slow"`` (answers after
        ``slow_seconds``), ``"truncated"``, ``"disabled"``, ``"graphql"`` (HTTP 400 with
        the GraphQL error ``GRAPHQL_ERROR``).
      private_users: user ids answered with AniList's HTTP 404 "Not Found." error.
      missing_media: media ids left out of ``media(id_in: ...)`` answers.
      max_media_per_page: a media query of a larger ``perPage`` is refused as too complex,
        as AniList refuses a query over its complexity limit (HTTP 400); None: no limit.
      list_cap: a list collection holds at most this many of the user's most recently
        updated entries (AniList: 11,000).
      rate_limit: requests per ``rate_window`` seconds the server serves (a sliding window,
        counting each request when it is answered, after ``delay`` and slow faults, as a
        server counts a request when a worker takes it from its queue); more get HTTP 429
        with ``Retry-After`` and a timeout of ``retry_after`` seconds in which every
        request gets 429. The ``X-RateLimit-*`` headers say 90 regardless, as AniList's
        do while it runs degraded at 30. None: no limit.
      delay: seconds to wait before answering each request.
      timeout_seconds: how long a "timeout" fault stalls (at most: leaving the ``with``
        block ends every stall, so a long one never outlives the server).
      pause_at: ``(kind, n)``: the ``n``-th request of that kind (counted from 1) sets
        ``paused`` and is not answered until ``resume`` is set (leaving the ``with`` block
        sets it): a test can act (e.g. SIGKILL the client) at an exact point of a crawl.
      requests: ``[(monotonic time, kind)]`` of every request received.
      served: monotonic times at which requests were counted against the rate limit
        (answered, not 429); ``throttled``: the 429s the rate limit answered.
      favourite_pages: ``{user_id: favourites pages served}``.
      port: where it listens on 127.0.0.1 (0: a free port).
      entries: ``{user_id: the store's entries}``, the lists before any future version.
      future: the world's ``synth.Future`` (None: the world stands still).
      now: the clock (Unix seconds; None: the store as it is), settable at any time.
    """

    def __init__(self, db, *, future=None, now: int | None = None, delay: float = 0.0,
                 timeout_seconds: float = 1.0,
                 slow_seconds: float = 0.5, rate_limit: int | None = None,
                 rate_window: float = 60.0, retry_after: float = 60.0,
                 list_cap: int = 11_000, max_media_per_page: int | None = None, port: int = 0):
        self.port = port
        conn = store.connect(db, readonly=True)
        try:
            self.users = store.read_users(conn).set_index("user_id", drop=False)
            self.media = store.read_media(conn).set_index("media_id", drop=False)
            entries = store.read_entries(conn)
        finally:
            conn.close()
        self.entries = {u: g for u, g in entries.groupby("user_id")}
        self.future = None if future is None else synth.read_future(db, future)
        self._versions: dict[int, pd.DataFrame] = {}
        self._version_times: dict[int, np.ndarray] = {}
        self._new_media = self.media.iloc[:0]
        self._durations = self.media["duration"]
        if self.future is not None:
            versions = self.future.versions
            self._versions = {u: g.reset_index(drop=True) for u, g in versions.groupby("user_id")}
            self._version_times = {u: g["updated_at"].to_numpy() for u, g in self._versions.items()}
            self._new_media = self.future.media.set_index("media_id", drop=False)
            self._durations = pd.concat([self.media["duration"], self._new_media["duration"]])
        self._overlays: dict = {}
        self._clock_lock = threading.Lock()
        self._now = None
        self.now = (self.future.start if self.future is not None else None) if now is None else now
        self.faults: dict = defaultdict(list)
        self.private_users: set[int] = set()
        self.missing_media: set[int] = set()
        self.max_media_per_page, self.list_cap = max_media_per_page, list_cap
        self.rate_limit, self.rate_window, self.retry_after = rate_limit, rate_window, retry_after
        self.delay, self.timeout_seconds, self.slow_seconds = delay, timeout_seconds, slow_seconds
        self.requests: list[tuple[float, str]] = []
        self._kind_counts: Counter = Counter()
        self.served: list[float] = []
        self.throttled = 0
        self.favourite_pages: Counter = Counter()
        self._timeout_until = 0.0
        self.request_event = threading.Event()
        self.notify_after: int | None = None
        self.pause_at: tuple[str, int] | None = None
        self.paused, self.resume = threading.Event(), threading.Event()
        self._lock = threading.Lock()

    # -- the clock ------------------------------------------------------------------
    @property
    def now(self) -> int | None:
        with self._clock_lock:
            return self._now

    @now.setter
    def now(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not float(value).is_integer()):
            raise InputError(f"The clock is Unix seconds (an integer) or None; got {value!r}.")
        with self._clock_lock:
            self._now = None if value is None else int(value)

    def set_clock(self, body: dict) -> int | None:
        """Sets the clock from a ``/_clock`` request body: ``{"now": seconds or null}``
        or ``{"day": d}`` (the end of the future's day ``d``); returns the new ``now``.

        Raises:
          InputError: the body is neither, or ``day`` is outside the future.
        """
        if not isinstance(body, dict) or len(body.keys() & {"now", "day"}) != 1:
            raise InputError('POST /_clock takes {"now": <Unix seconds or null>} or '
                             f'{{"day": <day of the future>}}; got {body!r}.')
        if "day" in body:
            if self.future is None:
                raise InputError('{"day": d} needs a future (start the server with '
                                 '--future); pass {"now": <Unix seconds>} instead.')
            if not isinstance(body["day"], int) or isinstance(body["day"], bool):
                raise InputError(f'"day" is a whole number of days; got {body["day"]!r}.')
            self.now = self.future.day_span(body["day"])[1]
        else:
            self.now = body["now"]
        return self.now

    def clock(self) -> dict:
        """The clock and the span of the future it can move through."""
        return {"now": self.now, "start": self.future and self.future.start,
                "days": self.future and self.future.days}

    def _rows(self, user_id, now):
        """The user's list as of ``now``: the store's entries, each title's latest future
        version up to ``now`` in its place (None: no list)."""
        base = self.entries.get(user_id)
        times = self._version_times.get(user_id)
        if times is None or now is None:
            return base
        shown = int(np.searchsorted(times, now, side="right"))
        if shown == 0:
            return base
        key = (user_id, shown, id(base))
        with self._lock:
            rows = self._overlays.get(key)
        if rows is None:
            versions = self._versions[user_id].iloc[:shown]
            if base is None:  # a user with no list in the store yet
                base = pd.DataFrame(columns=list(store.ENTRY_COLUMNS)).astype(versions.dtypes)
            rows = synth.entries_as_of(base, versions, now)
            with self._lock:
                self._overlays[key] = rows
        return rows

    def _moved(self, user_id, now) -> bool:
        """Whether the user's list has future versions shown at ``now``."""
        times = self._version_times.get(user_id)
        return times is not None and now is not None and times[0] <= now

    # -- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> "AniListStandIn":
        server = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as AniList's HTTPS endpoint: the client's session reuses one
            # connection instead of opening one per request (every answer has a length;
            # without Nagle, the body does not wait for the ACK of the headers).
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status, headers, payload):
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

            def _clock(self, body=None):
                """``/_clock``: the test's (or a shell's) hand on the clock; loopback only."""
                if self.client_address[0] not in ("127.0.0.1", "::1"):
                    return self._send(
                        403, {}, b'{"error": "the clock is moved from loopback only"}')
                if body is not None:
                    try:
                        server.set_clock(json.loads(body or b"null"))
                    except (ValueError, InputError) as err:
                        return self._send(400, {}, json.dumps({"error": str(err)}).encode())
                self._send(200, {}, json.dumps(server.clock()).encode())

            def do_GET(self):
                if self.path.rstrip("/") == "/_clock":
                    return self._clock()
                self._send(404, {}, b'{"error": "GraphQL is POST /; the clock is /_clock"}')

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if self.path.rstrip("/") == "/_clock":
                    return self._clock(raw)
                body = json.loads(raw)
                rejected = rejection(body.get("query"))  # validated against the schema first
                status, headers, payload = (400, {}, rejected) if rejected else server.answer(
                    body["query"], body.get("variables") or {})
                self._send(status, headers, payload)

        self.resume.clear()
        return self._serve(Handler)

    def __exit__(self, *exc):
        self.resume.set()  # no handler is left waiting on a pause or a stall
        super().__exit__(*exc)

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
        elif "favourites" in query and "User(" in query:
            kind, key = "favourites", ("favourites", variables.get("userId"))
        elif "User(" in query:
            kind, key = "user", ("user", variables.get("id"))
        else:
            return 400, {}, json.dumps({"data": None, "errors": [
                {"message": "Unknown query", "status": 400}]}).encode()
        with self._lock:
            self.requests.append((time.monotonic(), kind))
            self._kind_counts[kind] += 1
            n = len(self.requests)
            pause = self.pause_at == (kind, self._kind_counts[kind])
            fault = None
            for k in (key, "any"):
                if self.faults.get(k):
                    fault = self.faults[k].pop(0)
                    break
        if self.notify_after is not None and n >= self.notify_after:
            self.request_event.set()
        if pause:
            self.paused.set()
            self.resume.wait()
        if self.delay:
            time.sleep(self.delay)
        if fault == "timeout":
            self.resume.wait(self.timeout_seconds)
        elif fault == "slow":
            time.sleep(self.slow_seconds)
        with self._lock:  # counted now, as a worker takes it
            now = time.monotonic()
            used = len(self.served) - bisect.bisect_right(self.served, now - self.rate_window)
            if now < self._timeout_until or (self.rate_limit is not None
                                             and used >= self.rate_limit):
                if now >= self._timeout_until:  # AniList: a 1-minute timeout starts
                    self._timeout_until = now + self.retry_after
                self.throttled += 1
                return self._too_many(self._timeout_until - now)
            self.served.append(now)
        # AniList's headers while degraded: a limit of 90, whatever it enforces; no
        # X-RateLimit-Reset or Retry-After but with a 429.
        headers = {"X-RateLimit-Limit": "90", "X-RateLimit-Remaining": str(max(89 - used, 0))}
        if fault == "429":
            return self._too_many(self.retry_after)
        if fault in ("500", "503"):
            return int(fault), {}, b"<html>Bad Gateway</html>"
        if fault == "disabled":
            return 403, {}, json.dumps({"data": None, "errors": [
                {"message": "The AniList API has been temporarily disabled", "status": 403}]}).encode()
        if fault == "graphql":
            return 400, {}, json.dumps({"data": None, "errors": [
                {"message": GRAPHQL_ERROR, "status": 400}]}).encode()
        status, data = getattr(self, f"_{kind}")(query, variables, self.now)
        payload = json.dumps(data).encode()
        if fault == "truncated":
            payload = payload[: len(payload) // 2]
        return status, headers, payload

    @staticmethod
    def _too_many(seconds: float):
        wait = max(math.ceil(seconds), 0)
        return 429, {"Retry-After": str(wait), "X-RateLimit-Reset": str(int(time.time()) + wait),
                     "X-RateLimit-Limit": "90", "X-RateLimit-Remaining": "0"}, json.dumps(
            {"data": None, "errors": [{"message": "Too Many Requests.", "status": 429}]}).encode()

    # -- AniList shapes -------------------------------------------------------------
    def _user_json(self, user_id, now):
        u = self.users.loc[user_id]
        updated = _int(u["updated_at"]) or 0
        stats = {"count": _int(u["anime_count"]), "meanScore": _float(u["mean_score"]),
                 "standardDeviation": _float(u["std_score"]),
                 "minutesWatched": _int(u["minutes_watched"]),
                 "episodesWatched": _int(u["episodes_watched"])}
        if self._moved(user_id, now):  # the list moved on: so did the profile
            rows = self._rows(user_id, now)
            updated = max(updated, int(rows["updated_at"].max()))
            stats = self._statistics(rows)
        return {"id": int(user_id), "name": u["name"], "createdAt": _int(u["created_at"]) or 0,
                "updatedAt": updated, "statistics": {"anime": stats}}

    def _statistics(self, rows) -> dict:
        """A list's statistics as ``store.refresh_user_stats`` counts them for the
        synthetic world (SQL's AVG and SUM: NULLs left out)."""
        scores = rows.loc[rows["score"] > 0, "score"].to_numpy(float)
        progress = rows["progress"].astype("Float64")
        minutes = progress * rows["media_id"].map(self._durations).astype("Float64")
        return {"count": int((rows["status"] != "PLANNING").sum()),
                "meanScore": float(scores.mean()) if len(scores) else None,
                "standardDeviation": float(scores.std()) if len(scores) else None,
                "minutesWatched": _int(minutes.sum()) if minutes.notna().any() else None,
                "episodesWatched": _int(progress.sum()) if progress.notna().any() else None}

    def _not_found(self):
        return 404, {"errors": [NOT_FOUND], "data": None}

    def _page(self, query, variables, now):
        page, per_page = variables["page"], min(variables.get("perPage") or 50, 50)
        ids = sorted(self.users.index)
        chunk = ids[(page - 1) * per_page: page * per_page]
        return 200, {"data": {"Page": {
            "pageInfo": {"hasNextPage": page * per_page < len(ids)},
            "users": [self._user_json(i, now) for i in chunk]}}}

    def _user(self, query, variables, now):
        user_id = variables.get("id")
        if user_id is None:
            match = self.users.index[self.users["name"] == variables.get("name")]
            user_id = int(match[0]) if len(match) else None
        if user_id is None or user_id not in self.users.index or user_id in self.private_users:
            return self._not_found()
        return 200, {"data": {"User": self._user_json(user_id, now)}}

    def _entry_json(self, e):
        return {"mediaId": int(e.media_id), "status": e.status, "score": int(e.score),
                "progress": _int(e.progress), "repeat": _int(e.repeat),
                "createdAt": _int(e.created_at) or 0, "updatedAt": _int(e.updated_at) or 0,
                "completedAt": _fuzzy(_int(e.completed_at))}

    def _favourites_json(self, query, variables, user_id, now):
        """``{"id", "favourites": {"anime": ...}}``: one page of 25 at most, as AniList."""
        rows = self._rows(user_id, now)
        ids = [] if rows is None else [int(m) for m in rows.loc[rows["is_favourite"], "media_id"]]
        page = _argument(query, variables, "anime", "page", 1)
        per_page = min(_argument(query, variables, "anime", "perPage", 25), 25)
        with self._lock:
            self.favourite_pages[user_id] += 1
        return {"id": user_id, "favourites": {"anime": {
            "pageInfo": {"hasNextPage": page * per_page < len(ids)},
            "nodes": [{"id": m} for m in ids[(page - 1) * per_page: page * per_page]]}}}

    def _list(self, query, variables, now):
        user_id = variables["userId"]
        if user_id in self.private_users or user_id not in self.users.index:
            return self._not_found()
        rows = self._rows(user_id, now)
        if rows is not None and len(rows) > self.list_cap:  # the most recently updated
            rows = rows.sort_values(["updated_at", "media_id"], ascending=[False, True])
            rows = rows.head(self.list_cap).sort_values("media_id")
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
        collection = {"hasNextChunk": chunk * per < len(rows),
                      "lists": list(lists.values()) + ([custom] if custom["entries"] else [])}
        if _included(query, variables, "user"):
            collection["user"] = self._favourites_json(query, variables, user_id, now)
        return 200, {"data": {"MediaListCollection": collection}}

    def _favourites(self, query, variables, now):
        user_id = variables.get("userId")
        if user_id in self.private_users or user_id not in self.users.index:
            return self._not_found()
        return 200, {"data": {"User": self._favourites_json(query, variables, user_id, now)}}

    def _last(self, query, variables, now):
        """Refresh's check: the newest list update, and the user's statistics by status
        (counted from the list as it is now)."""
        user_id = variables["userId"]
        if user_id in self.private_users or user_id not in self.users.index:
            return self._not_found()
        rows = self._rows(user_id, now)
        latest = [] if rows is None else [{"updatedAt": int(rows["updated_at"].max())}]
        statuses = ([] if rows is None else
                    zip(*np.unique(rows["status"].to_numpy().astype(str), return_counts=True)))
        return 200, {"data": {
            "Page": {"mediaList": latest},
            "User": {"statistics": {"anime": {"statuses": [
                {"status": str(s), "count": int(c)} for s, c in statuses]}}}}}

    def _title(self, media_id, now):
        """The title's row if it exists at ``now`` (the store's, or a new one that has
        appeared by then), else None."""
        if media_id in self.media.index:
            return self.media.loc[media_id]
        if media_id in self._new_media.index and now is not None:
            row = self._new_media.loc[media_id]
            if row["fetched_at"] <= now:
                return row
        return None

    def _media(self, query, variables, now):
        per_page = _argument(query, variables, "Page", "perPage", 50)
        if self.max_media_per_page is not None and per_page > self.max_media_per_page:
            got = math.ceil(500 * per_page / self.max_media_per_page)
            return 400, {"errors": [{"message": f"Max query complexity should be 500 but "
                                                f"got {got}.", "status": 400}], "data": None}
        source_version = _argument(query, variables, "source", "version")
        status_version = _argument(query, variables, "status", "version")
        out = []
        for media_id in variables["ids"]:
            m = None if media_id in self.missing_media else self._title(media_id, now)
            if m is None:
                continue
            num = _int
            out.append({
                "id": int(media_id), "idMal": num(m["id_mal"]),
                "title": {"romaji": m["title_romaji"], "english": m["title_english"]},
                "format": m["format"],
                "status": _in_version(m["status"], STATUS_VERSIONS, status_version, "RELEASING"),
                "episodes": num(m["episodes"]), "duration": num(m["duration"]),
                "source": _in_version(m["source"], SOURCE_VERSIONS, source_version, "OTHER"),
                "season": m["season"],
                "seasonYear": num(m["season_year"]), "averageScore": num(m["average_score"]),
                "meanScore": num(m["mean_score"]), "popularity": num(m["popularity"]),
                "favourites": num(m["favourites"]),
                "isAdult": None if pd.isna(m["is_adult"]) else bool(m["is_adult"]),
                "countryOfOrigin": m["country"],
                "studios": {"nodes": [] if pd.isna(m["studio"]) else [{"name": m["studio"]}]},
                "genres": list(m["genres"]), "tags": list(m["tags"]),
                "description": m["description"]})
        return 200, {"data": {"Page": {"media": out}}}


def _moment(text: str) -> int:
    """``--now``: Unix seconds, or an ISO date / datetime (UTC unless it says otherwise)."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither Unix seconds nor an ISO date such as 2026-11-02") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp())


def _iso(seconds) -> str:
    if seconds is None:
        return "none (the store as it is)"
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def main(argv: list[str] | None = None) -> int:
    from pipelines.errors import AnirankError

    parser = argparse.ArgumentParser(
        prog="python -m tests.anilist_server",
        description="Serves a raw store (e.g. the synthetic world of `make run`) as AniList's "
                    "GraphQL API on 127.0.0.1 until Ctrl-C, in AniList's response shapes, "
                    "for `python data_query.py --endpoint`. No faults are injected; "
                    "--rate-limit plays AniList's degraded rate limit.")
    parser.add_argument("--db", default="data/anirank.db",
                        help="raw store to serve (default: %(default)s)")
    parser.add_argument("--future", default=None,
                        help="the synthetic world's future (e.g. data/anirank.db.future.db, "
                             "written by `python -m pipelines synth --future-days N`): the "
                             "world then moves with the server's clock (default: none)")
    parser.add_argument("--now", type=_moment, default=None,
                        help="the clock at start: Unix seconds or an ISO date or datetime "
                             "in UTC such as 2026-11-02 (default: the future's start, the "
                             "crawl); POST {\"now\": seconds} or {\"day\": d} to "
                             "/_clock moves it while the server runs")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="seconds to wait before each answer (default: %(default)s)")
    parser.add_argument("--rate-limit", type=int, default=0,
                        help="requests a minute served, as AniList's degraded 30 (headers "
                             "still say 90); more get HTTP 429 and a 1-minute timeout; 0: "
                             "no limit (default: %(default)s)")
    port_argument(parser, 8766)
    args = parser.parse_args(argv)
    if args.now is not None and args.future is None:
        parser.error("--now sets the clock of a world that moves: pass --future too")
    try:
        server = AniListStandIn(args.db, future=args.future, now=args.now, delay=args.delay,
                                port=args.port, rate_limit=args.rate_limit or None)
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
                f"e.g. python data_query.py users --discover --pages 10 --endpoint {server.url} "
                "--rate 0 --db data/anilist.db"] + ([
                f"the world moves: {len(server.future.versions):,} list changes and "
                f"{len(server.future.media):,} new titles over {server.future.days} days from "
                f"{_iso(server.future.start)}; clock at {_iso(server.now)}",
                f"move it: curl -s -X POST -d '{{\"day\": 1}}' {server.origin}/_clock "
                "(or {\"now\": <Unix seconds>})"] if server.future is not None else [])

    return serve_until_interrupted(server, describe)


if __name__ == "__main__":
    sys.exit(main())
