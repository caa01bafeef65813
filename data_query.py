"""AniList GraphQL -> raw store: users, their anime lists and statistics, anime metadata.

    python data_query.py users --pages 10         # discover users (or --ids FILE / --names FILE)
    python data_query.py lists                    # fetch every known user's anime list
    python data_query.py media                    # metadata of every title seen in lists
    python data_query.py refresh                  # re-fetch lists that changed since the last crawl

Polite and resumable by design. One request at a time, at most ``--rate`` a minute
(default 30: AniList's degraded limit, below its documented 90), slowing down before
``X-RateLimit-Remaining`` reaches 0 and honouring ``Retry-After`` on 429. Server errors,
timeouts, broken connections and truncated JSON are retried with exponential backoff and
jitter, a bounded number of times; then the item is recorded as failed (with the reason)
and the crawl moves on, and the next run retries it. GraphQL errors (private user,
deleted title, invalid query) are recorded as skipped with AniList's message and never
retried. Each item's rows and its crawl state are committed in one transaction, so a
crawl killed at any moment (even SIGKILL) resumes where it stopped, with no row lost or
duplicated. Queries use GraphQL variables; nothing is pasted into query text.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

from pipelines import _env  # noqa: F401  (every entry point imports it first)

import pandas as pd  # noqa: E402
import requests  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pipelines import store  # noqa: E402
from pipelines.errors import AnirankError, InputError  # noqa: E402

ENDPOINT = "https://graphql.anilist.co"
DEFAULT_RATE = 30.0  # requests/minute; AniList's documented 90 runs degraded at 30

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
LIST_QUERY = """
query ($userId: Int, $chunk: Int, $perChunk: Int) {
  MediaListCollection(userId: $userId, type: ANIME, chunk: $chunk, perChunk: $perChunk) {
    hasNextChunk
    lists {
      name isCustomList
      entries {
        mediaId status score(format: POINT_100) progress repeat createdAt updatedAt
        completedAt { year month day }
      }
    }
    user { id favourites { anime(page: 1, perPage: 50) { nodes { id } } } }
  }
}"""
LAST_UPDATE_QUERY = """
query ($userId: Int) {
  Page(page: 1, perPage: 1) {
    mediaList(userId: $userId, type: ANIME, sort: UPDATED_TIME_DESC) { updatedAt }
  }
}"""
MEDIA_QUERY = """
query ($ids: [Int], $perPage: Int) {
  Page(page: 1, perPage: $perPage) {
    media(id_in: $ids, type: ANIME) {
      id idMal title { romaji english } format status episodes duration source season
      seasonYear averageScore meanScore popularity favourites isAdult countryOfOrigin
      studios(isMain: true) { nodes { name } }
      genres tags { name rank } description
    }
  }
}"""
QUIET_HELP = "no progress bars (may come before or after the command)"
MEDIA_BATCH = 50   # AniList's perPage maximum
LIST_CHUNK = 500   # MediaListCollection's perChunk maximum
MAX_SKIPPED_PAGES = 5  # user pages refused in a row: the query itself is broken; stop


# ---------------------------------------------------------------------------------------
# Errors.

class CrawlError(AnirankError):
    """Base of the crawler's errors."""


class GraphQLError(CrawlError):
    """AniList answered with GraphQL ``errors`` (private user, deleted title, invalid
    query): the item is skipped with this message, never retried."""

    def __init__(self, messages: list[str], status: int):
        super().__init__("; ".join(messages) + f" (HTTP {status})")
        self.status = status


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
    """At most ``per_minute`` request starts in any 60 s (evenly spaced), plus a pause
    when the server says few requests remain in its window. ``per_minute <= 0``: off."""

    def __init__(self, per_minute: float, clock=time.monotonic, sleep=time.sleep):
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = 0.0
        self._hold_until = 0.0

    def wait(self) -> float:
        """Sleeps until the next request may start; returns the seconds slept."""
        now = self.clock()
        start = max(now, self._next, self._hold_until)
        if start > now:
            self.sleep(start - now)
        self._next = start + self.interval
        return start - now

    def hold(self, seconds: float) -> None:
        """No request for ``seconds`` from now (429, low remaining budget, API paused)."""
        self._hold_until = max(self._hold_until, self.clock() + seconds)


