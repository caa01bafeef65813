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
    ease = ease_metrics(data)
    tried = ease["validation_recall@100"]
    assert set(tried) == {str(v) for v in baselines.LAMBDAS}
    assert tried[str(ease["lambda"])] == max(tried.values())
    popularity = rank_metrics(baselines.popularity_scorer(data), data, "test")
    # Seeded tiny world: EASE 0.550 vs 0.512 Recall@100, 0.133 vs 0.098 NDCG@10.
    assert ease["recall@100"] > 1.05 * popularity["recall@100"]
    assert ease["ndcg@10"] > 1.2 * popularity["ndcg@10"]
