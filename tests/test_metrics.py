"""Top-K selection (towers.topk) and the ranking metrics (ranking.metrics) against
values computed by hand."""

import math

import numpy as np
import pytest

from ranking.metrics import (coverage, dcg, discount, hits, list_ndcg, mrr, ndcg_at_k, novelty,
                             random_list_ndcg, recall_at_k, top_items, variety)
from towers import topk
from towers.topk import top_k


def test_top_k_orders_best_first_and_respects_exclusions():
    scores = np.array([[0.1, 0.9, 0.5, 0.7],
                       [1.0, 0.0, 0.2, 0.3]])
    assert top_k(scores, 2).tolist() == [[1, 3], [0, 3]]
    exclude = np.array([[False, True, False, False], [True, False, False, False]])
    assert top_k(scores, 3, exclude).tolist() == [[3, 2, 0], [3, 2, 1]]
    assert top_k(scores, 10).shape == (2, 4)
    # Ties go to the lower index, inside the k and at its boundary.
    tied = np.array([[0.5, 1.0, 0.5, 1.0, 0.5, 0.0]])
    assert top_k(tied, 3).tolist() == [[1, 3, 0]]
    assert top_k(tied, 4).tolist() == [[1, 3, 0, 2]]
    assert top_k(np.zeros((1, 5)), 2).tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="positive integer"):
        top_k(scores, 0)


def test_top_k_split_over_threads_equals_a_full_sort(monkeypatch):
    """Above ~256k scores the rows are split over threads; the answer must not change."""
    monkeypatch.setattr(topk, "_WORKERS", 3)  # three uneven row blocks on any machine
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(301, 2000)).astype(np.float32)   # 602k scores, odd row count
    exclude = rng.random(scores.shape) < 0.3
    expected = np.argsort(-np.where(exclude, -np.inf, scores), axis=1, kind="stable")[:, :100]
    np.testing.assert_array_equal(top_k(scores, 100, exclude), expected)
    np.testing.assert_array_equal(top_k(scores, 2000)[:, :5], np.argsort(-scores, axis=1)[:, :5])
    counts = np.round(scores * 3)  # many ties, as with popularity counts
    np.testing.assert_array_equal(top_k(counts, 100),
                                  np.argsort(-counts, axis=1, kind="stable")[:, :100])


def test_top_k_threads_work_in_a_forked_child(monkeypatch):
    import multiprocessing

    monkeypatch.setattr(topk, "_WORKERS", 2)
    scores = np.random.default_rng(4).normal(size=(300, 1000)).astype(np.float32)
    expected = top_k(scores, 10)  # the parent's pool exists before the fork
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(top_k, (scores, 10)).get(timeout=60)
    np.testing.assert_array_equal(got, expected)


def test_recall_and_ndcg_by_hand():
    # Query 0: relevant {2, 3}; ranked [3, 0, 2] -> hits [1, 0, 1].
    #   recall@1 = 1/2, recall@3 = 2/2;
    #   DCG@3 = 1/log2(2) + 1/log2(4) = 1.5; ideal = 1 + 1/log2(3) = 1.6309 -> 0.91972.
    # Query 1: relevant {1}; ranked [0, 2, 3] -> no hit: 0.
    # Query 2: nothing relevant -> NaN (left out of means).
    relevant = np.array([[0, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]], bool)
    ranked = np.array([[3, 0, 2], [0, 2, 3], [0, 1, 2]])
    hit = hits(ranked, relevant)
    n_rel = relevant.sum(1)
    assert hit.tolist() == [[True, False, True], [False, False, False], [False] * 3]
    np.testing.assert_allclose(recall_at_k(hit, n_rel, 1), [0.5, 0.0, np.nan])
    np.testing.assert_allclose(recall_at_k(hit, n_rel, 3), [1.0, 0.0, np.nan])
    np.testing.assert_allclose(ndcg_at_k(hit, n_rel, 3), [1.5 / (1 + 1 / np.log2(3)), 0.0, np.nan])
    # @1 with two relevant items: ideal DCG@1 = 1 -> NDCG = 1.
    np.testing.assert_allclose(ndcg_at_k(hit, n_rel, 1)[0], 1.0)


def test_padding_is_never_a_hit():
    relevant = np.array([[True, False]])
    assert hits(np.array([[-1, 0]]), relevant).tolist() == [[False, True]]


