"""Ranking metrics in plain numpy: Recall@K, NDCG@K and top-K selection with exclusions.

Shared by retrieval evaluation (ranking every title a user has not seen) and, later, by
the ranking stage and the report. Conventions: binary or graded relevance, gain
``2**rel - 1``, discount ``1 / log2(rank + 1)`` with ranks from 1.
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


def hits(ranked: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """``hits[i, j]``: is the ``j``-th ranked item of query ``i`` relevant?

    Args:
      ranked: ``[num_queries, k]`` item indices, best first (-1 = padding, never a hit).
      relevant: ``[num_queries, num_items]`` bool.
    """
    got = np.take_along_axis(relevant, np.maximum(ranked, 0), axis=1)
    return got & (ranked >= 0)


def recall_at_k(hit: np.ndarray, num_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-query share of the relevant items found in the first ``k``; NaN with none.

    Args:
      hit: ``[num_queries, >=k]`` bool, from :func:`hits`.
      num_relevant: ``[num_queries]`` relevant items per query.
    """
    num_relevant = np.asarray(num_relevant, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_relevant > 0, hit[:, :k].sum(1) / num_relevant, np.nan)


def ndcg_at_k(hit: np.ndarray, num_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-query binary NDCG@k: DCG of the hits over the DCG of an ideal ranking that
    puts ``min(num_relevant, k)`` relevant items first; NaN with no relevant item."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    top = hit[:, :k].astype(np.float64)
    dcg_value = (top * discounts[: top.shape[1]]).sum(1)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(num_relevant, k).astype(int)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg_value / ideal, np.nan)


def dcg(relevance: np.ndarray, k: int | None = None) -> np.ndarray:
    """DCG of graded relevance lists already in ranked order: ``[..., list_size]``."""
    rel = np.asarray(relevance, dtype=np.float64)
    if k is not None:
        rel = rel[..., :k]
    discounts = 1.0 / np.log2(np.arange(2, rel.shape[-1] + 2))
    return ((2.0 ** rel - 1.0) * discounts).sum(-1)


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2))


def list_ndcg(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None,
              k: int | None = None) -> np.ndarray:
    """Per-list graded NDCG@k of ``scores`` ``[lists, size]`` against ``labels``.

    Items are ranked by descending score; ties keep list order (stable sort). Padded
    items (``mask`` False) rank last and count nothing. Lists whose ideal DCG is 0 (no
    relevant item) give NaN, to be left out of means.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    mask = np.ones(labels.shape, bool) if mask is None else np.asarray(mask, bool)
    labels = np.where(mask, labels, 0.0)
    k = labels.shape[1] if k is None else min(k, labels.shape[1])
    order = np.argsort(np.where(mask, -scores, np.inf), axis=1, kind="stable")
    ranked = np.take_along_axis(labels, order, axis=1)
    ideal = -np.sort(-labels, axis=1)
    got, best = dcg(ranked, k), dcg(ideal, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(best > 0, got / best, np.nan)


def random_list_ndcg(labels: np.ndarray, mask: np.ndarray | None = None,
                     k: int | None = None) -> np.ndarray:
    """Exact expected NDCG@k of a uniformly random order of each list (the floor).

    Each of a list's ``n`` valid items lands in each position with probability ``1/n``,
    so ``E[DCG@k] = sum(gains) / n * sum(discounts[:min(k, n)])``.
    """
    labels = np.asarray(labels, dtype=np.float64)
    mask = np.ones(labels.shape, bool) if mask is None else np.asarray(mask, bool)
    labels = np.where(mask, labels, 0.0)
    n = mask.sum(1)
    k_eff = np.minimum(n, labels.shape[1] if k is None else k)
    cum = np.concatenate([[0.0], np.cumsum(_discounts(labels.shape[1]))])
    expected = (2.0 ** labels - 1.0).sum(1) / np.maximum(n, 1) * cum[k_eff]
    best = dcg(-np.sort(-labels, axis=1), k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(best > 0, expected / best, np.nan)


def mrr(hit: np.ndarray) -> np.ndarray:
    """Reciprocal rank of the first hit per query (0 when none): ``[num_queries]``."""
    hit = np.asarray(hit, bool)
    first = hit.argmax(1)
    return np.where(hit.any(1), 1.0 / (first + 1), 0.0)


def order_metrics(candidates: np.ndarray, scores: np.ndarray, relevant: np.ndarray,
                  n_relevant: np.ndarray, ks=(10,)) -> dict:
    """Metrics of ordering each query's candidate list by ``scores`` (best first).

    Args:
      candidates: ``[queries, C]`` item indices (-1 = padding, ranked last).
      scores: ``[queries, C]`` the ordering scores (ties keep candidate order).
      relevant: ``[queries, num_items]`` bool.
      n_relevant: ``[queries]`` relevant items per query (recall's denominator: those
        retrieval missed count too).

    Returns:
      ``{"ndcg@k", "recall@k" for k in ks, "mrr"}``, means over queries with something
      relevant (MRR over all queries, 0 without a hit).
    """
    order = np.argsort(np.where(candidates >= 0, -scores, np.inf), axis=1, kind="stable")
    hit = hits(np.take_along_axis(candidates, order, axis=1), relevant)
    out = {}
    for k in ks:
        out[f"ndcg@{k}"] = float(np.nanmean(ndcg_at_k(hit, n_relevant, k)))
        out[f"recall@{k}"] = float(np.nanmean(recall_at_k(hit, n_relevant, k)))
    out["mrr"] = float(np.mean(mrr(hit)))
    return out
