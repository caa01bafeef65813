"""Listwise losses against hand-computed values; finite gradients on padded and all-zero
lists; a tiny model learns a planted ordering (judged by list NDCG, tested in
test_metrics.py)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from ranking import losses
from ranking.metrics import list_ndcg, random_list_ndcg

LN2 = math.log(2.0)


def _t(x, dtype=tf.float32):
    return tf.constant(np.asarray(x, dtype=bool if dtype == tf.bool else np.float32))


def test_softmax_loss_by_hand():
    # labels [1, 0, 3] -> target [0.25, 0, 0.75]; scores [0, 0, ln 2] ->
    # softmax [0.25, 0.25, 0.5]; loss = -(0.25 ln 0.25 + 0.75 ln 0.5).
    got = losses.softmax_loss(_t([[1, 0, 3]]), _t([[0, 0, LN2]]), _t([[1, 1, 1]], tf.bool))
    assert float(got) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.5)))


def test_list_mle_by_hand():
    # Relevance order: item 2 (3), item 0 (1), item 1 (0). Scores s = [1, 0, 2]:
    # loss = [lse(2, 1, 0) - 2] + [lse(1, 0) - 1] + [lse(0) - 0].
    lse = lambda *x: math.log(sum(math.exp(v) for v in x))  # noqa: E731
    expected = (lse(2, 1, 0) - 2) + (lse(1, 0) - 1) + 0.0
    got = losses.list_mle_loss(_t([[1, 0, 3]]), _t([[1, 0, 2]]), _t([[1, 1, 1]], tf.bool))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_approx_ndcg_by_hand():
    # Two items, labels [1, 0], scores [1, 0], temperature 1:
    # rank_0 = 1 + sigmoid(0 - 1) = 1.26894, rank_1 = 1 + sigmoid(1) = 1.73106.
    # ApproxDCG = 1 / log2(1 + 1.26894); ideal DCG = 1 -> loss = -ApproxNDCG.
    rank0 = 1 + 1 / (1 + math.exp(1))
    expected = -1 / math.log2(1 + rank0)
    got = losses.approx_ndcg_loss(_t([[1, 0]]), _t([[1, 0]]), _t([[1, 1]], tf.bool), temperature=1.0)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # With a very small temperature it tends to the true NDCG (1 here; 0.6309 reversed).
    sharp = losses.approx_ndcg_loss(_t([[1, 0]]), _t([[0, 1]]), _t([[1, 1]], tf.bool), 1e-3)
    assert float(sharp) == pytest.approx(-1 / math.log2(3), rel=1e-4)


def test_mse_by_hand_ignores_padding():
    got = losses.mse_loss(_t([[1, 0, 5]]), _t([[0, 2, 0]]), _t([[1, 1, 0]], tf.bool))
    assert float(got) == pytest.approx((1 + 4) / 2)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_padding_does_not_change_the_loss(name):
    loss = losses.get(name)
    base = loss(_t([[2, 0, 1]]), _t([[0.3, -0.2, 0.1]]), _t([[1, 1, 1]], tf.bool))
    padded = loss(_t([[2, 0, 1, 4, 4]]), _t([[0.3, -0.2, 0.1, 9.0, -9.0]]),
                  _t([[1, 1, 1, 0, 0]], tf.bool))
    assert float(base) == pytest.approx(float(padded), rel=1e-5)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_gradients_are_finite_on_padded_and_all_zero_lists(name):
    scores = tf.Variable([[0.5, -1.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0]])
    labels = _t([[0, 0, 0, 0], [2, 0, 1, 0], [1, 0, 0, 0]])   # list 0: all zero
    mask = _t([[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], tf.bool)  # list 2: all padding
    with tf.GradientTape() as tape:
        value = losses.get(name)(labels, scores, mask)
    grad = tape.gradient(value, scores)
    assert np.isfinite(float(value)) and np.isfinite(grad.numpy()).all()
    assert np.all(grad.numpy()[:, 3] == 0) and np.all(grad.numpy()[2] == 0), "padding gets no gradient"


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_a_tiny_model_learns_a_planted_ordering(name):
    # Items have 4 features; relevance is a fixed function of them. A linear scorer
    # trained with each loss must rank held-out lists far better than random.
    rng = np.random.default_rng(0)
    w_true = np.array([1.5, -1.0, 0.5, 0.0])
    x = rng.normal(size=(400, 8, 4)).astype(np.float32)
    rel = np.clip(np.round(x @ w_true + 1.5), 0, 4).astype(np.float32)
    mask = np.ones(rel.shape, bool)
    mask[:, 6:] = rng.random((400, 2)) < 0.5  # some padding
    w = tf.Variable(tf.zeros([4]))
    opt = tf.keras.optimizers.Adam(0.05)
    loss = losses.get(name)
    for _ in range(150):
        with tf.GradientTape() as tape:
            value = loss(rel[:300], tf.tensordot(x[:300], w, 1), mask[:300])
        opt.apply_gradients([(tape.gradient(value, w), w)])
    scores = (x[300:] @ w.numpy())
    learned = np.nanmean(list_ndcg(scores, rel[300:], mask[300:]))
    floor = np.nanmean(random_list_ndcg(rel[300:], mask[300:]))
    assert learned > 0.95 and learned > floor + 0.1


def test_unknown_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of"):
        losses.get("lambdarank")


def test_loss_names_match_the_config():
    # pipelines.config names the losses without TensorFlow; ranking.losses checks it at
    # import, and this says so where a new loss would be added.
    from pipelines.config import LOSS_NAMES

    assert tuple(losses.LOSSES) == LOSS_NAMES