class AniListClient:
    """POSTs GraphQL queries with variables; retries, backs off and rate-limits.

    Args:
      endpoint: GraphQL URL (tests point it at a stand-in server on 127.0.0.1).
      rate: requests per minute (0 = no client-side limit).
      max_retries: retries of a transient failure before giving up on the item.
      backoff: base seconds of the exponential backoff (doubling, with full jitter).
      timeout: seconds per request.
      max_requests: total request budget of this client (None = unlimited).
    """

    def __init__(self, endpoint: str = ENDPOINT, *, rate: float = DEFAULT_RATE,
                 max_retries: int = 5, backoff: float = 2.0, max_backoff: float = 120.0,
                 timeout: float = 30.0, max_requests: int | None = None,
                 session: requests.Session | None = None, sleep=time.sleep):
        self.endpoint = endpoint
        self.limiter = RateLimiter(rate, sleep=sleep)
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
          GraphQLError: AniList answered with ``errors``.
          TransientError: failures outlived ``max_retries``.
          BudgetExhausted: ``max_requests`` reached.
        """
        failures = 0
        limited = 0
        while True:
            if self.max_requests is not None and self.stats.requests >= self.max_requests:
                raise BudgetExhausted(f"request budget of {self.max_requests} used up")
            self.stats.waited_seconds += self.limiter.wait()
            self.stats.requests += 1
            reason = None
            try:
                response = self.session.post(self.endpoint, json={"query": query,
                                                                  "variables": variables},
                                             timeout=self.timeout)
            except requests.Timeout:
                reason = "timeout"
            except requests.ConnectionError as err:
                reason = f"connection error: {type(err).__name__}"
            if reason is None:
                self._note_budget(response)
                if response.status_code == 429:
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
                            raise GraphQLError([str(e.get("message", e)) for e in errors],
                                               response.status_code)
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

    def _note_budget(self, response) -> None:
        # Slow down before the server's window runs out rather than collecting 429s.
        remaining = response.headers.get("X-RateLimit-Remaining")
        if remaining is not None and remaining.isdigit() and int(remaining) <= 1:
            reset = response.headers.get("X-RateLimit-Reset")
            wait = 60.0
            if reset and reset.replace(".", "", 1).isdigit():
                wait = min(max(float(reset) - time.time(), 0.0), 60.0)
            self._pause(wait)


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
    then left out of the printed summary."""

    fetched: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    failed: Counter = dataclasses.field(default_factory=Counter)
    entries: int | None = None
    stopped: str | None = None

    def as_dict(self, client: AniListClient, seconds: float) -> dict:
        out = {"fetched": self.fetched}
        if self.entries is not None:
            out["entries"] = self.entries
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

    - ``"skipped"``: AniList answered with a GraphQL error (private user, deleted title,
      invalid query); counted with its message, the ids recorded skipped: never retried.
    - ``"failed"``: a transient failure outlived the retries; counted with its reason and,
      with ``requeue``, the ids recorded failed, so the crawl's next run retries them
      (without: the crawl retries the item its own way, e.g. from its cursor).
    - ``"stopped"``: the request budget is used up; ``summary.stopped`` says so and the
      crawl stops cleanly (rerun to continue).
    """
    try:
        return "done", fetch()
    except (GraphQLError, TransientError) as err:
        outcome = "skipped" if isinstance(err, GraphQLError) else "failed"
        counts = summary.skipped if outcome == "skipped" else summary.failed
        counts[_reason(str(err))] += len(ids) or 1
        if ids and (outcome == "skipped" or requeue):
            with store.transaction(conn):
                for item_id in ids:
                    store.set_state(conn, kind, item_id, outcome, str(err))
        return outcome, None
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
    """Discovers users (paged ``Page { users }`` from the saved cursor, or the given ids
    or names), stores the curated ones and queues their lists."""
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
        # A page that failed stops the crawl, its cursor left on it: the next run
        # retries it. A page AniList refuses (GraphQL error) is skipped for good.
        outcome, data = _attempt(
            conn, summary, lambda: client.query(
                USERS_PAGE_QUERY, {"page": page, "perPage": per_page})["Page"],
            "users_page", [page], requeue=False)
        if outcome in ("stopped", "failed"):
            break
        skipped_in_a_row = skipped_in_a_row + 1 if outcome == "skipped" else 0
        if skipped_in_a_row == MAX_SKIPPED_PAGES:
            summary.stopped = (f"{MAX_SKIPPED_PAGES} user pages in a row answered with "
                               "GraphQL errors")
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


def fetch_list(client: AniListClient, user_id: int) -> tuple[list[dict], set[int]]:
    """All chunks of a user's anime list collection, and their favourite anime ids."""
    lists, favourites, chunk = [], set(), 1
    while True:
        data = client.query(LIST_QUERY, {"userId": user_id, "chunk": chunk,
                                         "perChunk": LIST_CHUNK})["MediaListCollection"]
        if data is None:
            raise GraphQLError(["no list collection returned"], 200)
        lists.extend(data.get("lists") or [])
        user = data.get("user") or {}
        nodes = ((((user.get("favourites") or {}).get("anime")) or {}).get("nodes")) or []
        favourites |= {n["id"] for n in nodes}
        if not data.get("hasNextChunk"):
            return lists, favourites
        chunk += 1


