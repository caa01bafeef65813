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
        want = inter[inter["split"].isin(earlier)]
        assert len(seen) == len(want)   # every status, not only interactions
        assert set(map(tuple, seen.to_numpy())) == set(map(tuple, want[["user_row", "anime_row"]].to_numpy()))


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
