"""Feature pipeline: the split (exact, leak-free), train-only user features checked
against hand-computed values, vocabularies, atomic output."""

import json

import numpy as np
import pandas as pd
import pytest

from pipelines import features
from pipelines.config import FeatureConfig
from pipelines.errors import InputError
from pipelines.features import assign_split
from pipelines.tables import load, read_vector


def _entries(user, times, scores=None, statuses=None, media=None):
    n = len(times)
    return pd.DataFrame({
        "user_id": [user] * n,
        "media_id": media if media is not None else list(range(100, 100 + n)),
        "score": scores if scores is not None else [70] * n,
        "status": statuses if statuses is not None else ["COMPLETED"] * n,
        "progress": [1] * n, "repeat": [0] * n, "is_favourite": [False] * n,
        "created_at": pd.array(times, dtype="Int64"),
        "updated_at": pd.array(times, dtype="Int64"),
        "completed_at": pd.array([None] * n, dtype="Int64"),
    })


def _media(ids, genres=None, formats=None):
    n = len(ids)
    return pd.DataFrame({
        "media_id": ids, "id_mal": pd.array([None] * n, dtype="Int64"),
        "title_romaji": [f"T{i}" for i in ids], "title_english": [None] * n,
        "format": formats or ["TV"] * n, "status": ["FINISHED"] * n,
        "episodes": pd.array([12] * n, dtype="Int64"), "duration": pd.array([24] * n, dtype="Int64"),
        "source": ["MANGA"] * n, "season": ["FALL"] * n,
        "season_year": pd.array([2020] * n, dtype="Int64"),
        "average_score": pd.array([70] * n, dtype="Int64"),
        "mean_score": pd.array([70] * n, dtype="Int64"),
        "popularity": pd.array([100] * n, dtype="Int64"),
        "favourites": pd.array([1] * n, dtype="Int64"),
        "is_adult": pd.array([False] * n, dtype="boolean"), "country": ["JP"] * n,
        "studio": ["S"] * n, "genres": genres or [["Action"]] * n,
        "tags": [[{"name": "Gore", "rank": 90}, {"name": "Minor", "rank": 10}]] * n,
        "description": [None] * n, "fetched_at": pd.array([None] * n, dtype="Int64"),
    })


def test_temporal_split_is_exact():
    # 10 entries at distinct times, inserted out of order: last 1 test, 1 before validation.
    times = [5, 1, 9, 3, 7, 2, 10, 4, 8, 6]
    split = assign_split(_entries(1, times), FeatureConfig())
    by_time = split.set_index("time")["split"]
    assert by_time[10] == "test" and by_time[9] == "validation"
    assert (by_time[list(range(1, 9))] == "train").all()
    # 20 entries -> 16 / 2 / 2; a user under min_entries_to_split keeps everything in train.
    both = pd.concat([_entries(1, list(range(20))), _entries(2, [3, 2, 1])])
    counts = assign_split(both, FeatureConfig()).groupby(["user_id", "split"], observed=True).size()
    assert counts[1].to_dict() == {"train": 16, "validation": 2, "test": 2}
    assert counts[2].to_dict() == {"train": 3}


def test_ties_at_a_boundary_go_to_the_earlier_split():
    # Times 1..8 then three entries at time 9: the would-be test entry ties with the
    # validation and train entries before it, so all three stay in train.
    times = [1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9]
    split = assign_split(_entries(1, times), FeatureConfig())
    assert (split["split"] == "train").all()
    # 1..9 then two at 10: the last (test) entry ties with the one before it, so both
    # go to validation and the user has no test entry rather than a leaky one.
    split = assign_split(_entries(1, list(range(1, 10)) + [10, 10]), FeatureConfig())
    assert split.loc[split["time"] == 10, "split"].eq("validation").all()
    assert split.loc[split["time"] <= 9, "split"].eq("train").all()


