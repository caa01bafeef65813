"""What the ranker reorders: the two-tower top K and EASE's top K, merged, each title with
the signals the ranker reads.

    generate = Generator(index, ease_weights, k=100, k_ease=50, relations=related)
    cand = generate(queries, histories, exclude=seen_ids)   # Candidates: rows + signals

Two generators see different things: the two-tower scores a user from their features
(and, by the towers' design, generalises to titles few people listed); EASE (Steck 2019,
``pipelines.baselines``) scores title-title co-occurrence, which real lists reward (the
issue behind this module: on a real dump EASE's NDCG@10 beat the two-tower's). Serving
both and letting the ranker combine them is the classic two-stage answer.

Candidates per user: the two-tower's top ``k`` in its order, then EASE's top ``k_ease``
that the two-tower did not return, in EASE's order (-1 where a title was already there);
so the first ``k`` columns are exactly retrieval order. Both leave out ``exclude`` (what
the user has seen) and titles ``allowed`` does not allow.

Signals (``SIGNALS``), each ``[users, C]`` float32, 0 at padding:

- ``similarity``: the two-tower score, query . title embedding (exact, for every title).
- ``ease``: EASE's score ``x_u B`` (``x_u``: the user's training interactions).
- ``similarity_rank``, ``ease_rank``: ``log(1 + r)``, ``r`` = how many of the user's
  two-tower top ``k`` titles have a higher two-tower / EASE score than the title (0 =
  above them all; a title the two-tower did not return has similarity rank ``k``):
  where a title stands for the user, on a scale that does not change with how peaked
  the user's scores are. Counted against the same ``k`` titles for every title (a
  candidate, an EASE addition, a held-out title), and cheap: EASE's score is needed at
  ``k`` titles, not the catalog (measured on validation against ranks in EASE's full
  ranking: README).
- ``franchise``: ``log(1 + m)``, ``m`` = how many of the user's history titles the title
  continues (it is their SEQUEL or SIDE_STORY: they are its PREQUEL or PARENT,
  ``config.FRANCHISE_RELATIONS``): the next season of a show the user watched. Only
  where the catalog has relations between titles (``relations``: each title's related
  rows, ``tables.related_rows``): a ``[b, C, width]`` gather from the users' ``[b, n]``
  history mask.

The history (EASE's input and the franchise signal's) is each user's training
interactions: what they had watched by the cutoff.

Numpy only; titles are rows of the index (``index.ids`` order = ``anime.parquet`` order).
"""

from __future__ import annotations

import numpy as np

from pipelines.config import EASE_SIGNALS, RELATION_SIGNALS, SIGNALS
from pipelines import protocol
from pipelines.protocol import Candidates
from towers.index import CandidateIndex
from towers.topk import top_k


