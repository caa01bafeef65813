"""AniList GraphQL -> raw store: users, their anime lists and statistics, anime metadata.

    python data_query.py users --ids FILE         # a curated list of users (or --names FILE)
    python data_query.py users --discover --pages 10  # opt-in: page through arbitrary users
    python data_query.py lists                    # fetch every known user's anime list
    python data_query.py media                    # metadata of every title seen in lists
    python data_query.py refresh                  # re-fetch lists that changed since the last crawl

AniList's terms of use forbid using the API as a data store and "hoarding or mass
collection" of its data (they are lenient with purely educational projects). So the
default is a curated list of users; discovering arbitrary users is opt-in (``--discover``)
and first states the terms and the requests it will make.

Polite and resumable by design. One request at a time, at most ``--rate`` of them
completed in any 60 s (default 25: AniList runs degraded at 30 a minute while its headers
still say 90, so they cannot be trusted), honouring ``Retry-After`` on 429. Server errors,
timeouts, broken connections and truncated JSON are retried with exponential backoff and
jitter, a bounded number of times; then the item is recorded as failed (with the reason)
and the next run retries it. An answer about one item (HTTP 404 "Not Found.": a private or
deleted user) records that item as skipped with AniList's message, never retried; a query
AniList rejects (HTTP 400: invalid, or over its complexity limit) stops the crawl with the
message and exit status 1, and marks no item. Each item's rows and its crawl state are
committed in one transaction, so a crawl killed at any moment (even SIGKILL) resumes where
it stopped, with no row lost or duplicated. Queries use GraphQL variables; nothing is
pasted into query text.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import json
import math
import random
import sys
import threading
import time
from collections.abc import Iterable
from collections import Counter
from pathlib import Path

from pipelines import _env  # noqa: F401  (every entry point imports it first)

import pandas as pd  # noqa: E402
import requests  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pipelines import store  # noqa: E402
from pipelines.config import LIST_CAP  # noqa: E402  (AniList's cap on a list)
from pipelines.errors import AnirankError, InputError, os_error_line  # noqa: E402

ENDPOINT = "https://graphql.anilist.co"
TERMS = "https://docs.anilist.co/guide/terms-of-use"
# Requests per minute. AniList documents 90 but runs degraded at 30, which its
# X-RateLimit headers do not show (they say 90, and throttling starts at Remaining 60);
# 25 leaves room for clock jitter and anything else on the same IP.
DEFAULT_RATE = 25.0
RATE_WINDOW = 60.0  # seconds: the window AniList counts requests in

USER_FIELDS = """
  id name createdAt updatedAt
  statistics { anime { count meanScore standardDeviation minutesWatched episodesWatched } }
"""
USERS_PAGE_QUERY = """
query ($page: Int, $perPage: Int) {
  Page(page: $page, perPage: $perPage) {
    pageInfo { hasNextPage }
    users(sort: ID) { %s }
  }
}""" % USER_FIELDS
USER_QUERY = """
query ($id: Int, $name: String) {
  User(id: $id, name: $name) { %s }
}""" % USER_FIELDS
FAVOURITES_PAGE = 25  # Favourites.anime's perPage maximum
# A user's favourite anime come with the first chunk of their list only (@include), 25 a
# page; FAVOURITES_QUERY fetches the pages after the first.
LIST_QUERY = """
query ($userId: Int, $chunk: Int, $perChunk: Int, $withFavourites: Boolean!) {
  MediaListCollection(userId: $userId, type: ANIME, chunk: $chunk, perChunk: $perChunk) {
    hasNextChunk
    lists {
      name isCustomList
      entries {
        mediaId status score(format: POINT_100) progress repeat createdAt updatedAt
        completedAt { year month day }
      }
    }
    user @include(if: $withFavourites) {
      id favourites { anime(page: 1, perPage: %d) { pageInfo { hasNextPage } nodes { id } } }
    }
  }
}""" % FAVOURITES_PAGE
FAVOURITES_QUERY = """
query ($userId: Int, $page: Int) {
  User(id: $userId) {
    id favourites { anime(page: $page, perPage: %d) { pageInfo { hasNextPage } nodes { id } } }
  }
}""" % FAVOURITES_PAGE
# What refresh asks per user: the newest list update, and how many entries the list has
# (the sum over statuses of the user's statistics; PageInfo.total "is not guaranteed to
# be accurate, do not rely on this for logic", says AniList's reference).
REFRESH_QUERY = """
query ($userId: Int) {
  Page(page: 1, perPage: 1) {
    mediaList(userId: $userId, type: ANIME, sort: UPDATED_TIME_DESC) { updatedAt }
  }
  User(id: $userId) { statistics { anime { statuses { status count } } } }
}"""
# source and status in the newest enum versions (MediaSource 3: WEB_NOVEL, GAME,
# PICTURE_BOOK, ...; MediaStatus 2: HIATUS); unversioned, AniList answers version 1.
MEDIA_QUERY = """
query ($ids: [Int], $perPage: Int) {
  Page(page: 1, perPage: $perPage) {
    media(id_in: $ids, type: ANIME) {
      id idMal title { romaji english } format status(version: 2) episodes duration
      source(version: 3) season seasonYear averageScore meanScore popularity favourites
      isAdult countryOfOrigin studios(isMain: true) { nodes { name } }
      genres tags { name rank } description
    }
  }
}"""
QUIET_HELP = "no progress bars (may come before or after the command)"
MEDIA_BATCH = 50   # AniList's perPage maximum
LIST_CHUNK = 500   # MediaListCollection's perChunk maximum
MAX_SKIPPED_PAGES = 5  # user pages skipped in a row (404s): nothing more to find; stop


# ---------------------------------------------------------------------------------------
# Errors.

class CrawlError(AnirankError):
    """Base of the crawler's errors."""


