"""Two knobs a fan turns at serving: variety and niche, a re-rank of each user's ranked
candidates (:class:`~serving.recommender.Filters` ``variety`` and ``niche``; both 0 by
default: the model's order).

- **niche** (0 to 1): each candidate's relevance loses ``niche`` times its popularity,
  ``log(1 + lists) / log(1 + the most lists)`` of the training data (0 for a title on
  no list, 1 for the most listed one): at 1, the most popular title gives up the whole
  range between the user's best and worst candidate.
- **variety** (0 to 1): maximal marginal relevance (Carbonell and Goldstein, 1998) over
  the candidate tower's embeddings. Titles are taken one at a time; each next one is the
  candidate with the highest ``(1 - variety) * relevance - variety * similarity``, where
  similarity is its highest cosine to the titles already taken (0 before the first).

Relevance is the model's score scaled to [0, 1] within each user's candidates (a ranker's
scores compare within one list only). The first ``depth`` places are chosen this way and
the rest follow in the model's order, so the franchise rules that run next
(:mod:`serving.franchise`) still have titles to fill a list with. What it costs and gives
is measured by ``bench/variety.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np


def popularity_share(lists: np.ndarray) -> np.ndarray:
    """Per title, its popularity in [0, 1] as the niche knob reads it: ``log(1 + lists) /
    log(1 + max lists)`` (``lists``: the training lists holding each title)."""
    lists = np.maximum(np.nan_to_num(np.asarray(lists, np.float64)), 0.0)
    top = np.log1p(lists.max()) if len(lists) else 0.0
    return np.log1p(lists) / top if top > 0 else np.zeros(len(lists))


def rerank(rows: np.ndarray, scores: np.ndarray, unit: np.ndarray, popularity: np.ndarray,
           variety: float = 0.0, niche: float = 0.0,
           depth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each user's candidates re-ordered by the knobs.

    Args:
      rows, scores: ``[n, c]`` candidate title rows, best first (-1 padding, its score
        -inf), and the model's scores.
      unit: ``[titles, d]`` the candidate embeddings scaled to unit length.
      popularity: ``[titles]`` in [0, 1] (:func:`popularity_share`).
      variety, niche: the knobs, each in [0, 1].
      depth: places chosen by the knobs (None: all ``c``); the rest keep their order.

    Returns:
      ``[n, c]`` rows and their scores (each title keeps the model's score), re-ordered;
      padding stays last.
    """
    n, c = rows.shape
    if not (variety or niche) or not c:
        return rows, scores
    depth = c if depth is None else min(depth, c)
    valid = rows >= 0
    low = np.where(valid, scores, np.inf).min(axis=1, keepdims=True)
    high = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    with np.errstate(invalid="ignore"):      # padding's -inf against a list of padding
        relevance = np.where(valid, (scores - low) / span, 0.0)
    relevance = relevance - niche * popularity[np.maximum(rows, 0)]
    vectors = unit[np.maximum(rows, 0)]                                   # [n, c, d]
    similar = np.zeros((n, c))
    taken = np.zeros((n, c), bool)
    order = np.empty((n, depth), np.int64)
    everyone = np.arange(n)
    for place in range(depth):
        value = (1.0 - variety) * relevance - variety * similar
        value = np.where(valid, value, -1e30)     # padding only once nothing else is left
        value[taken] = -np.inf
        pick = np.argmax(value, axis=1)
        order[:, place] = pick
        taken[everyone, pick] = True
        if variety:
            chosen = vectors[everyone, pick]                              # [n, d]
            similar = np.maximum(similar, np.einsum("ncd,nd->nc", vectors, chosen))
    rest = np.argsort(taken, axis=1, kind="stable")[:, :c - depth]     # untaken, in order
    order = np.concatenate([order, rest], axis=1)
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(scores, order, axis=1)
