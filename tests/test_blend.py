"""The linear blend of candidate signals (ranking/blend.py): its loss and gradient by
hand and by finite differences, and what it learns from lists where one signal decides."""

import numpy as np
import pytest

from ranking import blend


def test_loss_by_hand():
    # One list of two titles, one input z = [1, -1], weight 1: scores [1, -1], the first
    # relevant. softmax = [e / (e + 1/e), ...]; loss = -log(e / (e + e^-1)) = log(1 + e^-2).
    z = np.array([[[1.0], [-1.0]]])
    target = np.array([[1.0, 0.0]])
    mask = np.ones((1, 2), bool)
    loss, gradient = blend._loss_and_gradient(np.array([1.0]), z, target, mask, l2=0.0)
    assert loss == pytest.approx(np.log1p(np.exp(-2.0)))
    # d/dw = sum_l (p_l - t_l) z_l = (p0 - 1) * 1 + p1 * (-1) = -2 p1, p1 = 1 / (1 + e^2).
    assert gradient[0] == pytest.approx(-2.0 / (1.0 + np.exp(2.0)))


def test_gradient_matches_finite_differences_with_padding():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 4, 3))
    mask = np.ones((5, 4), bool)
    mask[1, 3] = mask[4, 2:] = False
    target = rng.random((5, 4)) * mask
    target /= target.sum(axis=1, keepdims=True)
    w = rng.normal(size=3)
    _, gradient = blend._loss_and_gradient(w, z, target, mask, l2=0.1)
    h = 1e-6
    numeric = [(blend._loss_and_gradient(w + h * e, z, target, mask, 0.1)[0]
                - blend._loss_and_gradient(w - h * e, z, target, mask, 0.1)[0]) / (2 * h)
               for e in np.eye(3)]
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-8)


def test_the_blend_learns_the_signal_that_decides_and_ignores_noise():
    rng = np.random.default_rng(1)
    n, size = 400, 10
    decisive = rng.normal(size=(n, size)).astype(np.float32)
    noise = rng.normal(size=(n, size)).astype(np.float32)
    popularity = rng.integers(0, 100, size=(n, size)).astype(np.float32)
    relevance = (decisive == decisive.max(axis=1, keepdims=True)).astype(np.float32)
    mask = np.ones((n, size), bool)
    mask[:, -2:] = False                       # padding never counts
    relevance[:, -2:] = 0.0
    relevance[0] = 0.0                         # a list with nothing relevant is left out
    fitted = blend.fit({"a": decisive, "b": noise}, popularity, relevance, mask,
                       ("a", "b", blend.POPULARITY))
    w = dict(zip(fitted.names, fitted.weights))
    assert w["a"] > 5 * max(abs(w["b"]), abs(w[blend.POPULARITY]))
    # Standardised on the unpadded entries of the lists it learns from.
    # (a list whose best title fell in the padding has nothing relevant either).
    taught = relevance.sum(axis=1) > 0
    assert 300 < taught.sum() < n
    assert fitted.mean[0] == pytest.approx(float(decisive[taught, :-2].mean()), abs=1e-5)
    # It orders new lists as the decisive signal does; round-trips through config.json.
    again = blend.Blend.from_dict(fitted.to_dict())
    scores = again.score({"a": decisive, "b": noise}, popularity)
    agree = np.argmax(scores[:, :-2], 1) == np.argmax(decisive[:, :-2], 1)
    assert agree.mean() >= 0.99   # the small weights on noise move a near tie or two
    with pytest.raises(ValueError, match="relevant"):
        blend.fit({"a": decisive}, popularity, np.zeros_like(relevance), mask, ("a",))