class GraphQLError(CrawlError):
    """AniList answered with GraphQL ``errors``; one of the two kinds below."""

    def __init__(self, messages: list[str], status: int):
        super().__init__("; ".join(messages) + f" (HTTP {status})")
        self.status = status


class NotFound(GraphQLError):
    """An answer about one item: HTTP 404 "Not Found." (a private, deleted or unknown
    user). The item is skipped with this message, never retried; the crawl goes on."""


class QueryRejected(GraphQLError):
    """AniList refused the query itself (HTTP 400: a validation error, "Max query
    complexity should be 500 ..."): every item would fail alike, so the crawl stops with
    this message and marks no item; rerun once the query is fixed."""


class TransientError(CrawlError):
    """Server errors, timeouts, broken connections or invalid JSON that outlived the
    retries: the item is recorded as failed and retried by a later run."""


class BudgetExhausted(CrawlError):
    """``--max-requests`` were made: the crawl stops cleanly; rerun to continue."""


# ---------------------------------------------------------------------------------------
# The client.

@dataclasses.dataclass
class ClientStats:
    requests: int = 0
    rate_limited: int = 0      # 429s received
    retries: int = 0
    waited_seconds: float = 0.0


class RateLimiter:
    """At most ``per_window`` requests completed in any ``window`` seconds (a sliding
    window over completion times), and starts spread evenly (``window / per_window``
    apart: no bursts for AniList's burst limiter). Counting completions rather than
    starts is what makes it hold at the server: the next request starts only once the
    ``per_window``-th most recent one completed ``window`` seconds ago, so however long a
    request waited in transit or in the server's queue before it was counted, the server
    never counts more than ``per_window`` in its window. ``per_window <= 0``: off (429
    pauses still hold). Thread-safe: each caller reserves its start under a lock and
    sleeps outside it, so clients of several threads share one limit (the service's
    lookups) and no lock is held while a request is in flight."""

    def __init__(self, per_window: float, window: float = RATE_WINDOW,
                 clock=time.monotonic, sleep=time.sleep):
        # A fractional rate (e.g. 0.5 a minute): one request per a longer window.
        self.limit = max(1, math.floor(per_window)) if per_window > 0 else 0
        self.window = window * self.limit / per_window if per_window > 0 else 0.0
        self.interval = self.window / self.limit if self.limit else 0.0
        self.clock, self.sleep = clock, sleep
        self._completed: collections.deque = collections.deque(maxlen=self.limit or 1)
        self._last_start = -math.inf
        self._hold_until = 0.0
        self._lock = threading.Lock()

    def wait(self, at_most: float | None = None) -> float | None:
        """Sleeps until the next request may start; returns the seconds slept. With
        ``at_most``: None, without waiting or taking a turn, when the start is further
        away than that (a caller with a deadline)."""
        with self._lock:
            now = self.clock()
            start = max(now, self._hold_until)
            if self.limit:
                start = max(start, self._last_start + self.interval)
                if len(self._completed) == self.limit:
                    start = max(start, self._completed[0] + self.window)
            if at_most is not None and start - now > at_most:
                return None
            self._last_start = start
        if start > now:
            self.sleep(start - now)
        return start - now

    def completed(self) -> None:
        """Records that a request completed (answered, failed or timed out) now."""
        with self._lock:
            self._completed.append(self.clock())

    def hold(self, seconds: float) -> None:
        """No request for ``seconds`` from now (429, a paused API, backoff)."""
        with self._lock:
            self._hold_until = max(self._hold_until, self.clock() + seconds)


