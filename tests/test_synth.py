"""The synthetic world: deterministic, AniList-shaped, internally consistent, and with
side features that carry real signal."""

import numpy as np
import pandas as pd
import pytest

from pipelines import store, synth
from pipelines.errors import StoreError
from tests.worlds import TINY


def _fingerprint(db):
    conn = store.connect(db, readonly=True)
    try:
        return store.fingerprint(conn)
    finally:
        conn.close()


def test_same_seed_same_store_other_seed_other_store(tiny_db, tmp_path):
    again = tmp_path / "again.db"
    synth.run(again, progress=False, **TINY)
    assert _fingerprint(again) == _fingerprint(tiny_db)
    a, b = synth.Truth.load(synth.truth_path(tiny_db)), synth.Truth.load(synth.truth_path(again))
    np.testing.assert_array_equal(a.user_vectors, b.user_vectors)

    other = tmp_path / "other.db"
    synth.run(other, progress=False, **dict(TINY, seed=8))
    assert _fingerprint(other) != _fingerprint(tiny_db)


def test_regenerating_replaces_a_synthetic_store_but_never_a_crawl(tmp_path):
    db = tmp_path / "w.db"
    synth.run(db, users=50, anime=40, entries_per_user=10, progress=False)
    synth.run(db, users=60, anime=40, entries_per_user=10, progress=False)
    conn = store.connect(db, readonly=True)
    assert store.counts(conn)["users"] == 60
    conn.close()

    crawl = tmp_path / "crawl.db"
    store.connect(crawl).close()  # a store with no 'synth' source, e.g. from the crawler
    with pytest.raises(StoreError, match="not synthetic.*refusing"):
        synth.run(crawl, users=50, anime=40, progress=False)
    assert not list(tmp_path.glob(".*.tmp*")), "temporary files left behind"


def test_catalog_has_anilist_shape(demo_raw):
    media = demo_raw["media"]
    shares = media["format"].value_counts(normalize=True)
    assert set(shares.index) == set(synth.FORMATS)
    assert 0.28 < shares["TV"] < 0.40 and shares["TV_SHORT"] < 0.1
    assert media.loc[media["format"] == "MOVIE", "episodes"].eq(1).all()
    assert media.loc[media["format"] == "TV_SHORT", "duration"].le(10).all()
    n_genres = media["genres"].str.len()
    assert n_genres.min() == 1 and n_genres.max() == 6
    assert set(media["genres"].explode()) <= set(synth.GENRES)
    assert media["season_year"].between(1970, 2026).all()
    # Popularity is a power law: the top title has >100x the median's audience.
    popularity = media["popularity"].astype(float)
    assert popularity.max() > 100 * popularity.median()
    # Studios are long-tailed: the biggest makes many titles, most make few.
    per_studio = media["studio"].value_counts()
    assert per_studio.iloc[0] >= 10 * per_studio.median()
    assert media.loc[media["is_adult"], "genres"].map(lambda g: "Hentai" in g).all()


def test_users_are_long_tailed_with_personal_scales(demo_raw):
    entries = demo_raw["entries"]
    lengths = entries.groupby("user_id").size()
    assert 280_000 < len(entries) < 400_000
    assert (lengths >= 1000).sum() >= 3, "a few users with 1,000+ entries"
    assert (lengths < 20).mean() > 0.1, "many users with fewer than 20"
    scored = entries[entries["score"] > 0]
    per_user = scored.groupby("user_id")["score"].agg(["min", "max", "count"])
    per_user = per_user[per_user["count"] >= 30]
    narrow = (per_user["min"] >= 60) & (per_user["max"] <= 95)
    wide = (per_user["max"] - per_user["min"]) >= 60
    assert narrow.mean() > 0.05 and wide.mean() > 0.1
    tens = scored.groupby("user_id")["score"].apply(lambda s: (s % 10 == 0).all())
    assert 0.2 < tens.mean() < 0.7, "POINT_10 users store multiples of 10"


def test_entries_are_internally_consistent(demo_raw):
    e = demo_raw["entries"]
    media = demo_raw["media"].set_index("media_id")
    users = demo_raw["users"].set_index("user_id")
    assert set(e["status"].unique()) == {"COMPLETED", "CURRENT", "PAUSED", "DROPPED",
                                         "PLANNING", "REPEATING"}
    assert (e.loc[e["status"] == "PLANNING", "score"] == 0).all()
    assert 0.5 < (e["score"] > 0).mean() < 0.8, "some entries unscored"
    finished = e["status"].isin(["COMPLETED", "REPEATING"])
    assert e.loc[finished, "completed_at"].notna().all()
    assert e.loc[~finished, "completed_at"].isna().all()
    assert (e["created_at"] <= e["updated_at"]).all()
    assert (e.loc[finished, "created_at"] <= e.loc[finished, "completed_at"]).all()
    assert (e.loc[finished, "completed_at"] <= e.loc[finished, "updated_at"]).all()
    assert (e["updated_at"] <= synth.NOW).all()
    assert (e["created_at"] >= users.loc[e["user_id"], "created_at"].to_numpy()).all()
    aired = pd.to_datetime(pd.DataFrame({"year": media.loc[e["media_id"], "season_year"],
                                         "month": 1, "day": 1})).astype("int64") // 10**9
    assert (e["created_at"].to_numpy() >= aired.to_numpy()).all(), "added before it aired"
    eps = media.loc[e["media_id"], "episodes"].to_numpy()
    done = finished.to_numpy() & pd.notna(eps)
    assert (e["progress"].to_numpy()[done] == eps[done]).all()
    favourites = e[e["is_favourite"]].groupby("user_id").size()
    assert favourites.max() <= 10 and e.loc[e["is_favourite"], "status"].isin(
        ["COMPLETED", "REPEATING"]).all()
    # Users' statistics are those of their lists.
    stats = e[e["score"] > 0].groupby("user_id")["score"].mean()
    np.testing.assert_allclose(users.loc[stats.index, "mean_score"], stats)