def save_list(conn, user_id: int, rows: list[dict]) -> None:
    """Replaces the user's entries with ``rows``, queues unseen titles, marks the list
    done: one transaction, so a crash never leaves half a list."""
    with store.transaction(conn):
        store.replace_user_entries(conn, user_id, _frame(rows, store.ENTRY_COLUMNS))
        store.enqueue(conn, "media", [r["media_id"] for r in rows])
        store.set_state(conn, "lists", user_id, "done")


def crawl_lists(conn, client: AniListClient, *, progress: bool = True) -> Summary:
    """Fetches the list of every user whose list is pending or failed."""
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
        save_list(conn, user_id, rows)
        summary.fetched += 1
        summary.entries += len(rows)
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


def crawl_refresh(conn, client: AniListClient, *, progress: bool = True) -> Summary:
    """Re-queues the lists of users whose newest list update is later than what the store
    has (one small request per user); ``main`` then fetches those lists and any new
    titles. A user AniList now refuses (e.g. gone private) is skipped, as the lists crawl
    skips them; a check that failed is asked again by the next refresh."""
    summary = Summary()
    users = store.crawl_items(conn, "lists", ("done",))
    for user_id in tqdm(users, desc="refresh", unit="user", disable=not progress):
        outcome, found = _attempt(conn, summary, lambda: client.query(
            LAST_UPDATE_QUERY, {"userId": user_id})["Page"]["mediaList"],
            "lists", [user_id], requeue=False)
        if outcome == "stopped":
            break
        if outcome != "done":
            continue
        latest = max((m.get("updatedAt") or 0 for m in found or []), default=0)
        if latest > (store.latest_entry_update(conn, user_id) or 0):
            with store.transaction(conn):
                store.set_state(conn, "lists", user_id, "pending", "changed since last crawl")
            summary.fetched += 1
        else:
            summary.skipped["unchanged"] += 1
    return summary


# ---------------------------------------------------------------------------------------
# Command line.

def _read_lines(path: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path} does not exist.")
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