class AniListClient:
    """POSTs GraphQL queries with variables; retries, backs off and rate-limits.

    Args:
      endpoint: GraphQL URL (tests point it at a stand-in server on 127.0.0.1).
      rate: requests per ``window`` (a minute), at most (0 = no client-side limit).
      window: seconds of the rate's sliding window (tests shorten it).
      max_retries: retries of a transient failure before giving up on the item.
      backoff: base seconds of the exponential backoff (doubling, with full jitter).
      timeout: seconds per request.
      max_requests: total request budget of this client (None = unlimited).
      limiter: a :class:`RateLimiter` shared with other clients (``rate`` and ``window``
        are then its own); None: one of this client's.
      deadline: a ``time.monotonic()`` time by which every query of this client ends:
        each request's timeout is cut to what is left, and a query that would wait or
        retry past it fails (TransientError) at once. None: no deadline.
    """

    def __init__(self, endpoint: str = ENDPOINT, *, rate: float = DEFAULT_RATE,
                 window: float = RATE_WINDOW, max_retries: int = 5, backoff: float = 2.0,
                 max_backoff: float = 120.0, timeout: float = 30.0,
                 max_requests: int | None = None, session: requests.Session | None = None,
                 sleep=time.sleep, limiter: RateLimiter | None = None,
                 deadline: float | None = None):
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            raise InputError(f"--endpoint must be an http:// or https:// URL, e.g. {ENDPOINT}. "
                             f"Received: {endpoint!r}.")
        for name, value, low in (("timeout", timeout, 0.0), ("rate", rate, 0.0)):
            if not (isinstance(value, (int, float)) and math.isfinite(value)
                    and (value > low if name == "timeout" else value >= low)):
                raise InputError(f"--{name} must be a number {'>' if name == 'timeout' else '>='} "
                                 f"{low:g}. Received: {value!r}.")
        if max_retries < 0 or (max_requests is not None and max_requests < 1):
            raise InputError(f"--max-retries must be >= 0 and --max-requests >= 1. Received: "
                             f"{max_retries}, {max_requests}.")
        self.endpoint = endpoint
        self.limiter = limiter if limiter is not None else RateLimiter(rate, window, sleep=sleep)
        self.deadline = deadline
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.timeout, self.max_requests = timeout, max_requests
        self.session = session or requests.Session()
        self.session.headers.update({"Content-Type": "application/json",
                                     "Accept": "application/json",
                                     "User-Agent": "anirank-crawler/1 (+https://github.com/anirank)"})
        self.sleep = sleep
        self.disabled_pause = 60.0  # a paused API is not retried fast
        self.stats = ClientStats()
        self._random = random.Random(0)

    def _pause(self, seconds: float) -> None:
        self.stats.waited_seconds += seconds
        self.limiter.hold(seconds)

    def query(self, query: str, variables: dict) -> dict:
        """The ``data`` of one GraphQL request.

        Raises:
          NotFound: HTTP 404 "Not Found." (a private or missing user): this item only.
          QueryRejected: any other GraphQL error (HTTP 400: invalid or too complex).
          TransientError: failures outlived ``max_retries``.
          BudgetExhausted: ``max_requests`` reached.
        """
        failures = 0
        limited = 0
        while True:
            if self.max_requests is not None and self.stats.requests >= self.max_requests:
                raise BudgetExhausted(f"request budget of {self.max_requests} used up")
            left = None if self.deadline is None else self.deadline - time.monotonic()
            waited = self.limiter.wait() if left is None else self.limiter.wait(max(left, 0.0))
            if waited is None or (left is not None and left - waited <= 0):
                raise TransientError("out of time: the lookup's time budget is spent"
                                     + (f" ({failures} failed attempts)" if failures else ""))
            self.stats.waited_seconds += waited
            self.stats.requests += 1
            reason = None
            try:
                response = self.session.post(self.endpoint, json={"query": query,
                                                                  "variables": variables},
                                             timeout=self.timeout if left is None
                                             else min(self.timeout, left - waited))
            except requests.Timeout:
                reason = "timeout"
            except requests.ConnectionError as err:
                reason = f"connection error: {type(err).__name__}"
            finally:
                self.limiter.completed()
            if reason is None:
                if response.status_code == 429:
                    # AniList: a 1-minute timeout; Retry-After says how long is left.
                    self.stats.rate_limited += 1
                    limited += 1
                    if limited > 20:
                        raise TransientError("still rate limited after 20 waits")
                    self._pause(self._retry_after(response))
                    continue
                if response.status_code == 403 and "disabled" in response.text.lower():
                    reason = "AniList API temporarily disabled (HTTP 403)"
                    self._pause(self.disabled_pause)
                elif response.status_code >= 500:
                    reason = f"HTTP {response.status_code}"
                else:
                    try:
                        body = response.json()
                    except ValueError:
                        reason = f"invalid JSON in HTTP {response.status_code} response"
                    else:
                        errors = body.get("errors") if isinstance(body, dict) else None
                        if errors:
                            raise _graphql_error(errors, response.status_code)
                        if response.status_code != 200 or not isinstance(body.get("data"), dict):
                            reason = f"HTTP {response.status_code} without data"
                        else:
                            return body["data"]
            failures += 1
            if failures > self.max_retries:
                raise TransientError(f"{reason} (after {self.max_retries} retries)")
            self.stats.retries += 1
            delay = self._random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (failures - 1)))
            self._pause(delay)

    def _retry_after(self, response) -> float:
        header = response.headers.get("Retry-After")
        if header is not None:
            try:
                return max(float(header), 0.0)
            except ValueError:
                pass
        reset = response.headers.get("X-RateLimit-Reset")
        if reset is not None:
            try:
                return max(float(reset) - time.time(), 0.0)
            except ValueError:
                pass
        return 60.0


