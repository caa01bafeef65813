"""Live AniList lists for the recommendation service (``serving.app``): a user's public
list by user name, through ``data_query``'s client, cached, rate-limited and contained.

AniList's terms ask for polite use, and a web page would otherwise let anyone make the
service hammer it. So: the client's sliding-window limit (``rate`` a minute) holds for
the whole process, shared by every lookup; answers are cached in memory for ``ttl``
seconds (unknown and private users too: asking again costs AniList nothing); and each
client (IP address) may start at most ``per_client`` lookups a minute that reach AniList
(a token bucket; cached answers are free), else :class:`TooManyLookups`.

An AniList outage must not stall the service's other callers. So no lock is held while
a request is in flight; a lookup has a total time ``budget`` (every request's timeout
and every wait cut to it); at most ``max_lookups`` run at once, and one more is turned
away at once (:class:`LookupsBusy`: 503 with Retry-After) rather than queued; and after
``failures_to_open`` failed lookups in a row the breaker opens: for ``cooldown`` seconds
lookups fail fast without asking AniList (:class:`AniListDown`: 503, pointing to the
list builder), then one is let through to try again.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

import requests

import data_query
from pipelines.errors import AnirankError


class UnknownUser(AnirankError):
    """No public AniList user by that name (unknown, deleted, or the list is private)."""


class TooManyLookups(AnirankError):
    """This client started more lookups than its per-minute allowance."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class AniListUnavailable(AnirankError):
    """AniList did not answer usefully (timeouts, server errors, a rejected query)."""


class Busy(AnirankError):
    """Turned away at once, to be tried again in ``retry_after`` seconds (HTTP 503)."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class LookupsBusy(Busy):
    """``max_lookups`` AniList lookups are running already."""


class AniListDown(Busy):
    """The breaker is open: AniList failed the last lookups, so none is tried for now."""


BUILD_A_LIST = ("Build your list on the page instead (type the titles you watched, with "
                "your scores), or try again later.")


MAX_LOOKUPS = 4   # lookups that reach AniList at once (more get a 503 at once)


@dataclasses.dataclass(frozen=True)
class AniListList:
    """A user's list as fetched: ``entries`` are ``data_query.entry_rows`` rows (media_id,
    score 0-100 with 0 = unscored, status, updated_at, ...), one per title."""

    user_id: int
    name: str
    entries: tuple[dict, ...]


class TokenBucket:
    """Per key, ``per_minute`` tokens refilled continuously, at most ``per_minute`` held:
    a burst of ``per_minute`` lookups, then one every ``60 / per_minute`` seconds."""

    def __init__(self, per_minute: float, clock=time.monotonic, max_keys: int = 10_000):
        self.per_minute, self.clock, self.max_keys = per_minute, clock, max_keys
        self._buckets: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Takes a token for ``key``; returns 0, or the seconds until one is there (none
        taken)."""
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.pop(key, (self.per_minute, now))
            tokens = min(self.per_minute, tokens + (now - then) * self.per_minute / 60.0)
            wait = 0.0 if tokens >= 1 else (1 - tokens) * 60.0 / self.per_minute
            self._buckets[key] = (tokens - 1 if not wait else tokens, now)
            while len(self._buckets) > self.max_keys:  # forget the longest-idle clients
                self._buckets.popitem(last=False)
            return wait


