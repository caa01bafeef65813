"""The evaluation protocol (pipelines/protocol.py) on hand-made cases and the tiny world:
what is excluded, what counts as relevant, and the metrics' values."""

import numpy as np
import pandas as pd
import pytest

from pipelines import protocol
from pipelines.tables import FeatureTables, UserSets


def test_factorized_top_k_by_hand():
    # Two users, three titles. Scores: u0 -> [3, 1, 2], u1 -> [0, 5, 1].
    # Pairs: (u0, t2) rank 1 (one better: t0); (u1, t1) rank 0; (u0, t1) rank 2.
    query = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    cands = np.array([[3.0, 0.0], [1.0, 5.0], [2.0, 1.0]], np.float32)
    pairs = pd.DataFrame({"user_row": [0, 1, 0], "anime_row": [2, 1, 1]})
    got = protocol.factorized_top_k(query, cands, pairs)
    assert got["top_1"] == pytest.approx(1 / 3)
    assert got["top_5"] == 1.0
    assert got["top_10"] == 1.0


@pytest.mark.parametrize("num_titles", [40, 150])   # fewer and more than the largest K
def test_factorized_top_k_matches_counting_every_title(num_titles):
    # Integer embeddings make ties common; a tie counts against the pair.
    rng = np.random.default_rng(num_titles)
    query = rng.integers(-2, 3, (30, 4)).astype(np.float32)
    cands = rng.integers(-2, 3, (num_titles, 4)).astype(np.float32)
    pairs = pd.DataFrame({"user_row": rng.integers(0, 30, 500),
                          "anime_row": rng.integers(0, num_titles, 500)})
    scores = query @ cands.T
    u, a = pairs["user_row"].to_numpy(), pairs["anime_row"].to_numpy()
    ranks = (scores[u] > scores[u, a][:, None]).sum(1)
    got = protocol.factorized_top_k(query, cands, pairs, batch_size=7)
    assert got == {f"top_{k}": float((ranks < k).mean()) for k in protocol.FACTORIZED_KS}
    assert 0 < got["top_1"] < got["top_10"] < 1


def test_user_sets_give_the_rows_a_scan_of_the_pairs_gives():
    rng = np.random.default_rng(0)
    pairs = pd.DataFrame({"user_row": rng.integers(0, 50, 400),   # repeats included
                          "anime_row": rng.integers(0, 30, 400)})
    sets = UserSets(pairs, num_users=60, num_anime=30)   # users 50-59 have no pairs
    rows = rng.permutation(60)[:25]
    expected = np.zeros((25, 30), bool)
    for i, r in enumerate(rows):
        expected[i, pairs.loc[pairs["user_row"] == r, "anime_row"]] = True
    np.testing.assert_array_equal(sets.matrix(rows), expected)
    np.testing.assert_array_equal(sets.counts(rows),
                                  np.bincount(pairs["user_row"], minlength=60)[rows])
    assert sets.matrix(np.array([55, 59])).sum() == 0


def test_rank_metrics_exclude_the_past_and_score_the_split(tiny_features):
    tables = FeatureTables.load(tiny_features)
    # An oracle that scores each user's own test titles highest gets recall 1 at K >= their count.
    test = tables.pairs("test")

    def oracle(rows):
        return tables.matrix(rows, test).astype(np.float32)

    m = protocol.rank_metrics(oracle, tables, "test")
    assert m["recall@100"] == pytest.approx(1.0)
    assert m["ndcg@100"] == pytest.approx(1.0)
    assert m["users"] == test["user_row"].nunique()

    # A scorer that puts seen titles on top gains nothing: they are excluded.
    seen = tables.interactions[tables.interactions["split"].isin(["train", "validation"])]
    seen = seen[["user_row", "anime_row"]]
    m2 = protocol.rank_metrics(lambda r: tables.matrix(r, seen).astype(np.float32) * 10
                         + oracle(r), tables, "test")
    assert m2["recall@100"] == pytest.approx(1.0)


def test_seen_before_is_every_earlier_entry(tiny_features):
    tables = FeatureTables.load(tiny_features)
    inter = tables.interactions
    for split, earlier in (("validation", {"train"}), ("test", {"train", "validation"})):
        seen = protocol.seen_before(tables, split)
        want = inter[inter["split"].isin(earlier)
                     | ((inter["split"] == split) & inter["listed_before"])]
        assert len(seen) == len(want)   # every status, not only interactions
        assert set(map(tuple, seen.to_numpy())) == set(map(tuple, want[["user_row", "anime_row"]].to_numpy()))