def _graphql_error(errors: list, http_status: int) -> GraphQLError:
    """Which kind of GraphQL error AniList's ``errors`` are: about one item (404, every
    error "status": 404) or about the query (anything else)."""
    messages = [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors]
    statuses = {e.get("status") if isinstance(e, dict) else None for e in errors}
    if http_status == 404 or statuses == {404}:
        return NotFound(messages, http_status)
    return QueryRejected(messages, http_status)


# ---------------------------------------------------------------------------------------
# AniList JSON -> store rows.

def _seconds(value) -> int | None:
    """AniList times: Unix seconds, with 0 meaning unknown."""
    return int(value) if value else None


def _fuzzy_date(value) -> int | None:
    """A FuzzyDate with year, month and day -> Unix seconds at 00:00 UTC; partial -> NULL."""
    if not value or not all(value.get(k) for k in ("year", "month", "day")):
        return None
    try:
        day = dt.datetime(value["year"], value["month"], value["day"], tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    return int(day.timestamp())


def user_row(user: dict, fetched_at: int) -> dict:
    stats = ((user.get("statistics") or {}).get("anime")) or {}
    return {"user_id": user["id"], "name": user.get("name"),
            "created_at": _seconds(user.get("createdAt")),
            "updated_at": _seconds(user.get("updatedAt")),
            "anime_count": stats.get("count"), "mean_score": stats.get("meanScore"),
            "std_score": stats.get("standardDeviation"),
            "minutes_watched": stats.get("minutesWatched"),
            "episodes_watched": stats.get("episodesWatched"), "fetched_at": fetched_at}


def entry_rows(user_id: int, lists: list[dict], favourites: set[int]) -> list[dict]:
    """One row per title: status lists first, then custom lists (entries hidden from the
    status lists appear only there), de-duplicated by media id."""
    rows = {}
    for lst in sorted(lists, key=lambda x: bool(x.get("isCustomList"))):
        for e in lst.get("entries") or []:
            if e["mediaId"] in rows:
                continue
            rows[e["mediaId"]] = {
                "user_id": user_id, "media_id": e["mediaId"], "score": int(e.get("score") or 0),
                "status": e["status"], "progress": e.get("progress"), "repeat": e.get("repeat"),
                "is_favourite": int(e["mediaId"] in favourites),
                "created_at": _seconds(e.get("createdAt")),
                "updated_at": _seconds(e.get("updatedAt")),
                "completed_at": _fuzzy_date(e.get("completedAt")),
            }
    return [rows[k] for k in sorted(rows)]


def media_row(m: dict, fetched_at: int) -> dict:
    studios = ((m.get("studios") or {}).get("nodes")) or []
    title = m.get("title") or {}
    return {
        "media_id": m["id"], "id_mal": m.get("idMal"), "title_romaji": title.get("romaji"),
        "title_english": title.get("english"), "format": m.get("format"),
        "status": m.get("status"), "episodes": m.get("episodes"), "duration": m.get("duration"),
        "source": m.get("source"), "season": m.get("season"), "season_year": m.get("seasonYear"),
        "average_score": m.get("averageScore"), "mean_score": m.get("meanScore"),
        "popularity": m.get("popularity"), "favourites": m.get("favourites"),
        "is_adult": None if m.get("isAdult") is None else int(m["isAdult"]),
        "country": m.get("countryOfOrigin"), "studio": studios[0]["name"] if studios else None,
        "genres": m.get("genres") or [],
        "tags": [{"name": t["name"], "rank": t.get("rank")} for t in m.get("tags") or []],
        "description": m.get("description"), "fetched_at": fetched_at,
    }


def _frame(rows: list[dict], columns) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(columns))
    return frame.astype(object).where(frame.notna(), None)


# ---------------------------------------------------------------------------------------
# What a crawl did, and what it does when a request fails.

@dataclasses.dataclass
class Summary:
    """What one crawl command did. ``skipped`` and ``failed`` count items by reason;
    ``entries`` is None for commands that fetch no list entries (users, media), and is
    then left out of the printed summary, with ``capped`` (lists AniList cut at
    ``LIST_CAP`` entries). ``stopped`` says why the crawl stopped early; ``rejected``:
    because AniList rejected a query (the command then exits 1)."""

    fetched: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    failed: Counter = dataclasses.field(default_factory=Counter)
    entries: int | None = None
    capped: int = 0
    stopped: str | None = None
    rejected: bool = False

    def as_dict(self, client: AniListClient, seconds: float) -> dict:
        out = {"fetched": self.fetched}
        if self.entries is not None:
            out.update({"entries": self.entries, "capped lists": self.capped})
        return {**out, "skipped": dict(self.skipped), "failed": dict(self.failed),
                "requests": client.stats.requests, "429s": client.stats.rate_limited,
                "retries": client.stats.retries, "stopped": self.stopped,
                "seconds": round(seconds, 2)}


def _reason(message: str) -> str:
    return message.split(" (after")[0][:120]