class ListLookup:
    """``lookup(name, client)`` -> :class:`AniListList`.

    Args:
      endpoint: AniList's GraphQL URL (tests: a stand-in on 127.0.0.1).
      rate: requests a minute to AniList, at most, for the whole process.
      per_client: lookups a minute one client may start that are not in the cache.
      ttl: seconds an answer (a list, or "no such user") is served from the cache.
      max_cached: answers kept, the least recently used dropped first.
      timeout: seconds per request to AniList; ``max_retries`` retries of a failed one
        (few: a person is waiting).
      budget: seconds a whole lookup may take (its requests, retries and waits).
      max_lookups: lookups that may reach AniList at once; more are turned away.
      failures_to_open: failed lookups in a row that open the breaker.
      cooldown: seconds the open breaker turns lookups away before one tries again.
    """

    def __init__(self, endpoint: str = data_query.ENDPOINT, *, rate: float = data_query.DEFAULT_RATE,
                 per_client: float = 10.0, ttl: float = 600.0, max_cached: int = 1000,
                 timeout: float = 5.0, max_retries: int = 1, budget: float = 8.0,
                 max_lookups: int = MAX_LOOKUPS, failures_to_open: int = 3, cooldown: float = 30.0,
                 clock=time.monotonic):
        self.endpoint, self.timeout, self.max_retries = endpoint, timeout, max_retries
        self.budget, self.max_lookups = budget, max_lookups
        self.failures_to_open, self.cooldown = failures_to_open, cooldown
        self.limiter = data_query.RateLimiter(rate)   # one limit for every lookup
        self.stats = data_query.ClientStats()
        self.buckets = TokenBucket(per_client, clock)
        self.ttl, self.max_cached, self.clock = ttl, max_cached, clock
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_lookups)
        self._breaker_lock = threading.Lock()
        self._failures, self._open_until = 0, 0.0

    def lookup(self, name: str, client: str) -> AniListList:
        """The public list of the AniList user ``name`` (case-insensitive, as AniList).

        Raises:
          UnknownUser: no such public user (AniList's 404).
          TooManyLookups: ``client`` is over its allowance (and the answer is not cached).
          AniListDown: the breaker is open (AniList failed the last lookups).
          LookupsBusy: ``max_lookups`` lookups are running.
          AniListUnavailable: AniList failed within the lookup's budget.
        """
        key = name.strip().casefold()
        cached = self._cached(key)
        if cached is None:
            self._check_breaker()
            wait = self.buckets.take(client)
            if wait:
                raise TooManyLookups(f"Too many AniList lookups from your address: at most "
                                     f"{self.buckets.per_minute:g} a minute. Try again in "
                                     f"{wait:.0f} s.", wait)
            if not self._slots.acquire(blocking=False):
                raise LookupsBusy(f"{self.max_lookups} AniList lookups are running; try again "
                                  "in a few seconds. " + BUILD_A_LIST, 2.0)
            try:
                cached = self._fetch(name.strip())
            except AniListUnavailable:
                self._failed()
                raise
            finally:
                self._slots.release()
            self._succeeded()
            with self._cache_lock:
                self._cache[key] = (self.clock(), cached)
                while len(self._cache) > self.max_cached:
                    self._cache.popitem(last=False)
        if isinstance(cached, UnknownUser):
            raise cached
        return cached

    def _check_breaker(self) -> None:
        with self._breaker_lock:
            left = self._open_until - self.clock()
            if left > 0:
                raise AniListDown(f"AniList did not answer the last {self._failures} lookups; "
                                  f"lookups are paused for {left:.0f} s. " + BUILD_A_LIST, left)

    def _failed(self) -> None:
        with self._breaker_lock:
            self._failures += 1
            if self._failures >= self.failures_to_open:
                self._open_until = self.clock() + self.cooldown

    def _succeeded(self) -> None:
        with self._breaker_lock:
            self._failures, self._open_until = 0, 0.0

    def _cached(self, key: str):
        """The cached answer (a list or an UnknownUser) if fresh, else None."""
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is None or self.clock() - hit[0] > self.ttl:
                return None
            self._cache.move_to_end(key)
            return hit[1]

    def _client(self) -> data_query.AniListClient:
        """A client for one lookup: its own connection, the process's rate limit, and
        the lookup's deadline."""
        client = data_query.AniListClient(
            self.endpoint, timeout=self.timeout, max_retries=self.max_retries, backoff=0.5,
            max_backoff=2.0, session=requests.Session(), limiter=self.limiter,
            deadline=time.monotonic() + self.budget)
        client.stats = self.stats   # counted for the whole service
        return client

    def _fetch(self, name: str) -> AniListList | UnknownUser:
        """Asks AniList: the user's id by name, then their list (every chunk)."""
        client = self._client()
        try:
            user = client.query(data_query.USER_QUERY, {"name": name})["User"]
            if not user:
                raise data_query.NotFound(["no user returned"], 200)
            lists, favourites = data_query.fetch_list(client, int(user["id"]))
        except data_query.NotFound:
            return UnknownUser(f"No public AniList user named {name!r}: the name is unknown, "
                               "or the profile or list is private.")
        except data_query.CrawlError as err:
            raise AniListUnavailable(f"AniList did not answer ({err}); " + BUILD_A_LIST) from None
        finally:
            client.session.close()
        rows = data_query.entry_rows(int(user["id"]), lists, favourites)
        return AniListList(int(user["id"]), str(user.get("name") or name), tuple(rows))
