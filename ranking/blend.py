"""A linear blend of the candidate signals: the simple reorderer the listwise ranker has
to beat (does the MLP over title features and signals earn its place over a weighted sum
of what stage one already knows?).

    blend = fit(lists.signals, popularity, lists.relevance, lists.mask, names)
    scores = blend.score(cand.signals, popularity_of_candidates)     # [n, C]

Inputs (``inputs``): the candidate signals the ranker reads (``pipelines.candidates``:
the two-tower and EASE scores and ranks, the franchise signal) and ``log(1 + training
count)`` of the title, standardised on the lists it is fitted on. The weights minimise
the listwise softmax cross-entropy (ListNet top-1, the ranker's default loss) of the
same lists the ranker learns from, plus ``l2 * |w|^2``, by L-BFGS (scipy) from zero: a
convex problem, so the fit is exact and needs no seed or early stopping.

Numpy and scipy only; the blend is a few numbers in ``config.json["blend"]``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

POPULARITY = "log_popularity"   # the one input that is not a candidate signal
L2 = 1e-3


@dataclasses.dataclass(frozen=True)
class Blend:
    """``score = sum_f weights[f] * (x_f - mean[f]) / scale[f]`` over ``names``."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]

    def score(self, signals: dict, popularity: np.ndarray) -> np.ndarray:
        """Scores ``[n, C]`` float32 of candidates with ``signals`` (``{name: [n, C]}``)
        and training counts ``popularity`` ``[n, C]``."""
        x = inputs(signals, popularity, self.names)
        z = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.scale, np.float32)
        return (z @ np.asarray(self.weights, np.float32)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "mean": list(self.mean), "scale": list(self.scale),
                "weights": list(self.weights)}

    @classmethod
    def from_dict(cls, data: dict) -> Blend:
        return cls(*(tuple(data[k]) for k in ("names", "mean", "scale", "weights")))


def inputs(signals: dict, popularity: np.ndarray, names) -> np.ndarray:
    """``[n, C, len(names)]`` float32: each signal of ``names`` and, for ``POPULARITY``,
    ``log(1 + popularity)``."""
    columns = [np.log1p(np.maximum(popularity, 0)) if name == POPULARITY else signals[name]
               for name in names]
    return np.stack(columns, axis=-1).astype(np.float32)


def _loss_and_gradient(w: np.ndarray, z: np.ndarray, target: np.ndarray, mask: np.ndarray,
                       l2: float) -> tuple[float, np.ndarray]:
    """Mean listwise softmax cross-entropy over the lists and its gradient in ``w``."""
    s = np.where(mask, z @ w, -np.inf)
    s -= s.max(axis=1, keepdims=True)
    e = np.exp(s)                         # 0 at padding
    total = e.sum(axis=1, keepdims=True)
    p = e / total
    log_p = np.where(mask, s - np.log(total), 0.0)
    n = len(z)
    loss = -(target * log_p).sum() / n + l2 * w @ w
    gradient = np.einsum("nl,nlf->f", p - target, z) / n + 2 * l2 * w
    return float(loss), gradient


def fit(signals: dict, popularity: np.ndarray, relevance: np.ndarray, mask: np.ndarray,
        names, l2: float = L2) -> Blend:
    """The blend of ``names`` fitted on padded lists (``signals`` ``{name: [n, L]}``,
    training counts ``popularity``, graded ``relevance`` and ``mask`` ``[n, L]``); lists
    with no relevant title teach nothing and are left out."""
    from scipy.optimize import minimize  # imported where used: scipy's load

    names = tuple(names)
    if not names:
        raise ValueError("A blend needs at least one input in `names`. Received: ().")
    relevance = np.where(mask, relevance, 0.0).astype(np.float64)
    keep = relevance.sum(axis=1) > 0
    if not keep.any():
        raise ValueError("No list has a relevant title to fit the blend on.")
    x = inputs({k: v[keep] for k, v in signals.items()}, popularity[keep], names).astype(np.float64)
    mask = mask[keep]
    values = x[mask]
    mean, scale = values.mean(axis=0), values.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)   # a constant input: weight it by itself
    z = np.where(mask[..., None], (x - mean) / scale, 0.0)
    target = relevance[keep] / relevance[keep].sum(axis=1, keepdims=True)
    result = minimize(_loss_and_gradient, np.zeros(len(names)), args=(z, target, mask, l2),
                      jac=True, method="L-BFGS-B")
    return Blend(names, tuple(map(float, mean)), tuple(map(float, scale)),
                 tuple(map(float, result.x)))


def simple_orders(counts: np.ndarray, blend: Blend | None, with_ease: bool) -> dict:
    """``{order: fn(tables, lists) -> scores}``: the reorderings the ranker is weighed
    against besides retrieval order, from the candidates' signals (``lists.signals``)
    and the titles' training ``counts``: the ``blend``, and EASE's own order where the
    candidates carry EASE's score (``with_ease``)."""
    orders = {}
    if blend is not None:
        orders["blend"] = lambda tables, lists: blend.score(
            lists.signals, counts[np.maximum(lists.anime_rows, 0)])
    if with_ease:
        orders["ease_order"] = lambda tables, lists: lists.signals["ease"]
    return orders