def _attempt(conn, summary: Summary, fetch, kind: str, ids=(), *,
             requeue: bool = True) -> tuple[str, object]:
    """Runs ``fetch()`` for one crawl item, which stands for ``ids`` in the crawl state
    of ``kind`` (a title batch: several; a user name: none), and applies the crawl's
    error policy. Returns ``("done", what fetch returned)`` or ``(outcome, None)``:

    - ``"skipped"``: AniList answered about this item (HTTP 404 "Not Found.": a private
      or deleted user); counted with its message, the ids recorded skipped: never retried.
    - ``"failed"``: a transient failure outlived the retries; counted with its reason and,
      with ``requeue``, the ids recorded failed, so the crawl's next run retries them
      (without: the crawl retries the item its own way, e.g. from its cursor).
    - ``"stopped"``: the request budget is used up, or AniList rejected the query itself
      (HTTP 400: invalid, too complex), which every item would meet alike:
      ``summary.stopped`` says which (``summary.rejected`` for the latter), no id is
      marked, and the crawl stops (rerun to continue, once the query is fixed).
    """
    try:
        return "done", fetch()
    except (NotFound, TransientError) as err:
        outcome = "skipped" if isinstance(err, NotFound) else "failed"
        counts = summary.skipped if outcome == "skipped" else summary.failed
        counts[_reason(str(err))] += len(ids) or 1
        if ids and (outcome == "skipped" or requeue):
            with store.transaction(conn):
                for item_id in ids:
                    store.set_state(conn, kind, item_id, outcome, str(err))
        return outcome, None
    except QueryRejected as err:
        summary.stopped = f"AniList rejected the query: {err}"
        summary.rejected = True
        return "stopped", None
    except BudgetExhausted as err:
        summary.stopped = str(err)
        return "stopped", None


# ---------------------------------------------------------------------------------------
# The crawls: fetch apart from save; each item's rows and state in one transaction.

def _passes(user: dict, min_entries: int, active_days: int | None,
            now: int) -> tuple[str, str] | None:
    """None if the user passes the curation filters, else ``(filter, detail)``: the
    filter as the summary counts it, and this user's numbers for the crawl state."""
    count = (((user.get("statistics") or {}).get("anime")) or {}).get("count") or 0
    if count < min_entries:
        return (f"fewer than {min_entries} entries (--min-entries)",
                f"{count} entries, fewer than {min_entries} (--min-entries)")
    updated = user.get("updatedAt") or 0
    if active_days is not None and updated < now - active_days * 86_400:
        detail = (f"last updated {(now - updated) // 86_400} days ago" if updated
                  else "never updated")
        return (f"inactive for more than {active_days} days (--active-days)",
                f"{detail}, more than {active_days} (--active-days)")
    return None


def _save_users(conn, users: list[dict], summary: Summary, min_entries: int,
                active_days: int | None) -> None:
    now = int(time.time())
    keep = []
    for user in users:
        why = _passes(user, min_entries, active_days, now)
        if why:
            summary.skipped[why[0]] += 1
            store.set_state(conn, "user", user["id"], "skipped", why[1])
        else:
            keep.append(user_row(user, now))
            store.set_state(conn, "user", user["id"], "done")
    store.upsert_users(conn, _frame(keep, store.USER_COLUMNS))
    store.enqueue(conn, "lists", [u["user_id"] for u in keep])
    summary.fetched += len(keep)


def crawl_users(conn, client: AniListClient, *, pages: int | None = None,
                per_page: int = 50, ids: list[int] | None = None,
                names: list[str] | None = None, min_entries: int = 0,
                active_days: int | None = None, progress: bool = True) -> Summary:
    """Stores the given users (``ids`` / ``names``) or, without them, discovers users
    (paged ``Page { users }`` from the saved cursor), keeps the curated ones and queues
    their lists. Discovery is what AniList's terms warn about: ``main`` runs it only on
    ``--discover``."""
    summary = Summary()
    if ids is not None or names is not None:
        items = [("id", i) for i in ids or []] + [("name", n) for n in names or []]
        done = set(store.crawl_items(conn, "user", ("done", "skipped")))
        items = [(k, v) for k, v in items if not (k == "id" and v in done)]
        for kind, value in tqdm(items, desc="users", disable=not progress):
            # A failed user is not recorded: the next run asks again for every id
            # neither done nor skipped.
            outcome, user = _attempt(conn, summary,
                                     lambda: client.query(USER_QUERY, {kind: value})["User"],
                                     "user", [value] if kind == "id" else (), requeue=False)
            if outcome == "stopped":
                break
            if outcome == "done":
                with store.transaction(conn):
                    _save_users(conn, [user], summary, min_entries, active_days)
        return summary

    page = int(store.get_cursor(conn, "users_page") or 1)
    bar = tqdm(total=pages, desc="user pages", disable=not progress)
    fetched_pages = skipped_in_a_row = 0
    while pages is None or fetched_pages < pages:
        # A page that failed or was rejected stops the crawl, its cursor left on it: the
        # next run retries it. A page answered "Not Found." is skipped for good.
        outcome, data = _attempt(
            conn, summary, lambda: client.query(
                USERS_PAGE_QUERY, {"page": page, "perPage": per_page})["Page"],
            "users_page", [page], requeue=False)
        if outcome in ("stopped", "failed"):
            break
        skipped_in_a_row = skipped_in_a_row + 1 if outcome == "skipped" else 0
        if skipped_in_a_row == MAX_SKIPPED_PAGES:
            summary.stopped = f"{MAX_SKIPPED_PAGES} user pages in a row not found"
            break
        data = data or {}  # a skipped page: no users from it, on to the next
        more = outcome == "skipped" or bool((data.get("pageInfo") or {}).get("hasNextPage"))
        with store.transaction(conn):  # the page's users and the cursor move together
            _save_users(conn, data.get("users") or [], summary, min_entries, active_days)
            store.set_cursor(conn, "users_page", page + 1 if more else page)
        page += 1
        fetched_pages += 1
        bar.update()
        if not more:
            break
    bar.close()
    return summary


