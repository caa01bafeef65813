"""Listwise ranking losses, written here because TensorFlow Ranking cannot be installed
beside TF 2.20. Each takes graded relevance ``labels`` ``[batch, list]`` (>= 0), model
``scores`` ``[batch, list]`` and a bool ``mask`` ``[batch, list]`` (False = padding), and
returns the mean loss over lists that have something to learn from (lists with no
relevant item, or no valid item, contribute 0 and do not count in the mean).
"""

from __future__ import annotations

import tensorflow as tf

from pipelines.config import LOSS_NAMES

_NEG = -1e9  # a finite "minus infinity": exp() underflows to 0 and gradients stay finite


def _prepare(labels, scores, mask):
    labels = tf.cast(labels, tf.float32)
    scores = tf.cast(scores, tf.float32)
    mask = tf.cast(mask, tf.bool)
    labels = tf.where(mask, labels, tf.zeros_like(labels))
    return labels, scores, mask


def _mean_over(per_list, active):
    active = tf.cast(active, tf.float32)
    return tf.reduce_sum(per_list * active) / tf.maximum(tf.reduce_sum(active), 1.0)


def gains(labels):
    """NDCG gain ``2**rel - 1``."""
    return tf.pow(2.0, labels) - 1.0


def softmax_loss(labels, scores, mask):
    """Listwise softmax cross-entropy: labels normalised to a distribution over the list
    (Cao et al. 2007, "ListNet" top-1), against the softmax of the scores."""
    labels, scores, mask = _prepare(labels, scores, mask)
    total = tf.reduce_sum(labels, axis=1, keepdims=True)
    target = tf.math.divide_no_nan(labels, total)
    log_p = tf.nn.log_softmax(tf.where(mask, scores, _NEG), axis=1)
    per_list = -tf.reduce_sum(tf.where(mask, target * log_p, 0.0), axis=1)
    return _mean_over(per_list, total[:, 0] > 0)


def list_mle_loss(labels, scores, mask):
    """ListMLE (Xia et al. 2008): negative log-likelihood of the permutation that sorts
    the list by relevance (ties keep list order) under the Plackett-Luce model:
    ``sum_i [log sum_{j >= i} exp(s_j) - s_i]`` over valid positions."""
    labels, scores, mask = _prepare(labels, scores, mask)
    # Sort by relevance, descending; padding sorts last.
    key = tf.where(mask, labels, -1.0)
    order = tf.argsort(key, axis=1, direction="DESCENDING", stable=True)
    s = tf.gather(scores, order, batch_dims=1)
    m = tf.gather(mask, order, batch_dims=1)
    s = tf.where(m, s, _NEG)
    # log-sum-exp over each suffix: reverse, cumulative logsumexp, reverse back.
    suffix = tf.reverse(tf.math.cumulative_logsumexp(tf.reverse(s, [1]), axis=1), [1])
    per_list = tf.reduce_sum(tf.where(m, suffix - s, 0.0), axis=1)
    valid = tf.reduce_sum(tf.cast(mask, tf.float32), axis=1)
    return _mean_over(per_list, (valid > 1) & (tf.reduce_sum(labels, axis=1) > 0))


def approx_ndcg_loss(labels, scores, mask, temperature: float = 0.1):
    """ApproxNDCG (Qin, Liu & Li 2010): NDCG with each item's rank replaced by the smooth
    ``1 + sum_{j != i} sigmoid((s_j - s_i) / temperature)``; the loss is ``-ApproxNDCG``."""
    labels, scores, mask = _prepare(labels, scores, mask)
    valid = tf.cast(mask, tf.float32)
    diff = (scores[:, None, :] - scores[:, :, None]) / temperature   # [b, i, j] = s_j - s_i
    pair = tf.sigmoid(diff) * valid[:, None, :] * valid[:, :, None]
    pair = pair * (1.0 - tf.eye(tf.shape(scores)[1], batch_shape=[1]))
    rank = 1.0 + tf.reduce_sum(pair, axis=2)
    dcg = tf.reduce_sum(gains(labels) * valid / (tf.math.log(1.0 + rank) / tf.math.log(2.0)), 1)
    ideal = ideal_dcg(labels, mask)
    per_list = -tf.math.divide_no_nan(dcg, ideal)
    return _mean_over(per_list, ideal > 0)


def mse_loss(labels, scores, mask):
    """Pointwise mean squared error over valid items: the non-listwise baseline."""
    labels, scores, mask = _prepare(labels, scores, mask)
    valid = tf.cast(mask, tf.float32)
    per_list = tf.math.divide_no_nan(tf.reduce_sum(tf.square(scores - labels) * valid, 1),
                                     tf.reduce_sum(valid, 1))
    return _mean_over(per_list, tf.reduce_sum(valid, 1) > 0)


def ideal_dcg(labels, mask, k: int | None = None):
    """DCG of the list sorted by relevance: ``[batch]``."""
    labels = tf.where(tf.cast(mask, tf.bool), tf.cast(labels, tf.float32), 0.0)
    best = tf.sort(labels, axis=1, direction="DESCENDING")
    if k is not None:
        best = best[:, :k]
    positions = tf.cast(tf.range(tf.shape(best)[1]), tf.float32)
    return tf.reduce_sum(gains(best) / (tf.math.log(positions + 2.0) / tf.math.log(2.0)), 1)


LOSSES = {
    "approx_ndcg": approx_ndcg_loss,
    "list_mle": list_mle_loss,
    "softmax": softmax_loss,
    "mse": mse_loss,
}
# The config and the CLI validate loss names without importing TensorFlow, from
# pipelines.config.LOSS_NAMES: it must name exactly these (checked even under -O).
if tuple(LOSSES) != LOSS_NAMES:
    raise AssertionError(f"ranking.losses.LOSSES {tuple(LOSSES)} and "
                         f"pipelines.config.LOSS_NAMES {LOSS_NAMES} differ")


def get(name: str):
    """The loss function called ``name`` (one of ``LOSSES``)."""
    if name not in LOSSES:
        raise ValueError(f"Unknown ranking loss {name!r}; choose one of {sorted(LOSSES)}.")
    return LOSSES[name]
