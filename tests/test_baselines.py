"""Retrieval baselines: EASE's closed form against a hand-solved case, its Gram matrix
against a direct count, and both baselines on the tiny seeded world."""

import numpy as np
import pytest

from pipelines import baselines
from pipelines.protocol import rank_metrics
from pipelines.tables import FeatureTables
from pipelines.train_retrieval import ease_metrics


def test_ease_closed_form_by_hand():
    # Three users, two titles: rows (1,1), (1,0), (1,1). X'X = [[3, 2], [2, 2]].
    # With lambda 1, P = inv([[4, 2], [2, 3]]) = [[3, -2], [-2, 4]] / 8, and
    # B_ij = -P_ij / P_jj: B_01 = (2/8) / (4/8) = 0.5, B_10 = (2/8) / (3/8) = 2/3.
    x = np.array([[1, 1], [1, 0], [1, 1]], np.float64)
    b = baselines.ease_weights(x.T @ x, 1.0)
    np.testing.assert_allclose(b, [[0.0, 0.5], [2 / 3, 0.0]], rtol=1e-6)
    # A user who has only title 1 scores title 0 at B_10.
    np.testing.assert_allclose(np.array([0.0, 1.0], np.float32) @ b, [2 / 3, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        baselines.ease_weights(x.T @ x, 0.0)


def test_gram_counts_co_occurrences_in_training(tiny_features):
    data = FeatureTables.load(tiny_features)
    train = data.pairs("train")
    g = baselines.gram(data, batch_size=37)  # uneven user blocks
    # Direct count: every pair of titles on one user's training list, via a self-join.
    both = train.merge(train, on="user_row")
    direct = np.zeros_like(g)
    np.add.at(direct, (both["anime_row_x"].to_numpy(), both["anime_row_y"].to_numpy()), 1)
    np.testing.assert_array_equal(g, direct)
    np.testing.assert_array_equal(np.diag(g), np.bincount(train["anime_row"], minlength=len(data.anime)))


def test_ease_is_tuned_on_validation_and_beats_popularity(tiny_features):
    data = FeatureTables.load(tiny_features)
    ease, weights = ease_metrics(data)
    assert weights.shape == (len(data.anime), len(data.anime)) and weights.dtype == np.float32
    assert (np.diag(weights) == 0).all()      # the saved weights: the fitted lambda's B
    np.testing.assert_allclose(weights, baselines.ease_weights(baselines.gram(data), ease["lambda"]))
    tried = ease["validation_recall@100"]
    assert set(tried) == {str(v) for v in baselines.LAMBDAS}
    assert tried[str(ease["lambda"])] == max(tried.values())
    popularity = rank_metrics(baselines.popularity_scorer(data), data, "test")
    # Seeded tiny world: EASE 0.550 vs 0.512 Recall@100, 0.133 vs 0.098 NDCG@10.
    assert ease["recall@100"] > 1.05 * popularity["recall@100"]
    assert ease["ndcg@10"] > 1.2 * popularity["ndcg@10"]


def test_biases_by_hand():
    # Three scores, four free parameters: with no ridge the additive model fits exactly.
    users, titles = np.array([0, 0, 1]), np.array([0, 1, 0])
    scores = np.array([80.0, 60.0, 70.0])
    mu, bu, bi = baselines.fit_biases(users, titles, scores, 2, 2, lam=0.0, iterations=200)
    np.testing.assert_allclose(mu + bu[users] + bi[titles], scores, atol=1e-6)
    assert mu == pytest.approx(70.0)
    # One alternating step with lambda 1, by hand: b_user = (sum of (score - mu)) / (n + 1)
    # = (10 - 10) / 3 = 0 for user 0 and 0 / 2 = 0 for user 1; then b_title0 = (10 + 0) / 3,
    # b_title1 = -10 / 2.
    mu, bu, bi = baselines.fit_biases(users, titles, scores, 2, 2, lam=1.0, iterations=1)
    np.testing.assert_allclose(bu, [0.0, 0.0])
    np.testing.assert_allclose(bi, [10 / 3, -5.0])
    # A huge ridge shrinks every bias to 0: the global mean.
    _, bu, bi = baselines.fit_biases(users, titles, scores, 2, 2, lam=1e9)
    assert np.abs(bu).max() < 1e-6 and np.abs(bi).max() < 1e-6


def test_score_baselines_on_the_tiny_world(tiny_features):
    tables = FeatureTables.load(tiny_features)
    out = baselines.score_metrics(tables)
    rows = out["predictors"]
    biases = next(m for name, m in rows.items() if name.startswith("user + title biases"))
    assert out["entries"] > 100 and str(out["lambda"]) in {str(float(l)) for l in baselines.BIAS_LAMBDAS}
    assert out["lambda"] == min(baselines.BIAS_LAMBDAS, key=lambda l: out["validation_rmse"][str(l)])
    # Users keep personal rating scales in the world: the user mean beats the global
    # mean, and user + title biases beat both.
    assert rows["user mean"]["rmse"] < rows["global mean"]["rmse"]
    assert biases["rmse"] < rows["user mean"]["rmse"] and biases["mae"] < rows["user mean"]["mae"]
    # The global mean's MAE, recomputed.
    u, a, y = baselines.scored_entries(tables, "test")
    train = baselines.scored_entries(tables, "train")[2]
    assert rows["global mean"]["mae"] == pytest.approx(np.mean(np.abs(train.mean() - y)))


def test_ials_solves_its_normal_equations(tiny_features):
    # iALS minimises sum_ui c_ui (p_ui - x_u.y_i)^2 + lambda (|X|^2 + |Y|^2) with p the
    # binary training matrix and c_ui = alpha where p_ui = 1, else 1 (implicit's form).
    # Each sweep ends with the titles, so the returned title factors solve, for every
    # title i and the returned user factors X:
    # (X'X + (alpha - 1) X' diag(p_i) X + lambda I) y_i = alpha X' p_i.
    data = FeatureTables.load(tiny_features)
    lam, alpha = 1.0, 10.0
    users, titles = baselines.ials_factors(data, factors=8, regularization=lam, alpha=alpha,
                                           iterations=30)
    train = data.pairs("train")
    p = np.zeros((len(data.users), len(data.anime)))
    p[train["user_row"], train["anime_row"]] = 1.0
    x = users.astype(np.float64)
    active = p.sum(axis=1) > 0
    np.testing.assert_array_equal(x[~active], 0.0)   # no training entry: a zero row
    x = x[active]
    p = p[active]
    xtx = x.T @ x
    worst = 0.0
    for i in np.flatnonzero(p.sum(axis=0) > 0)[:40]:
        lhs = (xtx + (alpha - 1) * (x.T * p[:, i]) @ x + lam * np.eye(8)) @ titles[i]
        rhs = alpha * x.T @ p[:, i]
        worst = max(worst, np.abs(lhs - rhs).max() / np.abs(rhs).max())
    assert worst < 0.005   # the confidence 1 + alpha instead of alpha: 0.07


IALS_GRID = {"factors": (8, 16), "regularization": (1.0,), "alpha": (1.0, 10.0)}


def test_ials_is_seeded_and_tuned_on_validation(tiny_features):
    data = FeatureTables.load(tiny_features)
    grid = IALS_GRID
    fitted = baselines.fit_ials(data, grid)
    tried = fitted["validation_recall@100"]
    assert [{k: t[k] for k in grid} for t in tried] == baselines.ials_settings(grid)
    best = max(tried, key=lambda t: t["recall@100"])
    assert fitted["settings"] == {k: best[k] for k in grid}
    # The same settings refit give the same factors (seeded), so the same scores.
    again = baselines.fit_ials(data, settings=fitted["settings"])
    rows = np.arange(len(data.users))
    np.testing.assert_array_equal(fitted["scorer"](rows), again["scorer"](rows))


def test_ials_beats_popularity_on_the_default_world(default_model):
    """Where there are users enough to tell: on the default world (about 2,100 test
    users) iALS tuned on the small grid beats most popular by Recall@100 +0.29 [+0.28,
    +0.31] (2026-12-07). On the tiny world (about 190) the two are within noise of each
    other (+0.045 [-0.017, +0.102] with every change in the period a target, -0.010
    [-0.069, +0.051] with only the titles added in it), so it is no judge of this."""
    from pipelines.protocol import paired_bootstrap

    data = FeatureTables.load(default_model[0])
    fitted = baselines.fit_ials(data, IALS_GRID)
    ials, popular = {}, {}
    rank_metrics(fitted["scorer"], data, "test", per_user=ials)
    rank_metrics(baselines.popularity_scorer(data), data, "test", per_user=popular)
    d = paired_bootstrap(ials["recall@100"], popular["recall@100"])
    assert d["ci"][0] > 0.1 and d["users"] > 1000, d