def test_seen_before_leaves_out_what_was_listed_before_the_period():
    """An entry of the split that was on the list before the period began
    (``listed_before``) is left out of that split's rankings, as serving hides it; the
    other entries of the split are not."""
    tables = _tables([(0, 0, "train", False, 0), (0, 1, "test", True, 80),
                      (0, 2, "test", True, 70), (1, 3, "validation", False, 0)], 2, 5)
    tables.interactions["listed_before"] = [False, True, False, False]
    pairs = lambda split: set(map(tuple, protocol.seen_before(tables, split).to_numpy()))  # noqa: E731
    assert pairs("test") == {(0, 0), (0, 1), (1, 3)}
    assert pairs("validation") == {(0, 0)}


def test_held_out_lists_and_end_to_end_by_hand(tiny_features):
    tables = FeatureTables.load(tiny_features)
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(len(tables.users), 4)).astype(np.float32)
    embeddings = rng.normal(size=(len(tables.anime), 4)).astype(np.float32)
    lists = protocol.held_out_lists(tables, 20.0, lambda users, rows: {
        "similarity": protocol.similarity(queries, embeddings, users, rows)})
    inter = tables.interactions
    labelled = inter[(inter["split"] == "test") & inter["is_label"]]
    per_user = labelled.groupby("user_row").size()
    assert list(lists.user_rows) == sorted(per_user[per_user >= 2].index)
    i = 3
    u, rows = lists.user_rows[i], lists.anime_rows[i][lists.mask[i]]
    mine = labelled[labelled["user_row"] == u].sort_values("anime_row")
    assert rows.tolist() == mine["anime_row"].tolist()[:protocol.TEST_LIST_CAP]
    np.testing.assert_allclose(lists.relevance[i][lists.mask[i]], mine["score"].to_numpy() / 20.0)
    np.testing.assert_allclose(lists.similarity[i][lists.mask[i]], embeddings[rows] @ queries[u],
                               rtol=1e-5)
    # Ordering by the true relevance beats ordering by its negation.
    good = protocol.list_metrics(lists.relevance, lists)["ndcg"]
    bad = protocol.list_metrics(-lists.relevance, lists)["ndcg"]
    assert good == pytest.approx(1.0) and bad < good

    # End to end over candidates that hold each user's test titles first, then titles
    # they did not watch: the retrieval order is perfect, one that reverses it is worse.
    test = tables.pairs("test")
    cand = np.full((len(tables.users), 20), -1, np.int64)
    for u, titles in test.groupby("user_row")["anime_row"]:
        mine = titles.to_numpy()[:10]
        others = np.setdiff1d(np.arange(len(tables.anime)), titles.to_numpy())[:20 - len(mine)]
        cand[u] = np.r_[mine, others]
    scores = np.where(cand >= 0, 1.0, 0.0).astype(np.float32)
    out = protocol.end_to_end(tables, lambda t, l: np.arange(l.anime_rows.shape[1])[None, :]
                              .repeat(len(l), 0).astype(float),
                              protocol.Candidates(cand, {"similarity": scores}), ks=(10,))
    assert out["users"] == test["user_row"].nunique() and out["candidates"] == 20
    assert out["retrieval_order"]["mrr"] == pytest.approx(1.0)
    assert out["ranked"]["ndcg@10"] < out["retrieval_order"]["ndcg@10"]


