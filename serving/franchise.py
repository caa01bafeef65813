"""Franchise order at serving: what a fan expects of a list of titles from franchises.

A title continues others: its PREQUEL (the season before) and its PARENT (the show a
special, recap or movie belongs to), as AniList records relations from the title's own
side. Recommending the third season of a show the user never started, or the specials of
one they have not finished, is a list no fan trusts; nor is a top 10 holding three
seasons of one show. :class:`Franchises` reorders a ranked candidate list by two rules,
each switchable in :class:`~serving.recommender.Filters`:

- **entry points**: a title whose prerequisites the user has not watched is replaced by
  the franchise's next title they can start (walking back along unwatched prerequisites
  to one whose own are met), in its place; dropped where that title is already on the
  list, left out, not allowed by the filters, or ranked higher already;
- **a cap per franchise**: at most ``per_franchise`` titles of one franchise (titles
  linked by any relation) in every 10 results.

And a list of its own, "Continue" (:meth:`Franchises.next_titles`): the titles that
continue what the user watched, every prerequisite of theirs watched. Each rule reads
many users at once (a request batch), as sets of (user, title) keys.

"Watched" is the model's interactions (COMPLETED, CURRENT, REPEATING, as its history
holds them). Where the source records no relations (the Kaggle dumps) nothing changes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.features import RELATED_IDS
from pipelines.tables import related_rows

PREREQUISITES = ("PREQUEL", "PARENT")   # what a title continues, from its own side
MAX_DEPTH = 12                          # prerequisites walked back at most (a long franchise)


def franchise_ids(anime: pd.DataFrame) -> np.ndarray:
    """Per title (row of ``anime``), the id of its franchise: the smallest row of the
    titles connected to it by any relation (a title with none is its own)."""
    parent = np.arange(len(anime))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if RELATED_IDS in anime:
        rows = pd.Index(anime["media_id"])
        for i, related in enumerate(anime[RELATED_IDS]):
            for j in rows.get_indexer(np.asarray(related, np.int64)):
                if j >= 0:
                    a, b = root(i), root(int(j))
                    parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(len(anime))], np.int64)


class _Keys:
    """Sets of (user, title row) pairs, one sorted int64 key each, for membership tests
    of any shape."""

    def __init__(self, per_user: list, titles: int):
        self.titles = titles
        parts = [np.asarray(r, np.int64) for r in per_user]
        users = np.repeat(np.arange(len(parts), dtype=np.int64), [len(p) for p in parts])
        rows = np.concatenate([np.zeros(0, np.int64), *parts])
        keys = users * titles + rows
        self.keys = np.unique(keys[rows >= 0])

    def has(self, users: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if not len(self.keys):
            return np.zeros(np.shape(rows), bool)
        keys = users * self.titles + np.maximum(rows, 0)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return (rows >= 0) & (self.keys[at] == keys)


class Franchises:
    """The franchise rules over one catalog (``anime``: its rows are the title rows)."""

    def __init__(self, anime: pd.DataFrame, schema: dict):
        self.prerequisites = related_rows(anime, schema, PREREQUISITES)
        self.franchise = franchise_ids(anime) if self.prerequisites is not None else None
        # A sequel (it has a PREQUEL), not a side story: the main story goes first.
        prequels = related_rows(anime, schema, ("PREQUEL",))
        self.sequel = None if prequels is None else (prequels >= 0).any(axis=1)
        self.titles = len(anime)
        # Who continues whom, the other way round: per title row, the rows of the titles
        # it is a prerequisite of (CSR: ``_next[_next_at[r]:_next_at[r + 1]]``), so the
        # Continue list reads a user's own titles, not the whole catalog.
        if self.known:
            has = self.prerequisites >= 0
            before, after = self.prerequisites[has], np.nonzero(has)[0]
            order = np.argsort(before, kind="stable")
            self._next = after[order].astype(np.int64)
            self._next_at = np.searchsorted(before[order], np.arange(self.titles + 1))

    @property
    def known(self) -> bool:
        """Whether the catalog records relations (else the rules change nothing)."""
        return self.prerequisites is not None

    def unmet(self, rows: np.ndarray, watched: list) -> np.ndarray:
        """``rows`` (``[n, c]`` title rows, -1 padding) whose prerequisites user ``i``
        (``watched[i]``: the title rows they watched) has not all watched."""
        if not self.known:
            return np.zeros(rows.shape, bool)
        seen = _Keys(watched, self.titles)
        users = np.broadcast_to(np.arange(len(rows))[:, None], rows.shape)
        return self._unmet(seen, users, rows)[0]

    def _unmet(self, seen: _Keys, users, rows):
        need = self.prerequisites[np.maximum(rows, 0)]                       # [n, c, w]
        missing = (need >= 0) & ~seen.has(users[..., None], need) & (rows >= 0)[..., None]
        return missing.any(-1), need, missing

    def next_titles(self, watched: list, excluded: list,
                    allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The "Continue" lists of several users at once: for user ``i``, the titles that
        continue what they watched (``watched[i]``, title rows: every prerequisite
        watched, at least one of them), not watched, not ``excluded[i]`` (title rows; -1
        is ignored) and ``allowed``.

        Returns:
          ``(users, rows, after)``: a user index, a title row and the watched title it
          continues (its first prerequisite) per title found, unordered.
        """
        empty = np.zeros(0, np.int64)
        if not self.known:
            return empty, empty, empty
        seen = _Keys(watched, self.titles)
        users, mine = np.divmod(seen.keys, self.titles)
        # The titles that have one of theirs as a prerequisite: a ragged gather.
        starts, stops = self._next_at[mine], self._next_at[mine + 1]
        sizes = stops - starts
        at = np.repeat(starts - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())
        users, rows = np.divmod(np.unique(np.repeat(users, sizes) * self.titles + self._next[at]),
                                self.titles)
        need = self.prerequisites[rows]
        has = need >= 0
        met = np.where(has, seen.has(users[:, None], need), True).all(axis=1)
        ok = (met & ~seen.has(users, rows) & ~_Keys(excluded, self.titles).has(users, rows)
              & allowed[rows])
        need, has = need[ok], has[ok]
        return users[ok], rows[ok], need[np.arange(len(need)), np.argmax(has, axis=1)]

    def continued(self, users: np.ndarray, rows: np.ndarray, watched: list) -> np.ndarray:
        """Per pair (``users[j]``, title row ``rows[j]``), the first of the title's
        prerequisites that the user watched (``watched[user]``: title rows): the title
        it continues for them; -1 where none is."""
        users, rows = np.asarray(users, np.int64), np.asarray(rows, np.int64)
        if not self.known or not len(rows):
            return np.full(len(rows), -1, np.int64)
        need = self.prerequisites[rows]
        hit = (need >= 0) & _Keys(watched, self.titles).has(users[:, None], need)
        return np.where(hit.any(axis=1), need[np.arange(len(rows)), np.argmax(hit, axis=1)], -1)

    def apply(self, rows: np.ndarray, scores: np.ndarray, watched: list, excluded: list,
              allowed: np.ndarray, k: int, entry_points: bool = True,
              per_franchise: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` of ranked candidates under the rules.

        Args:
          rows, scores: ``[n, c]`` candidate title rows, best first (-1 padding), and
            their scores.
          watched: per user, the title rows they watched (the prerequisites met).
          excluded: per user, title rows never to recommend (their list, ``exclude``).
          allowed: ``[titles]`` bool, what the filters allow.
          entry_points: replace a title with unmet prerequisites by its entry point.
          per_franchise: titles of one franchise in every 10 results, at most (None: no cap).

        Returns:
          ``[n, k]`` rows and scores (-1 and -inf where fewer than ``k`` remain); a
          replacement takes the place and score of the title it replaced.
        """
        n, c = rows.shape
        if not self.known or not (entry_points or per_franchise):
            return rows[:, :k], scores[:, :k]
        users = np.broadcast_to(np.arange(n)[:, None], rows.shape)
        seen = _Keys(watched, self.titles)
        cur = rows.copy()
        if entry_points:
            for _ in range(MAX_DEPTH):
                unmet, need, missing = self._unmet(seen, users, cur)
                if not unmet.any():
                    break
                first = np.argmax(missing, axis=-1)[..., None]
                cur = np.where(unmet, np.take_along_axis(need, first, axis=-1)[..., 0], cur)
            else:   # a chain longer than MAX_DEPTH (or a cycle): no entry point found
                cur = np.where(self._unmet(seen, users, cur)[0], -1, cur)
            gone = _Keys(excluded, self.titles)
            moved = cur != rows
            bad = moved & ((cur < 0) | ~allowed[np.maximum(cur, 0)] | gone.has(users, cur)
                           | seen.has(users, cur))
            cur = np.where(bad, -1, cur)
        keep = cur >= 0
        # A title once per list: its first (best) place.
        keys = np.where(keep, users * self.titles + cur, -1 - np.arange(cur.size).reshape(cur.shape))
        _, first = np.unique(keys.reshape(-1), return_index=True)
        once = np.zeros(cur.size, bool)
        once[first] = True
        keep &= once.reshape(cur.shape)
        if per_franchise:
            cap = per_franchise * -(-k // 10)
            group = np.where(keep, users * self.titles + self.franchise[np.maximum(cur, 0)], -1)
            order = np.lexsort((np.broadcast_to(np.arange(c), cur.shape).reshape(-1),
                                group.reshape(-1)))
            sorted_group = group.reshape(-1)[order]
            starts = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]
            run = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
            place = np.empty(cur.size, np.int64)
            place[order] = run
            keep &= place.reshape(cur.shape) < cap
        pick = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        ok = np.take_along_axis(keep, pick, axis=1)
        out_rows = np.where(ok, np.take_along_axis(cur, pick, axis=1), -1)
        out_scores = np.where(ok, np.take_along_axis(scores, pick, axis=1), -np.inf)
        return out_rows, out_scores.astype(scores.dtype)
