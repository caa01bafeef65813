"""The candidate generators by hand: the two-tower's top K, EASE's additions, exclusions
and filters, and every signal the ranker reads, on a catalog small enough to check."""

import numpy as np
import pytest

from pipelines.candidates import Generator
from pipelines.config import SIGNALS
from towers.index import CandidateIndex, IndexConfig

IDS = np.array([50, 10, 40, 20, 30, 60])   # candidate ids; rows 0..5 in this order


@pytest.fixture
def catalog():
    # Title embeddings on a line: the query [1, 0] ranks rows by their first coordinate.
    emb = np.array([[0.9, 0], [0.5, 0], [0.8, 0], [0.1, 0], [0.7, 0], [0.3, 0]], np.float32)
    index = CandidateIndex.build(emb, IDS, IndexConfig(mode="exact"))
    # EASE weights: from each history title to the others (zero diagonal).
    rng = np.random.default_rng(0)
    weights = rng.random((6, 6)).astype(np.float32)
    np.fill_diagonal(weights, 0.0)
    return index, weights


def test_union_ranks_and_signals_by_hand(catalog):
    index, weights = catalog
    query = np.array([[1.0, 0.0]], np.float32)
    history = [np.array([1, 3])]                       # rows of ids 10 and 20
    generate = Generator(index, weights, k=3, k_ease=3)
    cand = generate(query, history, exclude=[np.array([10, 20])])
    # Two-tower: rows by first coordinate without the seen rows 1 and 3: 0, 2, 4 (then 5).
    ease = weights[[1, 3]].sum(0)
    ease_order = [r for r in np.argsort(-ease, kind="stable") if r not in (1, 3)]
    added = [r if r not in (0, 2, 4) else -1 for r in ease_order[:3]]
    assert cand.rows.tolist() == [[0, 2, 4, *added]]
    # Every signal but the franchise one, which needs relations between titles.
    assert set(cand.signals) == set(SIGNALS) - {"franchise"}
    ok = cand.rows[0] >= 0
    rows = cand.rows[0][ok]
    np.testing.assert_allclose(cand.signals["similarity"][0][ok], index.embeddings[rows, 0])
    np.testing.assert_allclose(cand.signals["ease"][0][ok], ease[rows], rtol=1e-6)
    tower_rank = {0: 0, 2: 1, 4: 2}
    np.testing.assert_allclose(cand.signals["similarity_rank"][0][ok],
                               np.log1p([tower_rank.get(r, 3) for r in rows]))
    # Both ranks count the two-tower's top titles (rows 0, 2, 4) that score higher.
    np.testing.assert_allclose(cand.signals["ease_rank"][0][ok],
                               np.log1p([(ease[[0, 2, 4]] > ease[r]).sum() for r in rows]))
    for values in cand.signals.values():          # padding carries nothing
        assert (values[0][~ok] == 0).all()


def test_filters_and_exclusions_hold_for_both_generators(catalog):
    index, weights = catalog
    queries = np.array([[1.0, 0.0], [-1.0, 0.0]], np.float32)
    allowed = np.isin(IDS, [40, 30, 60, 10])           # rows 1, 2, 4, 5
    generate = Generator(index, weights, k=2, k_ease=4)
    cand = generate(queries, [np.array([0]), np.array([], np.int64)],
                    exclude=[np.array([40]), np.array([])], allowed=allowed)
    for u, seen_row in ((0, 2), (1, None)):
        rows = cand.rows[u][cand.rows[u] >= 0]
        assert np.isin(rows, [1, 2, 4, 5]).all(), "a filtered title came back"
        assert seen_row is None or seen_row not in rows, "a seen title came back"
        assert len(set(rows.tolist())) == len(rows), "a title came back twice"
    # User 0 (query [1, 0], row 2 excluded): the two-tower's top 2 of rows 1, 4, 5.
    assert cand.rows[0][:2].tolist() == [4, 1]
    # User 1 has no history: EASE scores every title 0; the ties go to the lowest rows.
    assert (cand.signals["ease"][1] == 0).all()


def test_without_ease_only_the_two_tower(catalog):
    index, _ = catalog
    generate = Generator(index, None, k=4, k_ease=10)
    cand = generate(np.array([[1.0, 0.0]], np.float32), None, exclude=[np.array([50])])
    assert generate.signals == ("similarity", "similarity_rank")
    assert cand.rows.tolist() == [[2, 4, 1, 5]]
    np.testing.assert_allclose(cand.signals["similarity_rank"][0], np.log1p(np.arange(4)))
    # Any titles' signals, ranked as that user's list would rank them.
    got = generate.signals_for(np.array([[1.0, 0.0]], np.float32), None, [np.array([50])],
                               np.array([[3, 2, -1]]))
    np.testing.assert_allclose(got.signals["similarity"][0], [0.1, 0.8, 0.0])
    np.testing.assert_allclose(got.signals["similarity_rank"][0], np.log1p([4, 0, 0]))