def test_untimed_users_get_a_seeded_random_split_independent_of_row_order():
    rows = pd.concat([_entries(u, [None] * 50, media=list(range(50))) for u in range(40)])
    config = FeatureConfig(seed=3)
    a = assign_split(rows, config)
    b = assign_split(rows.sample(frac=1.0, random_state=1), config)
    key = ["user_id", "media_id"]
    merged = a.merge(b, on=key, suffixes=("_a", "_b"))
    assert (merged["split_a"] == merged["split_b"]).all()
    assert a["random_split"].all()
    counts = a.groupby("user_id")["split"].value_counts().unstack()
    assert (counts["test"] == 5).all() and (counts["validation"] == 5).all()
    other = assign_split(rows, FeatureConfig(seed=4)).merge(a, on=key)
    assert (other["split_x"] != other["split_y"]).any(), "the seed changes the split"


def test_no_leakage_on_a_synthetic_world(tiny_db, tmp_path):
    features.run(tiny_db, tmp_path / "f", progress=False)
    inter = load(tmp_path / "f")["interactions"]
    bounds = inter.groupby(["user_id", "split"], observed=True)["time"].agg(["min", "max"]).unstack()
    has_test = bounds["min"]["test"].notna()
    b = bounds[has_test]
    assert (b["max"]["train"] < b["min"]["validation"]).all()
    assert (b["max"]["validation"] < b["min"]["test"]).all()
    assert has_test.mean() > 0.8


def test_test_scores_do_not_change_any_feature(tiny_db):
    from pipelines import store

    conn = store.connect(tiny_db, readonly=True)
    entries, media = store.read_entries(conn), store.read_media(conn)
    _, users, vectors, anime, schema = features.build(entries, media)
    split = assign_split(entries, FeatureConfig())
    held_out = split[split["split"] != "train"][["user_id", "media_id"]]
    changed = entries.merge(held_out.assign(flip=1), how="left", on=["user_id", "media_id"])
    flip = changed["flip"].eq(1).to_numpy()
    changed.loc[flip, "score"] = 100 - changed.loc[flip, "score"]
    changed.loc[flip, "status"] = "DROPPED"
    changed = changed.drop(columns="flip")
    _, users2, vectors2, anime2, schema2 = features.build(changed, media)
    pd.testing.assert_frame_equal(users, users2)
    for name in vectors:
        np.testing.assert_array_equal(vectors[name], vectors2[name])
    pd.testing.assert_frame_equal(anime, anime2)
    assert schema["vocab"] == schema2["vocab"] and schema["stats"] == schema2["stats"]
    assert schema["fingerprint"] != schema2["fingerprint"], "the data did change"