def _read_ids(path: str) -> list[int]:
    lines = _read_lines(path)
    bad = [x for x in lines if not x.isdigit()]
    if bad:
        raise InputError(f"{path} must hold one numeric AniList user id per line; "
                         f"found {bad[:3]} (use --names for user names).")
    return [int(x) for x in lines]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--db", default="data/anilist.db", help="raw store (default: %(default)s)")
    group.add_argument("--endpoint", default=ENDPOINT, help="GraphQL endpoint (default: %(default)s)")
    group.add_argument("--rate", type=float, default=DEFAULT_RATE,
                       help="requests per minute, at most; 0 turns the client-side limit off "
                            "(default: %(default)s; AniList documents 90 but runs at 30)")
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
        prog="python data_query.py", description="\n\n".join(__doc__.split("\n\n")[:2]),
        epilog="Typical crawl: users, then lists, then media; refresh later for updates. "
               "Every command resumes where the last one stopped.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    users = sub.add_parser(
        "users", parents=[common], help="discover users and store their profile statistics",
        description="Discovers users with paged `Page { users }` queries, resuming at the "
                    "saved page, or fetches the users listed in --ids / --names files; "
                    "stores the profiles and anime statistics of those that pass the "
                    "curation filters and queues their lists.")
    users.add_argument("--pages", type=int, default=1,
                       help="discovery pages of 50 users to fetch this run (default: %(default)s)")
    users.add_argument("--ids", help="file with one AniList user id per line, fetched "
                                     "instead of discovery pages (default: none)")
    users.add_argument("--names", help="file with one AniList user name per line, fetched "
                                       "instead of discovery pages (default: none)")
    users.add_argument("--min-entries", type=int, default=0,
                       help="keep users with at least this many anime entries (default: %(default)s)")
    users.add_argument("--active-days", type=int, default=None,
                       help="keep users updated within this many days (default: no limit)")
    sub.add_parser("lists", parents=[common], help="fetch the anime lists of queued users",
                   description="Fetches MediaListCollection (all chunks, custom lists "
                               "included) of every user whose list is pending or failed, "
                               "and writes each user's entries with their done mark in one "
                               "transaction.")
    sub.add_parser("media", parents=[common], help="fetch metadata of titles seen in lists",
                   description="Fetches metadata (titles, format, episodes, studio, genres, "
                               "tags, scores, ...) for every title in the entries that the "
                               "store lacks, 50 per request.")
    sub.add_parser("refresh", parents=[common], help="re-fetch lists that changed",
                   description="For each crawled user, asks for the time of their newest "
                               "list update; re-fetches the lists that changed since the "
                               "last crawl, then fetches metadata of new titles.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    progress = not args.quiet
    try:
        client = AniListClient(args.endpoint, rate=args.rate, max_retries=args.max_retries,
                               timeout=args.timeout, max_requests=args.max_requests)
        conn = store.connect(args.db)
        try:
            store.claim_source(conn, "anilist", args.db)
            if args.command == "users":
                ids = _read_ids(args.ids) if args.ids else None
                names = _read_lines(args.names) if args.names else None
                summary = crawl_users(conn, client, pages=args.pages, ids=ids, names=names,
                                      min_entries=args.min_entries,
                                      active_days=args.active_days, progress=progress)
            elif args.command == "lists":
                summary = crawl_lists(conn, client, progress=progress)
            elif args.command == "media":
                summary = crawl_media(conn, client, progress=progress)
            else:
                summary = crawl_refresh(conn, client, progress=progress)
                summary.entries = 0  # the re-fetched lists' entries, below
                if not summary.stopped:
                    lists = crawl_lists(conn, client, progress=progress)
                    media = crawl_media(conn, client, progress=progress)
                    summary.entries = lists.entries
                    summary.failed.update(lists.failed + media.failed)
                    summary.stopped = lists.stopped or media.stopped
        finally:
            conn.close()
    except AnirankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary.as_dict(client, time.perf_counter() - start), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
