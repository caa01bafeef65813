"""Top-K selection: the indices of each row's highest scores, threaded over rows.

The kernel of exact retrieval (``towers.index``) and of every ranked-list evaluation
(the training stages rank all unseen titles per user with it). Plain numpy; it lives in
``towers`` because the index needs it and towers import nothing from ``ranking``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np


_WORKERS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else (os.cpu_count() or 1))
_PARALLEL_MIN_SIZE = 1 << 18     # below ~256k scores a thread hand-off costs more than it saves
_MIN_ROWS_PER_THREAD = 16
_POOL: tuple[int, ThreadPoolExecutor] | None = None   # (owning pid, pool)


def _pool() -> ThreadPoolExecutor:
    """The process's top-k threads. A forked child gets its own pool: the parent's
    threads do not exist there, and work sent to them would wait forever."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(_WORKERS, thread_name_prefix="top_k"))
    return _POOL[1]


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first.

    Args:
      scores: ``[num_queries, num_items]``.
      k: how many to return (clipped to ``num_items``).
      exclude: optional bool mask ``[num_queries, num_items]``; True items are never
        returned (e.g. titles the user has already seen).

    Returns:
      ``[num_queries, k]`` int64 item indices; equal scores are ordered (and chosen at
      the k-th place) by lower index, as a stable sort would.

    Large inputs are split by rows over a thread per core: numpy's partition releases
    the GIL, and selection, not the matmul, is the cost of exact retrieval
    (``bench/compute_floor.py``).
    """
    if k <= 0:
        raise ValueError(f"`k` should be a positive integer. Received: k={k}.")
    scores = np.asarray(scores, dtype=np.float32)
    k = min(k, scores.shape[1])
    workers = min(_WORKERS, len(scores) // _MIN_ROWS_PER_THREAD)
    if workers <= 1 or scores.size < _PARALLEL_MIN_SIZE:
        return _top_k_rows(scores, k, exclude)
    bounds = np.linspace(0, len(scores), workers + 1).astype(int)
    parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    return np.concatenate(list(_pool().map(
        lambda rows: _top_k_rows(scores[rows], k, None if exclude is None else exclude[rows]),
        parts)))


def _top_k_rows(scores: np.ndarray, k: int, exclude: np.ndarray | None) -> np.ndarray:
    if exclude is not None:
        scores = np.where(exclude, -np.inf, scores)
    n = scores.shape[1]
    # Partition ascending at n - k: the k largest land in the last k columns (no
    # negated copy of the whole block), then only those k are sorted.
    part = np.argpartition(scores, n - k, axis=1)[:, n - k:]
    values = np.take_along_axis(scores, part, axis=1)
    if k < n:
        # Which of several titles tied at the boundary get in is the partition's choice;
        # make it the lowest indices, as a stable full sort would (popularity counts tie
        # a lot). Only rows with such a tie pay for the sort.
        tied = (scores >= values.min(axis=1, keepdims=True)).sum(axis=1) > k
        if tied.any():
            part[tied] = np.argsort(-scores[tied], axis=1, kind="stable")[:, :k]
            values[tied] = np.take_along_axis(scores[tied], part[tied], axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    ranked = np.take_along_axis(values, order, axis=1)
    tied = (ranked[:, 1:] == ranked[:, :-1]).any(axis=1)
    if tied.any():  # equal scores inside the k: best first, then lower index
        order[tied] = np.lexsort((part[tied], -values[tied]), axis=1)
    return np.take_along_axis(part, order, axis=1)