def _favourite_ids(connection: dict | None) -> tuple[set[int], bool]:
    """A ``favourites { anime }`` page: its media ids, and whether another page follows."""
    anime = ((connection or {}).get("favourites") or {}).get("anime") or {}
    ids = {n["id"] for n in anime.get("nodes") or [] if n}
    return ids, bool((anime.get("pageInfo") or {}).get("hasNextPage"))


def fetch_list(client: AniListClient, user_id: int) -> tuple[list[dict], set[int]]:
    """All chunks of a user's anime list collection, and their favourite anime ids: the
    first page of favourites with the first chunk, the pages after it (25 a page) on
    their own, each asked once."""
    lists, favourites, more, chunk = [], set(), False, 1
    while True:
        data = client.query(LIST_QUERY, {"userId": user_id, "chunk": chunk,
                                         "perChunk": LIST_CHUNK,
                                         "withFavourites": chunk == 1})["MediaListCollection"]
        if data is None:
            raise NotFound(["no list collection returned"], 200)
        lists.extend(data.get("lists") or [])
        if chunk == 1:
            favourites, more = _favourite_ids(data.get("user"))
        if not data.get("hasNextChunk"):
            break
        chunk += 1
    page = 1
    while more:
        page += 1
        user = client.query(FAVOURITES_QUERY, {"userId": user_id, "page": page})["User"]
        found, more = _favourite_ids(user)
        favourites |= found
    return lists, favourites


def capped_note() -> str:
    """The crawl-state message of a list AniList cut at ``LIST_CAP`` entries."""
    return (f"capped: AniList returned only the {LIST_CAP:,} most recently updated "
            "entries")


def save_list(conn, user_id: int, rows: list[dict], note: str | None = None) -> None:
    """Replaces the user's entries with ``rows``, queues unseen titles, marks the list
    done (with ``note``): one transaction, so a crash never leaves half a list."""
    with store.transaction(conn):
        store.replace_user_entries(conn, user_id, _frame(rows, store.ENTRY_COLUMNS))
        store.enqueue(conn, "media", [r["media_id"] for r in rows])
        store.set_state(conn, "lists", user_id, "done", note)


def crawl_lists(conn, client: AniListClient, *, progress: bool = True) -> Summary:
    """Fetches the list of every user whose list is pending or failed. A list of
    ``LIST_CAP`` entries is what AniList cuts longer lists to (their most recently
    updated entries): it is kept, noted in its crawl state and counted as capped."""
    summary = Summary(entries=0)
    for user_id in tqdm(store.pending(conn, "lists"), desc="lists", unit="user",
                        disable=not progress):
        outcome, fetched = _attempt(conn, summary, lambda: fetch_list(client, user_id),
                                    "lists", [user_id])
        if outcome == "stopped":
            break
        if outcome != "done":
            continue
        rows = entry_rows(user_id, *fetched)
        capped = len(rows) >= LIST_CAP
        save_list(conn, user_id, rows, capped_note() if capped else None)
        summary.fetched += 1
        summary.entries += len(rows)
        summary.capped += capped
    return summary


def crawl_media(conn, client: AniListClient, *, progress: bool = True) -> Summary:
    """Fetches metadata of queued titles in batches of 50 (``media(id_in: ...)``)."""
    summary = Summary()
    with store.transaction(conn):  # titles in entries that nothing queued (e.g. imports)
        store.enqueue(conn, "media", store.unknown_media(conn))
    todo = store.pending(conn, "media")
    batches = [todo[i:i + MEDIA_BATCH] for i in range(0, len(todo), MEDIA_BATCH)]
    for batch in tqdm(batches, desc="media", unit="batch", disable=not progress):
        outcome, found = _attempt(conn, summary, lambda: client.query(
            MEDIA_QUERY, {"ids": batch, "perPage": MEDIA_BATCH})["Page"]["media"],
            "media", batch)
        if outcome == "stopped":
            break
        if outcome != "done":
            continue
        now, wanted = int(time.time()), set(batch)
        rows = [media_row(m, now) for m in found or [] if m and m.get("id") in wanted]
        with store.transaction(conn):
            store.upsert_media(conn, _frame(rows, store.MEDIA_COLUMNS))
            got = {r["media_id"] for r in rows}
            for media_id in batch:
                if media_id in got:
                    store.set_state(conn, "media", media_id, "done")
                else:
                    store.set_state(conn, "media", media_id, "skipped", "not returned by AniList")
        summary.fetched += len(got)
        missing = len(batch) - len(got)
        if missing:
            summary.skipped["not returned by AniList"] += missing
    return summary


