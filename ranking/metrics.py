"""Ranking metrics in plain numpy: Recall@K, NDCG@K, list NDCG and its random-order
expectation, MRR, and the metrics of reordering candidate lists.

Shared by retrieval evaluation (ranking every title a user has not seen), the ranking
stage and the report. Conventions: binary or graded relevance, gain ``2**rel - 1``,
discount :func:`discount` (``1 / log2(rank + 1)`` with ranks from 1).
Top-K selection (a kernel, not a metric) lives in :mod:`towers.topk`.
"""

from __future__ import annotations

import numpy as np


def discount(ranks) -> np.ndarray:
    """The position discount ``1 / log2(rank + 1)`` of ranks counted from 1, the one
    definition every DCG here uses."""
    return 1.0 / np.log2(np.asarray(ranks) + 1)


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
    discounts = discount(np.arange(1, k + 1))
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
    return ((2.0 ** rel - 1.0) * discount(np.arange(1, rel.shape[-1] + 1))).sum(-1)


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
    cum = np.concatenate([[0.0], np.cumsum(discount(np.arange(1, labels.shape[1] + 1)))])
    expected = (2.0 ** labels - 1.0).sum(1) / np.maximum(n, 1) * cum[k_eff]
    best = dcg(-np.sort(-labels, axis=1), k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(best > 0, expected / best, np.nan)


def mrr(hit: np.ndarray) -> np.ndarray:
    """Reciprocal rank of the first hit per query (0 when none): ``[num_queries]``."""
    hit = np.asarray(hit, bool)
    first = hit.argmax(1)
    return np.where(hit.any(1), 1.0 / (first + 1), 0.0)


def order_metrics_per_query(candidates: np.ndarray, scores: np.ndarray, relevant: np.ndarray,
                            n_relevant: np.ndarray, ks=(10,)) -> dict:
    """Metrics of ordering each query's candidate list by ``scores`` (best first), per
    query: ``{"ndcg@k", "recall@k" for k in ks, "mrr"}``, each ``[queries]`` (NaN for
    NDCG and recall where nothing is relevant; MRR 0 without a hit).

    Args:
      candidates: ``[queries, C]`` item indices (-1 = padding, ranked last).
      scores: ``[queries, C]`` the ordering scores (ties keep candidate order).
      relevant: ``[queries, num_items]`` bool.
      n_relevant: ``[queries]`` relevant items per query (recall's denominator: those
        retrieval missed count too).
    """
    order = np.argsort(np.where(candidates >= 0, -scores, np.inf), axis=1, kind="stable")
    hit = hits(np.take_along_axis(candidates, order, axis=1), relevant)
    out = {}
    for k in ks:
        out[f"ndcg@{k}"] = ndcg_at_k(hit, n_relevant, k)
        out[f"recall@{k}"] = recall_at_k(hit, n_relevant, k)
    out["mrr"] = mrr(hit).astype(np.float64)
    return out


def order_metrics(candidates: np.ndarray, scores: np.ndarray, relevant: np.ndarray,
                  n_relevant: np.ndarray, ks=(10,)) -> dict:
    """The means of :func:`order_metrics_per_query`: NDCG and recall over queries with
    something relevant, MRR over all queries."""
    per_query = order_metrics_per_query(candidates, scores, relevant, n_relevant, ks)
    return {k: float(np.mean(v) if k == "mrr" else np.nanmean(v)) for k, v in per_query.items()}


# ---------------------------------------------------------------------------------------
# Beyond accuracy: what a list is, whatever the user does with it.

def top_items(candidates: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """``[queries, k]`` the first ``k`` candidates of each query ordered by ``scores``
    (best first, ties in candidate order, -1 padding last), as
    :func:`order_metrics_per_query` orders them."""
    order = np.argsort(np.where(candidates >= 0, -scores, np.inf), axis=1, kind="stable")
    return np.take_along_axis(candidates, order[:, :k], axis=1)


def novelty(top: np.ndarray, share: np.ndarray) -> np.ndarray:
    """Per query, the mean self-information ``-log2(share)`` of its items (``share``:
    ``[num_items]`` the fraction of users who have each, > 0): a list of titles few
    people know scores high. NaN for a query with no item."""
    valid = top >= 0
    bits = -np.log2(share[np.maximum(top, 0)]) * valid
    with np.errstate(invalid="ignore", divide="ignore"):
        return bits.sum(1) / valid.sum(1)


def variety(top: np.ndarray, features: np.ndarray, block: int = 4096) -> np.ndarray:
    """Per query, one minus the mean Jaccard similarity of its items' feature sets over
    all pairs (``features``: ``[num_items, F]`` bool, e.g. genres): 0 when every item
    has the same genres, 1 when no two share one. Two items without any feature count
    as alike. NaN for a query with fewer than two items."""
    out = np.full(len(top), np.nan)
    if not features.shape[1]:      # a source without the features: not measured
        return out
    for start in range(0, len(top), block):
        part = top[start:start + block]
        valid = part >= 0
        hot = features[np.maximum(part, 0)].astype(np.float32) * valid[..., None]  # [q, k, F]
        both = np.einsum("qif,qjf->qij", hot, hot)
        sizes = hot.sum(-1)
        either = sizes[:, :, None] + sizes[:, None, :] - both
        jaccard = np.where(either > 0, both / np.maximum(either, 1), 1.0)
        pair = valid[:, :, None] & valid[:, None, :] & ~np.eye(part.shape[1], dtype=bool)
        pairs = pair.sum((1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + block] = np.where(
                pairs > 0, 1.0 - (jaccard * pair).sum((1, 2)) / pairs, np.nan)
    return out


def coverage(top: np.ndarray, num_items: int) -> float:
    """The share of the catalog that appears in some query's list."""
    return float(len(np.unique(top[top >= 0])) / num_items) if num_items else float("nan")