class Generator:
    """The two generators over one catalog. ``ease_weights`` ``[n, n]`` (float32, rows and
    columns in ``index.ids`` order) or None: the two-tower alone. ``relations``
    ``[n, width]`` (each title's related rows, -1 padded: ``tables.related_rows``) or
    None: no franchise signal. ``signals``: the ones to compute (default: all this
    catalog has). EASE's full score rows are computed only for EASE candidates
    (``k_ease > 0``); otherwise EASE's score is summed at the titles that need it (a
    user's ``k`` candidates: a few thousand weights, not the catalog)."""

    def __init__(self, index: CandidateIndex, ease_weights: np.ndarray | None, k: int,
                 k_ease: int = 0, signals: tuple[str, ...] | None = None,
                 relations: np.ndarray | None = None):
        self.index, self.ease_weights, self.relations = index, ease_weights, relations
        self.k = min(k, len(index.ids))
        self.k_ease = 0 if ease_weights is None else min(k_ease, len(index.ids))
        self.n = len(index.ids)
        if relations is not None and len(relations) != self.n:
            raise ValueError(f"`relations` has {len(relations)} rows for {self.n} titles.")
        missing = (() if ease_weights is not None else EASE_SIGNALS) + (
            () if relations is not None else RELATION_SIGNALS)
        self.signals = tuple(s for s in SIGNALS if s not in missing
                             and (signals is None or s in signals))
        self._full_ease = ease_weights is not None and self.k_ease > 0

    @property
    def needs_history(self) -> bool:
        """Whether calls must pass each user's history (EASE's and the franchise signal's input)."""
        return self.ease_weights is not None or bool(set(RELATION_SIGNALS) & set(self.signals))

    def _watched(self, histories: list, dtype) -> np.ndarray:
        """``[len(histories), n]``: 1 at each history's title rows, else 0."""
        x = np.zeros((len(histories), self.n), dtype)
        lengths = [len(h) for h in histories]
        if sum(lengths):
            x[np.repeat(np.arange(len(histories)), lengths),
              np.concatenate([np.asarray(h, np.int64) for h in histories])] = 1
        return x

    def ease_scores(self, histories: list) -> np.ndarray:
        """``[len(histories), n]``: ``x_u B`` for each history (an array of title rows)."""
        return self._watched(histories, np.float32) @ self.ease_weights

    def franchise_at(self, histories: list, rows: np.ndarray) -> np.ndarray:
        """``[b, C]``: ``log(1 + m)``, ``m`` = how many titles of each user's history the
        titles ``rows`` ``[b, C]`` continue (their related rows in ``self.relations``
        that the user watched)."""
        related = self.relations[np.maximum(rows, 0)]                     # [b, C, width]
        watched = self._watched(histories, bool)
        hit = watched[np.arange(len(rows))[:, None, None], np.maximum(related, 0)] & (related >= 0)
        return np.log1p(hit.sum(-1, dtype=np.float32))

    def ease_at(self, histories: list, rows: np.ndarray) -> np.ndarray:
        """``[b, C]``: ``x_u B`` at the titles ``rows`` ``[b, C]`` only: the sum of the
        weights from each history title to each of the user's titles. Per user, the
        history's rows of ``B`` and then the titles' columns (two contiguous takes:
        measured faster than one flat gather over the batch, whose index arrays are the
        size of the gather)."""
        out = np.zeros(rows.shape, np.float32)
        safe = np.maximum(rows, 0)
        for i, history in enumerate(histories):
            if len(history):
                out[i] = self.ease_weights.take(history, axis=0).take(safe[i], axis=1).sum(0)
        return out

    def __call__(self, queries: np.ndarray, histories: list | None = None,
                 exclude: list | None = None, allowed: np.ndarray | None = None,
                 batch_size: int = 512) -> Candidates:
        """Candidates of each query: ``queries`` ``[b, d]``; ``histories`` (EASE's input,
        title rows per query; needed with EASE), ``exclude`` (candidate ids per query,
        never returned), ``allowed`` (bool ``[n]``: only these may be returned)."""
        return self._batched(queries, histories, exclude, allowed, None, batch_size)

    def signals_for(self, queries: np.ndarray, histories: list | None, exclude: list | None,
                    rows: np.ndarray, batch_size: int = 512) -> Candidates:
        """The signals of any titles ``rows`` ``[b, C]`` (-1 = padding; e.g. a user's
        held-out titles), ranks taken in the lists the generators would return with
        ``exclude``."""
        return self._batched(queries, histories, exclude, None, rows, batch_size)

    def _batched(self, queries, histories, exclude, allowed, rows, batch_size) -> Candidates:
        def part(s):
            return self._batch(queries[s:s + batch_size],
                               None if histories is None else histories[s:s + batch_size],
                               None if exclude is None else exclude[s:s + batch_size], allowed,
                               None if rows is None else rows[s:s + batch_size])
        parts = [part(s) for s in range(0, len(queries), batch_size)]
        if not parts:
            width = (self.k + self.k_ease) if rows is None else rows.shape[1]
            return Candidates(np.zeros((0, width), np.int64),
                              {s: np.zeros((0, width), np.float32) for s in self.signals})
        return Candidates(np.concatenate([p.rows for p in parts]),
                          {s: np.concatenate([p.signals[s] for p in parts]) for s in self.signals})

    def _batch(self, queries, histories, exclude, allowed, rows) -> Candidates:
        tower, scores = self.index.search(queries, self.k, exclude=exclude, allowed=allowed,
                                          positions=True)
        ease = ease_top = None
        if self.needs_history and histories is None:
            raise ValueError("EASE's and the franchise signals need each user's history "
                             "(title rows).")
        if self._full_ease:
            ease = self.ease_scores(histories)
            blocked = np.zeros(ease.shape, bool)
            if exclude is not None:
                blocked[self.index.excluded_pairs(exclude)] = True
            if allowed is not None:
                blocked |= ~np.asarray(allowed, bool)[None, :]
            ease_top = top_k(ease, self.k_ease, blocked)
            # Fewer allowed titles than asked for: the blocked ones it returned are padding.
            ease_top = np.where(np.take_along_axis(blocked, ease_top, 1), -1, ease_top)
        if rows is None:
            rows = tower
            if self.k_ease:
                added = ease_top[:, :self.k_ease]
                already = (added[:, :, None] == tower[:, None, :]).any(-1)
                rows = np.concatenate([tower, np.where(already, -1, added)], axis=1)
        return self.candidates(queries, histories, rows, ease, tower,
                               np.where(tower >= 0, scores, 0.0) if rows is tower else None)

    def candidates(self, queries: np.ndarray, histories: list | None, rows: np.ndarray,
                   ease: np.ndarray | None, tower: np.ndarray,
                   similarity: np.ndarray | None = None) -> Candidates:
        """The signals of titles ``rows`` ``[b, C]`` (any titles: candidates or others) for
        users with ``queries`` and ``histories``, given their full EASE scores ``ease``
        ``[b, n]`` (or None: summed where needed), the two-tower's top titles ``tower``
        ``[b, k]``, against which both ranks are counted, and (optionally) the two-tower
        scores of ``rows`` as the index returned them."""
        pad, in_pool, same = rows < 0, tower >= 0, rows is tower
        out = {}

        def rank(values: np.ndarray, pool: np.ndarray) -> np.ndarray:
            """How many of the user's two-tower top titles score higher: 0 = above them all."""
            if same:
                # The titles are the pool itself: a sort, not a [b, C, k] comparison; each
                # title's count is the sorted position of the first title with its score
                # (equal scores share the lower rank, as the count has it).
                masked = np.where(in_pool, pool, -np.inf)
                order = np.argsort(-masked, axis=1, kind="stable")
                ordered = np.take_along_axis(masked, order, axis=1)
                first = np.ones(ordered.shape, bool)
                first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
                start = np.maximum.accumulate(
                    np.where(first, np.arange(ordered.shape[1]), 0), axis=1)
                count = np.empty_like(start)
                np.put_along_axis(count, order, start, axis=1)
                return np.log1p(count)
            higher = (pool[:, None, :] > values[:, :, None]) & in_pool[:, None, :]
            return np.log1p(higher.sum(-1))

        if {"similarity", "similarity_rank"} & set(self.signals):
            if similarity is None:
                similarity = self._similarity(queries, rows)
            out["similarity"] = similarity
            if "similarity_rank" in self.signals:
                out["similarity_rank"] = rank(similarity, similarity if same else
                                              self._similarity(queries, tower))
        if {"ease", "ease_rank"} & set(self.signals):
            at = ((lambda r: np.take_along_axis(ease, np.maximum(r, 0), 1)) if ease is not None
                  else (lambda r: self.ease_at(histories, r)))
            out["ease"] = at(rows)
            if "ease_rank" in self.signals:
                out["ease_rank"] = rank(out["ease"], out["ease"] if same else at(tower))
        if "franchise" in self.signals:
            out["franchise"] = self.franchise_at(histories, rows)
        return Candidates(rows, {s: np.where(pad, 0.0, out[s]).astype(np.float32)
                                 for s in self.signals})

    def _similarity(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Two-tower scores ``[b, C]`` of title rows ``[b, C]`` (exact dot products)."""
        return protocol.similarity(queries, self.index.embeddings, np.arange(len(queries)), rows)