def test_user_features_match_hand_computed_values():
    # One user, 5 entries (all train with min_entries_to_split=6):
    #   m1 Action  TV    score 80 COMPLETED
    #   m2 Action  TV    score 60 DROPPED
    #   m3 Drama   MOVIE score 90 COMPLETED
    #   m4 Drama   TV    score 0  PLANNING
    #   m5 Action+Drama TV score 70 CURRENT
    entries = _entries(1, [1, 2, 3, 4, 5], scores=[80, 60, 90, 0, 70],
                       statuses=["COMPLETED", "DROPPED", "COMPLETED", "PLANNING", "CURRENT"],
                       media=[1, 2, 3, 4, 5])
    media = _media([1, 2, 3, 4, 5],
                   genres=[["Action"], ["Action"], ["Drama"], ["Drama"], ["Action", "Drama"]],
                   formats=["TV", "TV", "MOVIE", "TV", "TV"])
    config = FeatureConfig(min_entries_to_split=6, affinity_prior=1.0)
    inter, users, vectors, anime, schema = features.build(entries, media, config)
    u = users.iloc[0]
    assert (u["n_train"], u["n_scored"], u["completed_count"]) == (5, 4, 2)
    assert u["n_interactions"] == 3  # COMPLETED, COMPLETED, CURRENT
    assert u["mean_score"] == 75.0  # (80 + 60 + 90 + 70) / 4
    assert u["std_score"] == pytest.approx(np.sqrt((25 + 225 + 225 + 25) / 4))
    assert u["dropped_ratio"] == pytest.approx(1 / 4)  # of the 4 not PLANNING
    assert u["planning_ratio"] == pytest.approx(1 / 5)
    assert schema["vocab"]["genres"] == ["Action", "Drama"]
    assert schema["vocab"]["format"] == ["MOVIE", "TV"]
    share = vectors["genre_share"][0]
    np.testing.assert_allclose(share, [3 / 5, 3 / 5])
    # Action: deviations +5, -15, -5 over 3 scored titles, prior 1 -> -15 / 4.
    # Drama: +15 (m3), -5 (m5); m4 unscored -> +10 / 3.
    np.testing.assert_allclose(vectors["genre_affinity"][0], [-15 / 4, 10 / 3], rtol=1e-6)
    # MOVIE: +15 / 2; TV: +5 - 15 - 5 = -15 over 3 scored -> -15 / 4.
    np.testing.assert_allclose(vectors["format_affinity"][0], [15 / 2, -15 / 4], rtol=1e-6)
    np.testing.assert_allclose(vectors["format_share"][0], [1 / 5, 4 / 5])
    a = anime.set_index("media_id")
    assert a.loc[1, "tags"] == ["Gore"]  # rank-10 tag is below min_tag_rank
    assert a.loc[1, "train_count"] == 1 and a.loc[2, "train_count"] == 0  # DROPPED: not watched
    assert a.loc[5, "train_mean_score"] == 70.0
    assert inter["is_label"].tolist() == [True, True, True, False, True]


def test_run_writes_complete_tables_atomically(tiny_db, tmp_path, monkeypatch):
    out = tmp_path / "features"
    summary = features.run(tiny_db, out, progress=False)
    tables = load(out)
    assert summary["entries"] == len(tables["interactions"])
    assert sum(summary[s]["entries"] for s in features.SPLITS) == summary["entries"]
    assert len(tables["users"]) == summary["users"] == 400
    width = len(tables["schema"]["vocab"]["genres"])
    assert read_vector(tables["users"], "genre_share").shape == (400, width)
    schema = json.loads((out / "schema.json").read_text())
    assert schema["config"] == FeatureConfig().to_dict()
    assert {f["name"] for f in schema["features"]} >= {"user_id", "media_id", "genres"}
    assert set(schema["stats"]["anime"]) == {
        f.name for f in features.FEATURES if f.entity == "anime" and f.kind == "numeric"}
    assert set(schema["stats"]["user"]) == {
        f.name for f in features.FEATURES if f.entity == "user" and f.kind in ("numeric", "vector")}
    share = read_vector(tables["users"], "genre_share")
    assert schema["stats"]["user"]["genre_share"]["mean"] == pytest.approx(share.mean(), rel=1e-5)

    # A failure while writing leaves the previous tables in place and no temp dirs.
    before = (out / "schema.json").read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(features.pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        features.run(tiny_db, out, progress=False)
    assert (out / "schema.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features"]


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(InputError, match="validation_fraction"):
        FeatureConfig(validation_fraction=1.5)
    with pytest.raises(InputError, match="leave some entries for train"):
        FeatureConfig(validation_fraction=0.5, test_fraction=0.5)
    with pytest.raises(InputError, match=r"unknown statuses \['WATCHED'\]"):
        FeatureConfig(interaction_statuses=("WATCHED",))
    with pytest.raises(InputError, match="not a feature directory"):
        load(tmp_path)
    with pytest.raises(InputError, match="no list entries"):
        features.build(_entries(1, []), _media([1]))
    assert FeatureConfig.from_dict(FeatureConfig().to_dict()) == FeatureConfig()
