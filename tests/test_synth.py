"""The synthetic world: deterministic, AniList-shaped, internally consistent, and with
side features that carry real signal."""

import numpy as np
import pandas as pd
import pytest

from pipelines import store, synth
from pipelines.errors import InputError, StoreError
from tests.worlds import TINY, build_world


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
    # Popularity (entries on the world's lists) is long-tailed: the top title has >10x
    # the median's audience and the top tenth of titles a third of all entries.
    popularity = media["popularity"].astype(float).sort_values(ascending=False)
    assert popularity.max() > 10 * popularity.median()
    assert popularity.iloc[:len(popularity) // 10].sum() > 0.3 * popularity.sum()
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


def test_adding_log_odds_is_the_generators_formula(tiny_db, tmp_path):
    truth = synth.Truth.load(synth.truth_path(tiny_db))
    rows, cols = [0, 7, 42, 399], [3, 0, 99, 250]
    users, media = truth.user_ids[rows], truth.media_ids[cols]
    got = truth.adding_log_odds(users, media)
    assert got.shape == (4, 4)
    for i, u in enumerate(rows):
        cohort = truth.user_cohort[u]
        for j, a in enumerate(cols):
            affinity = truth.user_vectors[u] @ truth.anime_vectors[a]
            want = (synth.POPULARITY_BIAS * truth.log_exposure[a]
                    + synth.TASTE_BIAS * affinity
                    + synth.COHORT_BIAS * (cohort >= 0 and a in truth.cohort_titles[cohort])
                    + synth.SEASONAL_BIAS * truth.user_seasonal[u]
                    * (truth.release[a] >= truth.user_joined[u]))
            assert got[i, j] == pytest.approx(want, rel=1e-12)
    np.testing.assert_array_equal(truth.user_index(users), rows)
    np.testing.assert_array_equal(truth.anime_index(media), cols)
    with pytest.raises(Exception, match="1 media ids are not in this world"):
        truth.adding_log_odds(users, [media[0], -5])
    # Every term is in use on this world.
    assert (truth.user_cohort >= 0).mean() > 0.6 and truth.cohort_titles.shape[1] >= 10
    assert truth.user_seasonal.max() > 0.5 and truth.log_exposure.std() > 0.5

    # A truth saved before these terms existed is refused with what to do.
    old = tmp_path / "old.truth.npz"
    np.savez(old, **{k: v for k, v in np.load(synth.truth_path(tiny_db)).items()
                     if k != "log_exposure"})
    with pytest.raises(InputError, match="older anirank.*log_exposure.*regenerate"):
        synth.Truth.load(old)


def _read(db):
    conn = store.connect(db, readonly=True)
    try:
        return {"entries": store.read_entries(conn), "media": store.read_media(conn),
                "users": store.read_users(conn), "relations": store.read_relations(conn)}
    finally:
        conn.close()


def test_media_table_counts_the_worlds_own_lists(tmp_path):
    db = tmp_path / "w.db"
    synth.run(db, users=60, anime=50, entries_per_user=12, seed=3, progress=False)
    world = _read(db)
    e, media = world["entries"], world["media"].set_index("media_id")
    for media_id, row in media.iterrows():  # by hand, title by title
        mine = e[e["media_id"] == media_id]
        scores = [s for s in mine["score"].tolist() if s > 0]
        assert row["popularity"] == len(mine)
        assert row["favourites"] == int(mine["is_favourite"].sum())
        if scores:
            assert row["mean_score"] == round(sum(scores) / len(scores))
        else:
            assert pd.isna(row["mean_score"]) and pd.isna(row["average_score"])
    # averageScore is meanScore shrunk toward the site mean: closer to it, never past it.
    site = e.loc[e["score"] > 0, "score"].mean()
    rated = media.dropna(subset=["mean_score"])
    gap_mean = (rated["mean_score"] - site).abs().astype(float)
    gap_average = (rated["average_score"] - site).abs().astype(float)
    assert (gap_average <= gap_mean + 0.5).all() and (gap_average < gap_mean).any()
    assert media["popularity"].sum() == len(e)


def test_franchise_relations_are_consistent(tiny_db, tmp_path):
    world = _read(tiny_db)
    rel, media = world["relations"], world["media"].set_index("media_id")
    assert {"SEQUEL", "PREQUEL", "SIDE_STORY", "PARENT"} == set(rel["relation_type"])
    inverse = {"SEQUEL": "PREQUEL", "PREQUEL": "SEQUEL", "SIDE_STORY": "PARENT",
               "PARENT": "SIDE_STORY"}
    pairs = rel.set_index(["media_id", "related_id"])["relation_type"]
    back = pairs.reindex(pd.MultiIndex.from_arrays([rel["related_id"], rel["media_id"]]))
    assert back.tolist() == rel["relation_type"].map(inverse).tolist(), "one row per direction"
    # A title has at most one prequel/parent; what follows aired strictly after it.
    up = rel[rel["relation_type"].isin(["PREQUEL", "PARENT"])]
    assert up["media_id"].is_unique
    when = media["season_year"] * 4 + media["season"].map(
        {s: i for i, s in enumerate(synth.SEASONS)})
    assert (when[up["media_id"]].to_numpy() > when[up["related_id"]].to_numpy()).all()
    sequels = rel[rel["relation_type"] == "SEQUEL"]
    assert media.loc[sequels["related_id"], "format"].isin(["TV", "MOVIE", "ONA", "TV_SHORT"]).all()
    titled = media.loc[up["media_id"], "title_romaji"].str.contains(
        r" (?:\d+(?:st|nd|rd|th) Season|Movie|OVA|Specials|Music Video)")
    assert titled.all()
    # The truth's franchise structure is the store's.
    truth = synth.Truth.load(synth.truth_path(tiny_db))
    child = truth.prequel >= 0
    assert set(zip(truth.media_ids[child], truth.media_ids[truth.prequel[child]])) == set(
        zip(up["media_id"], up["related_id"]))
    assert 0.15 < child.mean() < 0.45, "a share of titles continue a franchise"
    # The same seed writes the same relations.
    again = tmp_path / "again.db"
    synth.run(again, progress=False, **TINY)
    pd.testing.assert_frame_equal(_read(again)["relations"], rel)


def test_sequels_are_watched_after_their_prequels(demo_db, demo_raw):
    e, users = demo_raw["entries"], demo_raw["users"]
    rel = _read(demo_db)["relations"]
    up = rel[rel["relation_type"].isin(["PREQUEL", "PARENT"])]
    added = e.set_index(["user_id", "media_id"])["created_at"]
    follow = e.merge(up[["media_id", "related_id"]], on="media_id")
    before = added.reindex(pd.MultiIndex.from_arrays(
        [follow["user_id"], follow["related_id"]])).to_numpy(float)
    earlier = (before <= follow["created_at"].to_numpy(float)).mean()  # NaN: not listed
    # Chance: the prequel's share of users, as if the two titles were listed independently.
    popularity = e.groupby("media_id").size()
    chance = (popularity.reindex(follow["related_id"]).to_numpy() / len(users)).mean()
    assert earlier > 0.9 and earlier > 3 * chance, (earlier, chance)

    # A user who finished and liked a prequel adds its sequel far more often than one
    # who dropped it, and than its share of users.
    liked = e["score"] >= e.groupby("user_id")["score"].transform(
        lambda s: s[s > 0].quantile(0.75) if (s > 0).any() else 101)
    status = e.assign(liked=liked & e["status"].eq("COMPLETED")).set_index(
        ["user_id", "media_id"])
    sequels = up.rename(columns={"media_id": "sequel", "related_id": "media_id"})
    had = e.merge(sequels, on="media_id")
    had["took"] = pd.MultiIndex.from_arrays([had["user_id"], had["sequel"]]).isin(status.index)
    had["liked"] = status["liked"].reindex(
        pd.MultiIndex.from_arrays([had["user_id"], had["media_id"]])).to_numpy()
    p_liked = had.loc[had["liked"], "took"].mean()
    p_dropped = had.loc[had["status"] == "DROPPED", "took"].mean()
    base = (popularity.reindex(had["sequel"]).fillna(0).to_numpy() / len(users)).mean()
    assert p_liked > 0.6 and p_liked > 2 * p_dropped and p_liked > 3 * base, (
        p_liked, p_dropped, base)


def test_seasonal_watchers_add_titles_as_they_air(demo_raw):
    e, media, users = demo_raw["entries"], demo_raw["media"], demo_raw["users"]
    month = media["season"].map({"WINTER": 1, "SPRING": 4, "SUMMER": 7, "FALL": 10})
    release = pd.Series((pd.to_datetime(pd.DataFrame(
        {"year": media["season_year"], "month": month, "day": 1})).astype("int64")
        // 10**9).to_numpy(), index=media["media_id"]).reindex(e["media_id"]).to_numpy()
    joined = users.set_index("user_id")["created_at"].reindex(e["user_id"]).to_numpy(float)
    aired = release >= joined
    after = (e["created_at"].to_numpy() - release)[aired]
    window = (synth.NOW - release)[aired]
    within = after < 60 * 86_400
    # Added uniformly between release and now, about this share would fall in 60 days:
    uniform = np.minimum(60 * 86_400 / np.maximum(window, 1), 1).mean()
    assert within.mean() > 0.35 and within.mean() > 2 * uniform, (within.mean(), uniform)


def _ease_vs_popularity(e: pd.DataFrame, lam: float = 50.0, k: int = 20) -> float:
    """Recall@k of EASE minus that of most-popular on a random 20% of each list."""
    u = pd.Categorical(e["user_id"]).codes
    a = pd.Categorical(e["media_id"]).codes
    test = np.random.default_rng(0).random(len(e)) < 0.2
    x = np.zeros((u.max() + 1, a.max() + 1))
    x[u[~test], a[~test]] = 1
    held = np.zeros_like(x)
    held[u[test], a[test]] = 1
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0)

    def recall(scores):
        scores = np.where(x > 0, -np.inf, scores)
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        n = held.sum(1)
        hit = np.take_along_axis(held, top, axis=1).sum(1)
        return (hit[n > 0] / np.minimum(n[n > 0], k)).mean()

    return recall(x @ b) - recall(np.broadcast_to(x.sum(0), x.shape))


def _cohort_structure(db) -> tuple[float, float]:
    """(how much more often cohort members list their cohort's hidden titles than other
    users do, median over cohorts; how much more two members of one cohort share lists
    than two users of different cohorts, as a ratio of mean Jaccard similarities)."""
    truth = synth.Truth.load(synth.truth_path(db))
    e = _read(db)["entries"]
    x = np.zeros((len(truth.user_ids), len(truth.media_ids)))
    x[truth.user_index(e["user_id"]), truth.anime_index(e["media_id"])] = 1
    cohort = truth.user_cohort
    listed = [x[np.ix_(cohort == c, titles)].mean() / x[np.ix_(cohort != c, titles)].mean()
              for c, titles in enumerate(truth.cohort_titles)]
    shared = x @ x.T
    n = x.sum(1)
    jaccard = shared / (n[:, None] + n[None, :] - shared)
    placed = cohort >= 0
    same = (cohort[:, None] == cohort[None, :]) & placed[:, None]
    np.fill_diagonal(same, False)
    other = (cohort[:, None] != cohort[None, :]) & placed[:, None] & placed[None, :]
    return float(np.median(listed)), float(jaccard[same].mean() / jaccard[other].mean())


def test_cohorts_make_co_watching_only_lists_show(tmp_path, monkeypatch):
    with_cohorts = build_world(tmp_path / "with.db", **TINY)
    monkeypatch.setattr(synth, "COHORT_BIAS", 0.0)
    without = build_world(tmp_path / "without.db", **TINY)
    listed, shared = _cohort_structure(with_cohorts)
    listed_without, shared_without = _cohort_structure(without)
    # Members list their cohort's titles far more often than others; with no cohort
    # effect the same (hidden) title sets are listed alike by everyone.
    assert listed > 1.5 and listed_without < 1.15, (listed, listed_without)
    # ... so members' lists overlap more: co-occurrence that ids and item-item models see.
    assert shared > 1.08 and shared > shared_without + 0.05, (shared, shared_without)
    assert _ease_vs_popularity(_read(with_cohorts)["entries"]) > 0.15, (
        "item-item structure: EASE beats popularity by a margin")


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