def test_ease_summed_at_the_candidates_equals_the_full_scores(catalog):
    """Without EASE candidates, EASE's score is summed at the titles that need it alone:
    the same numbers as from the full score rows, for users with and without a history."""
    index, weights = catalog
    queries = np.array([[1.0, 0.0], [0.3, 1.0], [-1.0, 0.2]], np.float32)
    histories = [np.array([1, 3]), np.array([], np.int64), np.array([0, 2, 5])]
    exclude = [IDS[h] for h in histories]
    full = Generator(index, weights, k=3, k_ease=2)     # EASE candidates: full score rows
    sparse = Generator(index, weights, k=3, k_ease=0)
    assert full._full_ease and not sparse._full_ease
    a, b = full(queries, histories, exclude), sparse(queries, histories, exclude)
    assert np.array_equal(a.rows[:, :3], b.rows)          # the two-tower's top 3 first
    for name in ("ease", "ease_rank", "similarity_rank"):
        np.testing.assert_allclose(b.signals[name], a.signals[name][:, :3], rtol=1e-6)
    expected = np.stack([weights[h].sum(0) for h in histories])
    np.testing.assert_allclose(b.signals["ease"], np.where(
        b.rows >= 0, np.take_along_axis(expected, np.maximum(b.rows, 0), 1), 0), rtol=1e-6)


def test_ranks_of_the_pool_count_higher_scores_and_share_ties(catalog):
    """A user with no history: EASE scores every title 0, so every candidate's EASE rank
    is 0 (no title scores higher), the same as counting titles by hand; similarity
    ranks are the two-tower's order."""
    index, weights = catalog
    generate = Generator(index, weights, k=4, k_ease=0)
    cand = generate(np.array([[1.0, 0.0]], np.float32), [np.array([], np.int64)], [np.array([])])
    assert cand.rows.tolist() == [[0, 2, 4, 1]]
    np.testing.assert_allclose(cand.signals["ease_rank"][0], 0.0)
    np.testing.assert_allclose(cand.signals["similarity_rank"][0], np.log1p([0, 1, 2, 3]))
    # Ties with a history: two titles with the same EASE score share the lower rank.
    tied = weights.copy()
    tied[3, [0, 2]] = 0.5
    tied[3, [4, 1]] = [0.9, 0.1]
    got = Generator(index, tied, k=4)(np.array([[1.0, 0.0]], np.float32), [np.array([3])],
                                      [np.array([20])])
    np.testing.assert_allclose(got.signals["ease_rank"][0], np.log1p([1, 1, 0, 3]))


def test_franchise_counts_the_watched_titles_a_candidate_continues(catalog):
    """The franchise signal by hand: log(1 + how many of the user's history titles the
    candidate continues), for the candidates and for any titles asked about."""
    index, weights = catalog
    # Each row's related rows (what it continues), -1 padded: row 2 (id 40) continues
    # row 1 (id 10); row 4 (id 30) continues rows 3 and 1; row 5 (id 60) continues row 0.
    relations = np.array([[-1, -1], [-1, -1], [1, -1], [-1, -1], [3, 1], [0, -1]])
    query = np.array([[1.0, 0.0]], np.float32)
    history = [np.array([1, 3])]                       # rows of ids 10 and 20: watched
    generate = Generator(index, weights, k=4, relations=relations)
    assert generate.signals == SIGNALS
    cand = generate(query, history, exclude=[np.array([10, 20])])
    # The two-tower's top 4 without rows 1 and 3: rows 0, 2, 4, 5.
    assert cand.rows.tolist() == [[0, 2, 4, 5]]
    np.testing.assert_allclose(cand.signals["franchise"][0], np.log1p([0, 1, 2, 0]))
    # Any titles: row 5's prequel (row 0) is not watched; padding carries nothing.
    got = generate.signals_for(query, history, [np.array([10, 20])], np.array([[5, 4, -1]]))
    np.testing.assert_allclose(got.signals["franchise"][0], np.log1p([0, 2, 0]))
    # Someone who watched nothing continues nothing.
    empty = generate(query, [np.array([], np.int64)], exclude=[np.array([])])
    assert (empty.signals["franchise"] == 0).all()
    with pytest.raises(ValueError, match="history"):
        generate(query, None)


def test_without_relations_there_is_no_franchise_signal(catalog):
    index, weights = catalog
    generate = Generator(index, weights, k=3)
    assert "franchise" not in generate.signals
    assert "franchise" not in generate(np.array([[1.0, 0.0]], np.float32), [np.array([1])],
                                       exclude=[np.array([10])]).signals
    # The two-tower alone with relations: the history is still needed for the franchise.
    alone = Generator(index, None, k=3, signals=("similarity", "franchise"),
                      relations=np.full((6, 0), -1))
    assert alone.signals == ("similarity", "franchise") and alone.needs_history
    cand = alone(np.array([[1.0, 0.0]], np.float32), [np.array([1])], exclude=[np.array([10])])
    assert (cand.signals["franchise"] == 0).all()