def test_paired_bootstrap_by_construction():
    rng = np.random.default_rng(1)
    base = rng.random(2000)
    # A clear gain: b is a minus 0.05 plus small noise -> CI around +0.05, excluding 0.
    clear = protocol.paired_bootstrap(base, base - 0.05 + rng.normal(0, 0.01, 2000))
    assert clear["difference"] == pytest.approx(0.05, abs=0.002) and clear["significant"]
    assert clear["ci"][0] < clear["difference"] < clear["ci"][1]
    # No gain: the same values reshuffled between the systems -> an interval holding 0.
    a, b = rng.random(2000), rng.random(2000)
    noise = protocol.paired_bootstrap(a, b)
    assert noise["ci"][0] < 0 < noise["ci"][1] and not noise["significant"]
    # The CI's width is the standard error's: about 2 x 1.96 x sd / sqrt(n).
    width = noise["ci"][1] - noise["ci"][0]
    assert width == pytest.approx(2 * 1.96 * np.std(a - b) / np.sqrt(2000), rel=0.15)
    # Users with a NaN on either side are left out; seeded, so reproducible.
    a[:10] = np.nan
    assert protocol.paired_bootstrap(a, b)["users"] == 1990
    assert protocol.paired_bootstrap(a, b) == protocol.paired_bootstrap(a, b)
    assert protocol.paired_bootstrap([1.0], [0.0])["difference"] is None


def test_identical_systems_are_never_significant_and_a_constant_gain_always_is():
    a = np.random.default_rng(2).random(500)
    same = protocol.paired_bootstrap(a, a.copy())
    assert same["difference"] == 0.0 and same["ci"] == [0.0, 0.0]
    assert same["significant"] is False          # an interval [0, 0] holds 0
    gain = protocol.paired_bootstrap(a + 0.25, a)
    assert gain["ci"] == [pytest.approx(0.25), pytest.approx(0.25)] and gain["significant"]
    # Two users are enough for an interval; one is not.
    assert protocol.paired_bootstrap([1.0, 0.0], [0.0, 0.0])["difference"] == 0.5
    assert protocol.paired_bootstrap([1.0, np.nan], [0.0, 0.0])["ci"] == [None, None]


def test_mean_ci_is_the_bootstrap_interval_of_the_mean_by_hand():
    # Half zeros, half ones: mean 0.5, standard error sqrt(0.25 / 100) = 0.05, so the 95%
    # interval is about 0.5 -/+ 1.96 x 0.05 = [0.402, 0.598] (an 80% one: [0.436, 0.564]).
    values = np.r_[np.zeros(50), np.ones(50)]
    lo, hi = protocol.mean_ci(values)
    assert 0.38 < lo < 0.42 and 0.58 < hi < 0.62
    assert protocol.mean_ci(values, level=0.8)[0] == pytest.approx(0.436, abs=0.02)
    # NaN (a user with nothing to score) is left out, not propagated.
    assert protocol.mean_ci(np.r_[values, [np.nan] * 5]) == [lo, hi]
    # Seeded: the same interval every time; two values are enough, one is not.
    assert protocol.mean_ci(values) == [lo, hi]
    two = protocol.mean_ci([1.0, 3.0])
    assert two[0] is not None and 1.0 <= two[0] <= two[1] <= 3.0
    assert protocol.mean_ci([1.0, np.nan]) == [None, None]