def test_discount_by_hand():
    # 1 / log2(rank + 1): rank 1 -> 1, rank 3 -> 1/2, rank 7 -> 1/3.
    np.testing.assert_allclose(discount([1, 3, 7]), [1.0, 0.5, 1 / 3])
    np.testing.assert_allclose(discount(np.array([[2]])), [[1 / math.log2(3)]])


def test_graded_dcg_by_hand():
    # gains 2^rel - 1 = [7, 0, 1]; discounts [1, 1/log2(3), 1/2] -> 7 + 0.5 = 7.5.
    assert dcg(np.array([3, 0, 1])) == pytest.approx(7.5)
    assert dcg(np.array([3, 0, 1]), k=1) == pytest.approx(7.0)


def test_list_ndcg_by_hand_with_ties_padding_and_empty_lists():
    # List 0: labels [3, 0, 1], scores [0.1, 0.9, 0.5] -> ranked labels [0, 1, 3]:
    #   DCG = 0 + 1/log2(3) + 7/2 = 4.1309; ideal [3, 1, 0] = 7 + 1/log2(3) = 7.6309.
    # List 1: ties [1, 1, 1] keep list order -> labels [2, 0, 0] as given: NDCG 1.
    # List 2: all zero -> NaN. List 3: padding ranks last even with the best score.
    labels = np.array([[3, 0, 1], [2, 0, 0], [0, 0, 0], [1, 0, 2]], float)
    scores = np.array([[0.1, 0.9, 0.5], [1, 1, 1], [3, 2, 1], [0.2, 0.1, 9.0]])
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]], bool)
    got = list_ndcg(scores, labels, mask)
    expected0 = (1 / math.log2(3) + 7 / 2) / (7 + 1 / math.log2(3))
    np.testing.assert_allclose(got[:2], [expected0, 1.0])
    assert np.isnan(got[2])
    assert got[3] == pytest.approx(1.0)  # label 2 is padding: only [1, 0] counts
    # @1: list 0 puts a 0 first.
    assert list_ndcg(scores, labels, mask, k=1)[0] == 0.0


def test_random_order_floor_is_exact():
    # Expected NDCG of a random order, checked against enumerating all 3! orders.
    import itertools

    labels = np.array([[3.0, 0.0, 1.0]])
    orders = list(itertools.permutations(range(3)))
    brute = np.mean([list_ndcg(-np.array([o], float), labels)[0] for o in orders])
    assert random_list_ndcg(labels)[0] == pytest.approx(brute)
    brute_at_1 = np.mean([list_ndcg(-np.array([o], float), labels, k=1)[0] for o in orders])
    assert random_list_ndcg(labels, k=1)[0] == pytest.approx(brute_at_1)


def test_mrr_by_hand():
    hit = np.array([[0, 0, 1], [1, 0, 0], [0, 0, 0]], bool)
    np.testing.assert_allclose(mrr(hit), [1 / 3, 1.0, 0.0])


def test_beyond_accuracy_by_hand():
    """Four items; genres: 0 {a}, 1 {a, b}, 2 {c}, 3 none. Jaccard: 0-1 1/2, 0-2 0,
    1-2 0, 3 with 0/1/2: 0 (no shared genre), two featureless items alike (1)."""
    genres = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]], bool)
    cand = np.array([[2, 0, 1, -1], [3, 3, 0, 1]])
    scores = np.array([[0.1, 0.9, 0.5, 9.0], [1.0, 1.0, 0.0, 0.0]])
    top = top_items(cand, scores, 3)
    assert top.tolist() == [[0, 1, 2], [3, 3, 0]]   # padding never first; ties keep order
    # Query 0: pairs 0-1 1/2, 0-2 0, 1-2 0: mean 1/6. Query 1: 3-3 1, 3-0 0, 3-0 0: 1/3.
    np.testing.assert_allclose(variety(top, genres), [1 - 1 / 6, 1 - 1 / 3])
    np.testing.assert_allclose(variety(top, genres, block=1), [1 - 1 / 6, 1 - 1 / 3])
    assert np.isnan(variety(np.array([[2, -1, -1]]), genres)[0])   # one item: no pair
    assert np.isnan(variety(top, genres[:, :0])).all()             # no genres: not measured
    share = np.array([0.5, 0.25, 0.125, 1.0])
    np.testing.assert_allclose(novelty(top, share), [(1 + 2 + 3) / 3, (0 + 0 + 1) / 3])
    np.testing.assert_allclose(novelty(np.array([[1, -1]]), share), [2.0])
    assert coverage(top, 8) == 4 / 8