def crawl_refresh(conn, client: AniListClient, *, users: Iterable[int] | None = None,
                  progress: bool = True) -> Summary:
    """Re-queues the lists of users whose newest list update is later than what the store
    has, or whose list now holds fewer entries than the store has (entries deleted: the
    newest update alone would never show it), with one small request per user; ``main``
    then fetches those lists and any new titles. A user AniList now refuses (e.g. gone
    private) is skipped, as the lists crawl skips them; a check that failed is asked again
    by the next refresh.

    ``users``: check only these (e.g. the users a model tracks), whether the store got
    their lists from a crawl or from a source that keeps no crawl record (a synthetic
    world's store); None: every user whose list was crawled."""
    summary = Summary()
    users = (store.crawl_items(conn, "lists", ("done",)) if users is None
             else [int(u) for u in users])
    for user_id in tqdm(users, desc="refresh", unit="user", disable=not progress):
        outcome, found = _attempt(conn, summary, lambda: client.query(
            REFRESH_QUERY, {"userId": user_id}), "lists", [user_id], requeue=False)
        if outcome == "stopped":
            break
        if outcome != "done":
            continue
        latest = max((m.get("updatedAt") or 0 for m in found["Page"]["mediaList"] or []),
                     default=0)
        anime = ((found.get("User") or {}).get("statistics") or {}).get("anime") or {}
        statuses = anime.get("statuses")
        count = None if statuses is None else sum(s.get("count") or 0 for s in statuses)
        if latest > (store.latest_entry_update(conn, user_id) or 0):
            why = "changed since last crawl"
        elif count is not None and count < store.entry_count(conn, user_id):
            why = "entries removed since last crawl"
        else:
            summary.skipped["unchanged"] += 1
            continue
        with store.transaction(conn):
            store.set_state(conn, "lists", user_id, "pending", why)
        summary.fetched += 1
    return summary


# ---------------------------------------------------------------------------------------
# Command line.

def _read_lines(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path} does not exist or is not a file: give a text file, one "
                         "entry a line.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a UTF-8 text file: give a text file, one entry a "
                         "line.") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_ids(path: str) -> list[int]:
    lines = _read_lines(path)
    bad = [x for x in lines if not x.isdigit()]
    if bad:
        raise InputError(f"{path} must hold one numeric AniList user id per line; "
                         f"found {bad[:3]} (use --names for user names).")
    return [int(x) for x in lines]


def _check_users_choice(args) -> None:
    """``users`` needs one way to choose users: a curated list, or opt-in discovery."""
    curated = args.ids is not None or args.names is not None
    if args.discover and curated:
        raise InputError("--discover pages through arbitrary users and --ids / --names "
                         "fetch the users listed; pass one or the other.")
    if not args.discover and not curated:
        raise InputError("users needs --ids FILE / --names FILE (a curated list of users) "
                         "or --discover --pages N (arbitrary users, opt-in: AniList's terms "
                         "forbid mass collection).")
    if args.pages is not None and not args.discover:
        raise InputError("--pages counts discovery pages; it goes with --discover.")
    if args.pages is not None and args.pages < 1:
        raise InputError(f"--pages must be at least 1, not {args.pages}.")


