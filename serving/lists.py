"""Live AniList lists for the recommendation service (``serving.app``): a user's public
list by user name, through ``data_query``'s client, cached and rate-limited.

AniList's terms ask for polite use, and a web page would otherwise let anyone make the
service hammer it. So: one request to AniList at a time (the client's own sliding-window
limit, ``rate`` a minute, holds for the whole process), answers cached in memory for
``ttl`` seconds (unknown and private users too: asking again costs AniList nothing), and
each client (IP address) may start at most ``per_client`` lookups a minute that reach
AniList (a token bucket; cached answers are free), else :class:`TooManyLookups`.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

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
    """

    def __init__(self, endpoint: str = data_query.ENDPOINT, *, rate: float = data_query.DEFAULT_RATE,
                 per_client: float = 10.0, ttl: float = 600.0, max_cached: int = 1000,
                 timeout: float = 10.0, max_retries: int = 2, clock=time.monotonic):
        self.client = data_query.AniListClient(endpoint, rate=rate, timeout=timeout,
                                               max_retries=max_retries, backoff=0.5,
                                               max_backoff=5.0)
        self.buckets = TokenBucket(per_client, clock)
        self.ttl, self.max_cached, self.clock = ttl, max_cached, clock
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._anilist_lock = threading.Lock()  # the client: one request at a time

    def lookup(self, name: str, client: str) -> AniListList:
        """The public list of the AniList user ``name`` (case-insensitive, as AniList).

        Raises:
          UnknownUser: no such public user (AniList's 404).
          TooManyLookups: ``client`` is over its allowance (and the answer is not cached).
          AniListUnavailable: AniList failed after the retries.
        """
        key = name.strip().casefold()
        cached = self._cached(key)
        if cached is None:
            wait = self.buckets.take(client)
            if wait:
                raise TooManyLookups(f"Too many AniList lookups from your address: at most "
                                     f"{self.buckets.per_minute:g} a minute. Try again in "
                                     f"{wait:.0f} s.", wait)
            with self._anilist_lock:
                cached = self._cached(key)  # another request may have fetched it meanwhile
                if cached is None:
                    cached = self._fetch(name.strip())
                    with self._cache_lock:
                        self._cache[key] = (self.clock(), cached)
                        while len(self._cache) > self.max_cached:
                            self._cache.popitem(last=False)
        if isinstance(cached, UnknownUser):
            raise cached
        return cached

    def _cached(self, key: str):
        """The cached answer (a list or an UnknownUser) if fresh, else None."""
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is None or self.clock() - hit[0] > self.ttl:
                return None
            self._cache.move_to_end(key)
            return hit[1]

    def _fetch(self, name: str) -> AniListList | UnknownUser:
        """Asks AniList: the user's id by name, then their list (every chunk)."""
        try:
            user = self.client.query(data_query.USER_QUERY, {"name": name})["User"]
            if not user:
                raise data_query.NotFound(["no user returned"], 200)
            lists, favourites = data_query.fetch_list(self.client, int(user["id"]))
        except data_query.NotFound:
            return UnknownUser(f"No public AniList user named {name!r}: the name is unknown, "
                               "or the profile or list is private.")
        except data_query.CrawlError as err:
            raise AniListUnavailable(f"AniList did not answer ({err}); try again later.") from None
        rows = data_query.entry_rows(int(user["id"]), lists, favourites)
        return AniListList(int(user["id"]), str(user.get("name") or name), tuple(rows))