def test_the_short_history_group_is_users_with_fewer_than_ten_training_entries():
    # Two users, one test title each; the scorer ranks title 0 first and title 1 second
    # for everyone, so NDCG@10 is 1 for user 0 and 1 / log2(3) for user 1. User 0 has 9
    # training entries (short), user 1 has 10 (not).
    assert protocol.SHORT_HISTORY == 10
    inter = pd.DataFrame({"user_row": [0, 1], "anime_row": [0, 1], "split": ["test", "test"],
                          "is_interaction": [True, True]})
    tables = FeatureTables(schema={}, users=pd.DataFrame({"n_train": [9, 10]}),
                           anime=pd.DataFrame({"media_id": range(5)}), user_raw={},
                           anime_raw={}, widths={}, interactions=inter)
    scores = np.array([5, 4, 3, 2, 1], np.float32)
    m = protocol.rank_metrics(lambda rows: np.tile(scores, (len(rows), 1)), tables, "test")
    assert m["users"] == 2 and m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3)) / 2)
    assert m["short_history"]["users"] == 1
    assert m["short_history"]["ndcg@10"] == pytest.approx(1.0)
    assert m["short_history"]["recall@10"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------
# Hand-built tables: every number below is derived in the comments, not read off a run.

def _discount(rank):
    """The DCG discount of a 1-based rank: 1 / log2(rank + 1)."""
    return 1 / np.log2(rank + 1)


def _tables(rows, num_users, num_anime, n_train=None, anime=None, schema=None):
    """FeatureTables from ``(user_row, anime_row, split, is_label, score)`` entries (every
    one an interaction); ``anime``: extra title columns."""
    inter = pd.DataFrame(rows, columns=["user_row", "anime_row", "split", "is_label", "score"])
    inter["is_interaction"] = True
    titles = pd.DataFrame({"media_id": range(num_anime), **(anime or {})})
    users = pd.DataFrame({"n_train": n_train if n_train is not None else [0] * num_users})
    return FeatureTables(schema=schema or {}, users=users, anime=titles, user_raw={},
                         anime_raw={}, widths={}, interactions=inter)


def test_rank_metrics_by_hand_at_k_50_and_without_the_titles_seen_before():
    # 120 titles; the scorer ranks title t at place t + 1 (score -t) among those left.
    # User 0 had title 0 in training and has titles 0 and 50 in test: title 0 is seen,
    # so it is neither ranked nor relevant; title 50 is 50th (titles 1-49 before it):
    # recall@10 0, recall@50 = recall@100 = 1, NDCG@50 = NDCG@100 = 1 / log2(51).
    # User 1 saw nothing and has title 51 in test, 52nd: recall@50 0, recall@100 1,
    # NDCG@100 1 / log2(53).
    rows = [(0, 0, "train", True, 70), (0, 0, "test", True, 70), (0, 50, "test", True, 80),
            (1, 51, "test", True, 90)]
    tables = _tables(rows, num_users=2, num_anime=120, n_train=[1, 0])
    scores = -np.arange(120, dtype=np.float32)
    received = {}
    m = protocol.rank_metrics(lambda r: np.tile(scores, (len(r), 1)), tables, "test",
                              per_user=received)
    assert set(m) == {f"{metric}@{k}" for metric in ("recall", "ndcg") for k in (10, 50, 100)} \
        | {"users", "short_history"}
    np.testing.assert_allclose(received["recall@50"], [1.0, 0.0])
    assert m["users"] == 2
    assert m["recall@10"] == 0.0 and m["ndcg@10"] == 0.0
    assert m["recall@50"] == pytest.approx(0.5)
    assert m["ndcg@50"] == pytest.approx(_discount(50) / 2)
    assert m["recall@100"] == pytest.approx(1.0)
    assert m["ndcg@100"] == pytest.approx((_discount(50) + _discount(52)) / 2)
    # Both users have fewer than 10 training entries: the short group is everyone.
    assert m["short_history"]["users"] == 2
    assert m["short_history"]["recall@50"] == pytest.approx(0.5)

    # A split with no interactions at all: nobody is scored, the means are NaN and the
    # short-history group is empty (None), not an error.
    empty = protocol.rank_metrics(lambda r: np.tile(scores, (len(r), 1)), tables, "validation")
    assert empty["users"] == 0 and np.isnan(empty["recall@100"]) and np.isnan(empty["ndcg@10"])
    assert empty["short_history"]["users"] == 0 and empty["short_history"]["recall@100"] is None


def test_factorized_top_k_reports_each_k_at_its_boundary():
    # One user, 150 titles; title t scores 150 - t, so title t is ranked t (0 = best).
    # Pairs on titles 0, 50 and 100: rank 0 is in every top K; rank 50 (50 titles better)
    # is in the top 100 but not the top 50; rank 100 is in none.
    query = np.ones((1, 1), np.float32)
    cands = (150 - np.arange(150, dtype=np.float32))[:, None]
    pairs = pd.DataFrame({"user_row": [0, 0, 0], "anime_row": [0, 50, 100]})
    got = protocol.factorized_top_k(query, cands, pairs)
    assert got == {"top_1": pytest.approx(1 / 3), "top_5": pytest.approx(1 / 3),
                   "top_10": pytest.approx(1 / 3), "top_50": pytest.approx(1 / 3),
                   "top_100": pytest.approx(2 / 3)}


def test_held_out_lists_by_hand_at_two_titles_and_at_the_cap():
    # User 0: two labelled test titles (0 and 7; the least a list needs), plus a test
    # entry that is not a label (title 3) and a labelled training entry (title 5), which
    # are not in the list. User 1: training only. User 2: 55 labelled test titles, 5-59,
    # in shuffled order: the list is the 50 lowest rows, 5-54, sorted. User 3: one
    # labelled test title, too few. Relevance = score / 10.
    rng = np.random.default_rng(3)
    rows = [(0, 7, "test", True, 60), (0, 0, "test", True, 80), (0, 3, "test", False, 0),
            (0, 5, "train", True, 90), (1, 1, "train", True, 50)]
    rows += [(2, t, "test", True, t) for t in rng.permutation(np.arange(5, 60))]
    rows += [(3, 2, "test", True, 40)]
    tables = _tables(rows, num_users=4, num_anime=60)
    lists = protocol.held_out_lists(tables, 10.0)
    assert protocol.TEST_LIST_CAP == 50
    np.testing.assert_array_equal(lists.user_rows, [0, 2])
    assert lists.anime_rows.shape == (2, 50) and lists.signals == {}
    np.testing.assert_array_equal(lists.anime_rows[0], [0, 7] + [-1] * 48)   # -1: padding
    np.testing.assert_array_equal(lists.mask[0], [True, True] + [False] * 48)  # row 0 is a title
    np.testing.assert_allclose(lists.relevance[0], [8.0, 6.0] + [0.0] * 48)
    np.testing.assert_array_equal(lists.anime_rows[1], np.arange(5, 55))
    assert lists.mask[1].all()
    np.testing.assert_allclose(lists.relevance[1], np.arange(5, 55) / 10)


def test_list_metrics_and_their_baselines_by_hand():
    # Two lists of titles (-1 = padding). List A: titles 1-5 then 0, only title 0
    # relevant (label 1: gain 2**1 - 1 = 1). List B: titles 2 and 0, only title 2
    # relevant. Ideal DCG is 1 for both (one gain of 1 at rank 1).
    anime_rows = np.array([[1, 2, 3, 4, 5, 0], [2, 0, -1, -1, -1, -1]])
    relevance = np.array([[0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0]], np.float32)
    lists = protocol.Lists(np.array([0, 1]), anime_rows, relevance, {})
    # Scores in list order for A (its relevant title last, rank 6: NDCG 1 / log2(7),
    # NDCG@5 0); for B the padding's high scores do not count, title 0 (2) beats title
    # 2 (1): rank 2, 1 / log2(3) for both.
    scores = np.array([[6, 5, 4, 3, 2, 1], [1, 2, 9, 9, 9, 9]], np.float64)
    m = protocol.list_metrics(scores, lists)
    assert m["ndcg"] == pytest.approx((_discount(6) + _discount(2)) / 2)
    assert m["ndcg@5"] == pytest.approx((0 + _discount(2)) / 2)

    # Popularity: title 0 has 100 training interactions, titles 1-5 have 5..1: title 0
    # first in both lists, so A scores 1 and B (title 2 second) 1 / log2(3).
    # Mean training score: title 0 has none, so it takes the global mean, 52; titles 1-5
    # have 70, 60, 65, 55, 50. A: 70, 65, 60, 55, 52 (title 0) -> rank 5: 1 / log2(6) for
    # NDCG and NDCG@5; B: title 2 (60) above title 0 (52): 1.
    # Random (exact expectation, E[DCG@k] = gains / n x the first min(k, n) discounts):
    # A: n = 6, one gain, so NDCG = (d1 + ... + d6) / 6 and NDCG@5 = (d1 + ... + d5) / 6;
    # B: n = 2 (padding is not an item): (d1 + d2) / 2 for both.
    tables = _tables([], num_users=2, num_anime=6,
                     anime={"train_count": [100, 5, 4, 3, 2, 1],
                            "average_score": [np.nan, 70, 60, 65, 55, 50]},
                     schema={"stats": {"global_mean_score": 52.0}})
    base = protocol.baseline_list_metrics(tables, lists)
    d = _discount(np.arange(1, 7))
    b_random = (d[0] + d[1]) / 2
    assert base["random"]["ndcg"] == pytest.approx((d.sum() / 6 + b_random) / 2)
    assert base["random"]["ndcg@5"] == pytest.approx((d[:5].sum() / 6 + b_random) / 2)
    assert base["popularity"] == {"ndcg": pytest.approx((1 + _discount(2)) / 2),
                                  "ndcg@5": pytest.approx((1 + _discount(2)) / 2)}
    assert base["mean_training_score"] == {"ndcg": pytest.approx((_discount(5) + 1) / 2),
                                           "ndcg@5": pytest.approx((_discount(5) + 1) / 2)}


def test_similarity_is_the_dot_product_and_zero_at_padding():
    queries = np.array([[1.0, 2.0], [0.0, 3.0]], np.float32)
    titles = np.array([[1.0, 1.0], [2.0, -1.0], [0.5, 0.5]], np.float32)
    # User 0 with titles 2 and 0: 1*0.5 + 2*0.5 = 1.5 and 1 + 2 = 3. User 1 with title 1
    # and padding: 0*2 + 3*-1 = -3, then 0 (not title 0's 3).
    sim = protocol.similarity(queries, titles, np.array([0, 1]), np.array([[2, 0], [1, -1]]))
    assert sim.dtype == np.float32
    np.testing.assert_array_equal(sim, [[1.5, 3.0], [-3.0, 0.0]])


def test_end_to_end_on_by_hand():
    # Four candidates per user (-1 = padding), retrieval order first to last.
    # User 0: test title 2; candidates 1, 2, 3, -: retrieval finds it 2nd.
    # User 1: test titles 0 and 5; candidates 5, 4, 3, 1: title 5 is 1st, title 0 was not
    #   retrieved (it still counts in recall's and NDCG's denominators: 2 relevant).
    # User 2: a test interaction with a title the tables do not list (row -1): scored
    #   (MRR 0) but nothing is relevant, so NDCG and recall are NaN and left out.
    # User 3: no test interaction: not scored.
    rows = [(0, 2, "test", True, 80), (1, 0, "test", True, 70), (1, 5, "test", True, 60),
            (2, -1, "test", True, 50), (3, 4, "train", True, 90)]
    tables = _tables(rows, num_users=4, num_anime=6)
    cand = np.array([[1, 2, 3, -1], [5, 4, 3, 1], [0, 1, 2, 3], [0, 1, 2, 3]])
    candidates = protocol.Candidates(cand, {"similarity": np.zeros(cand.shape, np.float32)})

    def reverse(t, lists):   # scores rising along the list: the retrieval order reversed
        return np.tile(np.arange(lists.anime_rows.shape[1], dtype=float), (len(lists), 1))

    per_user = {}
    out = protocol.end_to_end(tables, reverse, candidates, per_user=per_user)
    assert out["users"] == 3 and out["candidates"] == 4
    # K = 10 and K = the candidate count, 4, by default.
    assert set(out["ranked"]) == {"ndcg@4", "recall@4", "ndcg@10", "recall@10", "mrr",
                                  "variety@10", "novelty@10", "coverage@10"}
    # Beyond accuracy: these tables have no genres and no counts (not measured), and the
    # three users' lists together hold every one of the six titles.
    assert np.isnan(out["ranked"]["variety@10"]) and np.isnan(out["ranked"]["novelty@10"])
    assert out["ranked"]["coverage@10"] == out["retrieval_order"]["coverage@10"] == 1.0
    # Retrieval order: user 0 hit at rank 2 (NDCG 1 / log2(3), MRR 1/2, recall 1); user 1
    # hit at rank 1 of an ideal of two (NDCG 1 / (1 + 1 / log2(3)), MRR 1, recall 1/2);
    # user 2 MRR 0. NDCG and recall over users 0 and 1, MRR over all three.
    ideal_1 = 1 + _discount(2)
    retrieval = out["retrieval_order"]
    assert retrieval["ndcg@4"] == pytest.approx((_discount(2) + 1 / ideal_1) / 2)
    assert retrieval["ndcg@10"] == pytest.approx(retrieval["ndcg@4"])   # only 4 to rank
    assert retrieval["recall@4"] == pytest.approx(0.75)
    assert retrieval["mrr"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # Reversed (padding still last): user 0 gets 3, 2, 1: hit at rank 2 again; user 1 gets
    # 1, 3, 4, 5: hit at rank 4 (NDCG (1 / log2(5)) / ideal, MRR 1/4).
    ranked = out["ranked"]
    assert ranked["ndcg@4"] == pytest.approx((_discount(2) + _discount(4) / ideal_1) / 2)
    assert ranked["recall@4"] == pytest.approx(0.75)
    assert ranked["mrr"] == pytest.approx((1 / 2 + 1 / 4 + 0) / 3)
    np.testing.assert_allclose(per_user["ranked"]["mrr"], [0.5, 0.25, 0.0])
    assert np.isnan(per_user["ranked"]["ndcg@4"][2])
    # On a subset of the users: only those that also have a test interaction (user 1),
    # with the same default Ks; user 1 alone: ranked NDCG@4 (1 / log2(5)) / ideal.
    subset = protocol.end_to_end_on(tables, "test", reverse, candidates,
                                    user_rows=np.array([1, 3]))
    assert subset["users"] == 1 and set(subset["ranked"]) == set(ranked)
    assert subset["ranked"]["ndcg@4"] == pytest.approx(_discount(4) / ideal_1)


# ---------------------------------------------------------------------------------------
# The bootstrap, by hand.

def test_the_bootstrap_draws_every_user_and_exactly_draws_times():
    d = np.array([0.0, 1.0])
    for draws in (1, 99, 100, 101, 250):   # under, at and over the 100-draw blocks
        assert len(protocol._resampled_means(d, draws, 0)) == draws
    # A resample of two users has mean 0 (user 0 twice), 1/2 or 1 (user 1 twice), with
    # probabilities 1/4, 1/2, 1/4: in 1000 draws each turns up (about 250, 500, 250).
    means = protocol._resampled_means(d, 1000, 0)
    assert set(np.unique(means)) == {0.0, 0.5, 1.0}
    assert 200 < (means == 0).sum() < 300 and 200 < (means == 1).sum() < 300
    # So the 2.5% and 97.5% quantiles fall inside the runs of 0s and of 1s: the interval
    # of two users is exactly their range. Paired: differences 1 and 0, mean 1/2, CI
    # [0, 1], which holds 0: not significant.
    assert protocol.mean_ci([1.0, 3.0]) == [1.0, 3.0]
    two = protocol.paired_bootstrap([1.0, 0.0], [0.0, 0.0])
    assert two["difference"] == 0.5 and two["ci"] == [0.0, 1.0] and not two["significant"]
    # One draw is one resample: the interval collapses to that resample's mean.
    lo, hi = protocol.mean_ci([0.0, 1.0], draws=1)
    assert lo == hi and lo in (0.0, 0.5, 1.0)


def test_the_intervals_are_the_quantiles_of_1000_seeded_resamples():
    # The protocol: 1000 resamples with seed 0, and the 2.5% and 97.5% quantiles of
    # their means (5% and 95% at level 0.9); NaN left out first.
    rng = np.random.default_rng(4)
    values = rng.random(40)
    values[[3, 17]] = np.nan
    means = protocol._resampled_means(values[np.isfinite(values)], 1000, 0)
    assert protocol.mean_ci(values) == pytest.approx(np.quantile(means, [0.025, 0.975]),
                                                     rel=1e-12)
    assert protocol.mean_ci(values, level=0.9) == pytest.approx(
        np.quantile(means, [0.05, 0.95]), rel=1e-12)
    # Paired: the same on the differences of the users where both are finite.
    a, b = rng.random(40), rng.random(40)
    b[5] = np.nan
    keep = np.isfinite(b)
    diff_means = protocol._resampled_means(a[keep] - b[keep], 1000, 0)
    got = protocol.paired_bootstrap(a, b)
    assert got["ci"] == pytest.approx(np.quantile(diff_means, [0.025, 0.975]), rel=1e-12)
    assert got["difference"] == pytest.approx((a[keep] - b[keep]).mean())
    assert (got["users"], got["draws"], got["level"]) == (39, 1000, 0.95)


def test_a_paired_bootstrap_of_one_user_is_no_verdict():
    assert protocol.paired_bootstrap([1.0], [0.0]) == {
        "difference": None, "ci": [None, None], "level": 0.95, "users": 1, "draws": 1000,
        "significant": False}


def test_the_new_title_slice_by_hand(monkeypatch):
    # Shelf and catalog K of 2. Known titles t0-t2 (1-d embeddings 5, 0.5, -5); new
    # titles 10, 11, 12, 13 (3, 2, 1, -3), given in the order 13, 10, 11, 12. Users
    # 0-5, queries +1 but users 1 and 5 (-1). Test interactions on new titles: u0 12,
    # u1 11, u2 10 + 11, u3 10 + 11, u4 10, u5 10; title 13's entries do not count
    # (validation, not an interaction, an unknown user): the shelf is 10, 11, 12.
    monkeypatch.setattr(protocol, "NEW_TITLE_K", 2)
    monkeypatch.setattr(protocol, "CATALOG_K", 2)
    tables = _tables([(0, 0, "train", False, 0), (1, 2, "test", False, 0)], 6, 3)
    tables.new_anime = pd.DataFrame({"media_id": [13, 10, 11, 12]})
    pairs = [(0, 12), (1, 11), (2, 10), (2, 11), (3, 10), (3, 11), (4, 10), (5, 10)]
    entries = pd.DataFrame(
        [(u, m, "test", True) for u, m in pairs]
        + [(0, 13, "validation", True), (1, 13, "test", False), (-1, 13, "test", True)],
        columns=["user_row", "media_id", "split", "is_interaction"])
    tables.new_entries = entries.assign(user_id=entries["user_row"] + 100)
    queries = np.array([[1.0], [-1.0], [1.0], [1.0], [1.0], [-1.0]])
    known = np.array([[5.0], [0.5], [-5.0]])
    new = np.array([[-3.0], [3.0], [2.0], [1.0]])
    got = protocol.new_title_slice(queries, known, new, tables, "test")
    assert (got["titles"], got["users"], got["interactions"]) == (3, 6, 8)
    # Shelf top 2: {10, 11} for +1, {12, 11} for -1. Tower: u0 misses (12), u5 misses (10).
    np.testing.assert_array_equal(got["per_user"]["two-tower"], [0, 1, 1, 1, 1, 0])
    # The period's counts without the user: 10: 4, 11: 3, 12: 1. u0: 4, 3, 0 -> misses;
    # u1: 4, 2, 1 -> 11 in; u4, u5: 3, 3, 1 -> 10 in.
    np.testing.assert_array_equal(got["per_user"]["period popularity"], [0, 1, 1, 1, 1, 1])
    # Random 2 of 3: 1 - C(2, 2) / C(3, 2) = 2/3 with one title of theirs, 1 with two.
    np.testing.assert_allclose(got["per_user"]["random"], [2 / 3, 2 / 3, 1, 1, 2 / 3, 2 / 3])
    assert got["hit@2"] == pytest.approx({"two-tower": 4 / 6, "period popularity": 5 / 6,
                                          "random": 7 / 9})
    d = got["differences"]["two-tower - period popularity"]
    assert d["difference"] == pytest.approx(-1 / 6) and d["users"] == 6
    # Known and new together, top 2 (u0 had t0 before): u0 {10, 11} misses 12; u1
    # {t2, t1}: t2 of {t2, 11}, recall 1/2; u2, u3 {t0, 10}: 1/2; u4 {t0, 10}: 1; u5
    # {t2, t1}: 0. New titles in the top 2: u0 2, u2-u4 1 each.
    c = got["catalog_per_user"]
    np.testing.assert_allclose(c["recall@2"], [0, 0.5, 0.5, 0.5, 1, 0])
    np.testing.assert_allclose(c["new_hit@2"], [0, 0, 1, 1, 1, 0])
    np.testing.assert_allclose(c["new_share"], [1, 0, 0.5, 0.5, 0.5, 0])
    # u1's whole order: t2, t1, 12, 11, 10, t0: hits at 1 and 4 of 2 relevant.
    ideal = 1 + 1 / np.log2(3)
    assert c["ndcg@10"][1] == pytest.approx((1 + 1 / np.log2(5)) / ideal)
    assert got["catalog"]["recall@2"] == pytest.approx(2.5 / 6)
    assert got["catalog"]["users"] == 6
    # Nothing new in validation that counts but title 13's one entry: a shelf of one.
    assert protocol.new_title_slice(queries, known, new, tables, "validation")["titles"] == 1
    tables.new_entries = tables.new_entries.iloc[:0]
    assert protocol.new_title_slice(queries, known, new, tables, "test") is None


def test_expected_random_hit_counts_every_draw():
    # All 2-of-4 draws: a user with titles {0} is hit by 3 of the 6, with {0, 1} by 5.
    assert protocol.expected_random_hit(4, np.array([1, 2, 0, 4]), 2) == pytest.approx(
        [3 / 6, 5 / 6, 0, 1])
    assert protocol.expected_random_hit(3, np.array([1]), 10) == pytest.approx([1.0])