def discovery_notice(pages: int, rate: float, max_requests: int | None) -> str:
    """What ``users --discover`` prints first: AniList's terms and its request budget."""
    budget = pages if max_requests is None else min(pages, max_requests)
    time_taken = (f", about {math.ceil(budget / rate)} min at {rate:g} requests/minute"
                  if rate > 0 else "")
    return (f"AniList's terms of use ({TERMS}) forbid using the API as a data store and "
            "hoarding or mass collection of its data; they are lenient with purely "
            "educational projects. --discover pages through arbitrary users: this run "
            f"makes up to {budget} request{'s' * (budget != 1)} ({pages} page"
            f"{'s' * (pages != 1)} of 50 users{time_taken}), and `lists` then makes at "
            "least one more per user kept. Collect only what your project needs.")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--db", default="data/anilist.db", help="raw store (default: %(default)s)")
    group.add_argument("--endpoint", default=ENDPOINT, help="GraphQL endpoint (default: %(default)s)")
    group.add_argument("--rate", type=float, default=DEFAULT_RATE,
                       help="requests completed in any minute, at most; 0 turns the "
                            "client-side limit off (default: %(default)s; AniList documents "
                            "90 but runs degraded at 30, which its headers do not show)")
    group.add_argument("--max-requests", type=int, default=None,
                       help="stop cleanly after this many requests; rerun to continue "
                            "(default: no limit)")
    group.add_argument("--max-retries", type=int, default=5,
                       help="retries of a failing request before the item is recorded as "
                            "failed (a later run retries it) (default: %(default)s)")
    group.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default: %(default)s)")
    # Also accepted before the command (top-level parser below). SUPPRESS: a command
    # that is not given it leaves the top-level value alone instead of resetting it.
    group.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)

    parser = argparse.ArgumentParser(
        prog="python data_query.py", description="\n\n".join(__doc__.split("\n\n")[:3]),
        epilog="Typical crawl: users, then lists, then media; refresh later for updates. "
               "Every command resumes where the last one stopped. Exit status: 0 done or "
               "stopped cleanly (--max-requests), 1 stopped because AniList rejected a "
               "query, 2 bad input.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    users = sub.add_parser(
        "users", parents=[common], help="store users' profile statistics, queue their lists",
        description="Fetches the users listed in --ids / --names files (the default way: a "
                    "curated list), or, with --discover, pages through arbitrary users "
                    "with `Page { users }` queries, resuming at the saved page. Stores the "
                    "profiles and anime statistics of those that pass the curation filters "
                    "and queues their lists. AniList's terms of use forbid hoarding or mass "
                    f"collection of its data ({TERMS}): discovery is opt-in and says what "
                    "it will cost first.")
    users.add_argument("--ids", help="file with one AniList user id per line (default: none)")
    users.add_argument("--names", help="file with one AniList user name per line (default: none)")
    users.add_argument("--discover", action="store_true",
                       help="page through arbitrary users instead of a list (opt-in; prints "
                            "AniList's terms and the requests it will make)")
    users.add_argument("--pages", type=int, default=None,
                       help="with --discover: pages of 50 users to fetch this run "
                            "(default: 1)")
    users.add_argument("--min-entries", type=int, default=0,
                       help="keep users with at least this many anime entries (default: %(default)s)")
    users.add_argument("--active-days", type=int, default=None,
                       help="keep users updated within this many days (default: no limit)")
    sub.add_parser("lists", parents=[common], help="fetch the anime lists of queued users",
                   description="Fetches MediaListCollection (all chunks, custom lists "
                               "included, favourites once per user) of every user whose "
                               "list is pending or failed, and writes each user's entries "
                               "with their done mark in one transaction. AniList returns at "
                               f"most the {LIST_CAP:,} most recently updated entries of a "
                               "list: such lists are counted as capped.")
    sub.add_parser("media", parents=[common], help="fetch metadata of titles seen in lists",
                   description="Fetches metadata (titles, format, episodes, studio, genres, "
                               "tags, scores, ...) for every title in the entries that the "
                               "store lacks, 50 per request.")
    sub.add_parser("refresh", parents=[common], help="re-fetch lists that changed",
                   description="For each crawled user, asks for the time of their newest "
                               "list update and their entry count; re-fetches the lists "
                               "that changed or shrank since the last crawl, then fetches "
                               "metadata of new titles.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    progress = not args.quiet
    try:
        if args.command == "users":
            _check_users_choice(args)
            ids = _read_ids(args.ids) if args.ids else None
            names = _read_lines(args.names) if args.names else None
            if args.discover:
                args.pages = args.pages or 1
                print(discovery_notice(args.pages, args.rate, args.max_requests),
                      file=sys.stderr)
        client = AniListClient(args.endpoint, rate=args.rate, max_retries=args.max_retries,
                               timeout=args.timeout, max_requests=args.max_requests)
        conn = store.connect(args.db)
        try:
            store.claim_source(conn, "anilist", args.db)
            if args.command == "users":
                summary = crawl_users(conn, client, pages=args.pages, ids=ids, names=names,
                                      min_entries=args.min_entries,
                                      active_days=args.active_days, progress=progress)
            elif args.command == "lists":
                summary = crawl_lists(conn, client, progress=progress)
            elif args.command == "media":
                summary = crawl_media(conn, client, progress=progress)
            else:
                summary = refresh(conn, client, progress=progress)
        finally:
            conn.close()
    except AnirankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:   # a path no check above named
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return 2
    print(json.dumps(summary.as_dict(client, time.perf_counter() - start), indent=2))
    if summary.rejected:
        print(f"error: {summary.stopped}; the crawl stopped and marked nothing: rerun "
              "once the query is fixed.", file=sys.stderr)
        return 1
    return 0


def refresh(conn, client: AniListClient, *, users: Iterable[int] | None = None,
            progress: bool = True) -> Summary:
    """``refresh``: the checks (of ``users``, see :func:`crawl_refresh`), then the lists
    they re-queued, then new titles; one summary (``fetched``: lists re-queued)."""
    summary = crawl_refresh(conn, client, users=users, progress=progress)
    summary.entries = 0  # the re-fetched lists' entries, below
    for crawl in (crawl_lists, crawl_media):
        if summary.stopped:
            break
        part = crawl(conn, client, progress=progress)
        summary.entries += part.entries or 0
        summary.capped += part.capped
        summary.failed.update(part.failed)
        summary.stopped, summary.rejected = part.stopped, part.rejected
    return summary


if __name__ == "__main__":
    sys.exit(main())