def test_truth_explains_scores_and_drops(demo_db, demo_raw):
    truth = synth.Truth.load(synth.truth_path(demo_db))
    e = demo_raw["entries"]
    scored = e[e["score"] > 0]
    expected = truth.expected_score(scored["user_id"], scored["media_id"])
    assert np.corrcoef(expected, scored["score"])[0, 1] > 0.7
    affinity = truth.affinity(e["user_id"], e["media_id"])
    dropped = (e["status"] == "DROPPED").to_numpy()
    completed = (e["status"] == "COMPLETED").to_numpy()
    assert affinity[dropped].mean() < affinity[completed].mean() - 0.3
    with pytest.raises(Exception, match="not in this world"):
        truth.affinity([123456789], [e["media_id"].iloc[0]])


def _auc(positive, negative):
    return (positive > negative).mean() + 0.5 * (positive == negative).mean()


def test_side_features_carry_signal(demo_features):
    """Taste read off a user's *training* history (genre and studio shares relative to
    the whole site's) predicts their held-out titles against random titles, and more so
    for users with short histories: the signal a side-feature model can use and an
    id-only model cannot, for users it has seen little of."""
    from pipelines.tables import read_vector

    users = demo_features["users"].set_index("user_id")
    anime = demo_features["anime"].set_index("media_id")
    genres = demo_features["schema"]["vocab"]["genres"]
    hot = np.array([[g in row for g in genres] for row in anime["genres"]], float)
    hot /= hot.sum(1, keepdims=True)
    share = read_vector(users.reset_index(), "genre_share")
    lift = share / share.mean(0)
    inter = demo_features["interactions"]
    test = inter.query("split == 'test' and is_interaction")
    u = users.index.get_indexer(test["user_id"])
    pos = anime.index.get_indexer(test["media_id"])
    neg = np.random.default_rng(0).integers(0, len(anime), len(test))
    genre_pos = np.einsum("ij,ij->i", lift[u], hot[pos])
    genre_neg = np.einsum("ij,ij->i", lift[u], hot[neg])
    short = users["n_train"].to_numpy()[u] < 20
    assert _auc(genre_pos, genre_neg) > 0.64
    assert _auc(genre_pos[short], genre_neg[short]) > 0.66

    studio = pd.Categorical(anime["studio"]).codes
    train = inter[inter["split"] == "train"]
    train_u = users.index.get_indexer(train["user_id"])
    train_s = studio[anime.index.get_indexer(train["media_id"])]
    seen = pd.Series(1, index=train_u.astype(np.int64) * 100_000 + train_s).groupby(level=0).sum()
    site = np.bincount(train_s, minlength=studio.max() + 1) / len(train_s)
    n_train = users["n_train"].to_numpy()

    def studio_lift(uu, aa):
        count = seen.reindex(uu.astype(np.int64) * 100_000 + studio[aa]).fillna(0).to_numpy()
        return (count / n_train[uu] + 1e-3) / (site[studio[aa]] + 1e-3)

    assert _auc(studio_lift(u, pos), studio_lift(u, neg)) > 0.54


def test_adding_log_odds_is_the_generators_formula(tiny_db):
    truth = synth.Truth.load(synth.truth_path(tiny_db))
    users = truth.user_ids[[0, 7, 42]]
    media = truth.media_ids[[3, 0, 99, 250]]
    popularity = pd.Series([5000, None, 1, 0], dtype="Int64")  # missing and 0 count as 1
    got = truth.adding_log_odds(users, media, popularity)
    assert got.shape == (3, 4)
    for i, u in enumerate([0, 7, 42]):
        for j, (a, pop) in enumerate(zip([3, 0, 99, 250], [5000, 1, 1, 1])):
            affinity = truth.user_vectors[u] @ truth.anime_vectors[a]
            want = synth.POPULARITY_BIAS * np.log(pop) + synth.TASTE_BIAS * affinity
            assert got[i, j] == pytest.approx(want, rel=1e-12)
    np.testing.assert_array_equal(truth.user_index(users), [0, 7, 42])
    np.testing.assert_array_equal(truth.anime_index(media), [3, 0, 99, 250])
    with pytest.raises(Exception, match="1 media ids are not in this world"):
        truth.adding_log_odds(users, [media[0], -5], [1, 1])


def test_the_store_says_which_world_it_holds(tiny_db):
    import json

    conn = store.connect(tiny_db, readonly=True)
    try:
        held, described = store.source(conn), store.describe_source(conn)
    finally:
        conn.close()
    assert held.startswith("synth:")
    assert json.loads(held.split(":", 1)[1]) == dict(TINY, activity_sigma=1.1)
    assert described == {
        "kind": "synthetic", "seed": 7,
        "description": "the anirank synthetic AniList-shaped world (seed 7, 400 users, "
                       "300 titles)"}
