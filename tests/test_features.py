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
from pipelines.tables import load, read_vector, related_rows


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


PER_USER = FeatureConfig(protocol="per_user")
DAY = 86_400


def _as_of_fixture():
    """``(day(d) -> unix seconds, the cutoff T = day 10 as a date, three users' entries)``."""
    day = lambda d: 1_000 * DAY + d * DAY  # noqa: E731
    t0 = pd.Timestamp(day(10), unit="s").strftime("%Y-%m-%d")
    rows = pd.concat([
        _entries(1, [day(1), day(9), day(10), day(14), day(15), day(19), day(20)],
                 media=[1, 2, 3, 4, 5, 6, 7]),
        _entries(2, [day(2), day(3), day(4), day(5), day(12), day(16)], media=[3, 4, 5, 6, 1, 9]),
        _entries(3, [day(11), day(17)], media=[1, 2]),
    ])
    return day, t0, rows


def test_as_of_split_is_exact_and_leaves_out_what_no_model_at_the_cutoff_knows():
    # Cutoff T = day 10, periods of 5 days: train < T, validation [T, T+5d), test
    # [T+5d, T+10d), later entries left out; also left out: validation/test entries of
    # a user with nothing before T (user 3) and of a title no one listed before T (m9).
    day, t0, rows = _as_of_fixture()
    media = _media(list(range(1, 10)))
    config = FeatureConfig(as_of=t0, horizon_days=5)
    split, cutoff = assign_split(rows, config)
    assert cutoff == {"as_of": day(10), "horizon": 5 * DAY, "last": day(20)}
    got = split.set_index(["user_id", "media_id"])["split"].astype(object).to_dict()
    assert got[(1, 1)] == got[(1, 2)] == got[(2, 3)] == got[(2, 6)] == "train"
    assert got[(1, 3)] == got[(1, 4)] == got[(2, 1)] == "validation"
    assert got[(1, 5)] == got[(1, 6)] == got[(2, 9)] == "test"
    assert pd.isna(got[(1, 7)])  # day 20 = T + 2h: after the test period
    inter, users, _, anime, schema = features.build(rows, media, config)
    kept = set(zip(inter["user_id"], inter["media_id"]))
    assert kept == {(1, 1), (1, 2), (2, 3), (2, 4), (2, 5), (2, 6),  # train
                    (1, 3), (1, 4), (2, 1), (1, 5), (1, 6)}          # validation, test
    assert schema["split"]["left_out"] == {"after_test": 1, "new_users": 2, "new_titles": 1}
    assert users["user_id"].tolist() == [1, 2]
    # The catalog is what had been listed before T: m7-m9 were not.
    assert anime["media_id"].tolist() == [1, 2, 3, 4, 5, 6]
    assert schema["split"]["periods"]["test"] == [
        pd.Timestamp(day(15), unit="s").strftime("%Y-%m-%d"),
        pd.Timestamp(day(20), unit="s").strftime("%Y-%m-%d")]
    assert features.describe_split(schema).startswith(f"as of {t0} (one time cutoff")


def test_walk_forward_tables_fold_validation_into_train_with_the_same_test_period():
    # The fixture above, folded: T' = T + h = day 15; train < day 15, test [15, 20).
    day, t0, rows = _as_of_fixture()
    media = _media(list(range(1, 10)), genres=[["Action"]] * 8 + [["Drama", "Comedy"]])
    selection = FeatureConfig(as_of=t0, horizon_days=5)
    folded = FeatureConfig(as_of=t0, horizon_days=5, fold_validation=True)
    split, cutoff = assign_split(rows, folded)
    assert cutoff["as_of"] == day(15) and cutoff["validation_horizon"] == 0
    got = split.set_index(["user_id", "media_id"])["split"].astype(object).to_dict()
    assert {k for k, v in got.items() if v == "validation"} == set()
    assert got[(1, 3)] == got[(1, 4)] == got[(2, 1)] == got[(3, 1)] == "train"  # [10, 15)
    assert got[(1, 5)] == got[(1, 6)] == got[(3, 2)] == "test"
    assert pd.isna(got[(1, 7)])
    # User 3 (first entry day 11) and title 9's neighbours are known now; title 9 is
    # first listed on day 16, in the test period: still new, left out.
    inter, users, _, anime, schema = features.build(rows, media, folded)
    assert users["user_id"].tolist() == [1, 2, 3]
    assert set(zip(inter.loc[inter["split"] == "test", "user_id"],
                   inter.loc[inter["split"] == "test", "media_id"])) == {(1, 5), (1, 6), (3, 2)}
    assert schema["split"]["left_out"] == {"after_test": 1, "new_users": 0, "new_titles": 1}
    assert schema["split"]["periods"]["test"] == _selection_periods(rows, media, selection)["test"]
    assert features.covered(schema) == f"entries before {pd.Timestamp(day(15), unit='s'):%Y-%m-%d}"
    assert features.describe_split(schema).startswith("walk-forward, as of")
    # With another model's inputs, its vocabularies and widths are kept, not these titles'.
    inputs = {"vocab": {"genres": ["Action", "Drama", "Comedy", "Romance"]},
              "dropped_features": {}, "multi_widths": {"genres": 3, "tags": 1}}
    _, vectors_k, _, schema_k, _ = features._tables([rows], media, None, folded,
                                                 features._MemorySpill(), features._FrameRows(),
                                                 inputs=inputs)
    assert schema_k["vocab"]["genres"] == ["Action", "Drama", "Comedy", "Romance"]
    assert schema_k["multi_widths"] == {"genres": 3, "tags": 1}
    assert vectors_k["genre_share"].shape[1] == vectors_k["genre_affinity"].shape[1] == 4


def test_recent_counts_windows_are_half_open_and_skip_untimed_entries():
    """``recent_counts`` by hand: a window is [as_of - days, as_of); an entry at as_of
    is the future, one at exactly as_of - 7 days is in the 7-day window; untimed entries
    (NaN) and entries of no title (row -1) are not counted."""
    day, now = 86_400, 100 * 86_400
    rows = np.array([0, 0, 1, 1, 2, 2, -1, 0])
    when = np.array([now - 1, now - 7 * day, now - 7 * day - 1, now - 30 * day,
                     now - 30 * day - 1, now, now - 1, np.nan])
    counts = features.recent_counts(rows, when, 4, now)
    assert set(counts) == set(features.RECENT_FEATURES)
    assert counts["recent_7d"].tolist() == [2, 0, 0, 0]
    assert counts["recent_30d"].tolist() == [2, 2, 0, 0]


def test_titles_count_their_entries_in_the_days_before_the_cutoff():
    """recent_7d / recent_30d: a title's training entries in [T - 7d, T) and [T - 30d, T),
    by hand on the fixture above, for T = day 10 and for the folded T' = day 15; with no
    cutoff (the per-user split) there is no "now" to count back from: dropped by name."""
    day, t0, rows = _as_of_fixture()
    media = _media(list(range(1, 10)))
    _, _, _, anime, schema = features.build(rows, media, FeatureConfig(as_of=t0, horizon_days=5))
    counts = anime.set_index("media_id")[["recent_7d", "recent_30d"]]
    # Training entries: m1 day 1, m2 day 9 (user 1); m3-m6 days 2-5 (user 2).
    assert counts["recent_7d"].to_dict() == {1: 0, 2: 1, 3: 0, 4: 1, 5: 1, 6: 1}
    assert counts["recent_30d"].to_dict() == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1}
    assert schema["stats"]["anime"]["recent_7d"]["mean"] > 0
    folded = FeatureConfig(as_of=t0, horizon_days=5, fold_validation=True)
    _, _, _, anime, _ = features.build(rows, media, folded)
    # Also m3 day 10, m4 day 14 (user 1), m1 day 12 (user 2), m1 day 11 (user 3).
    assert anime.set_index("media_id")["recent_7d"].to_dict() == {
        1: 2, 2: 1, 3: 1, 4: 1, 5: 0, 6: 0}
    _, _, _, anime, schema = features.build(rows, media, PER_USER)
    assert anime["recent_7d"].isna().all()
    assert schema["dropped_features"]["recent_7d"].startswith("no time cutoff")
    assert set(features.RECENT_FEATURES) <= set(schema["dropped_features"])


def test_entries_already_on_the_list_before_their_period_are_history_not_targets():
    """A held-out entry created before its period (on the list already, finished in the
    period) is counted per period among its positives (a PLANNING one is not) and the
    test split's sentence says the share; with ``targets="added"`` it is no positive
    there but history its rankings leave out (``listed_before``), still a score label."""
    day, t0, rows = _as_of_fixture()
    rows = rows.reset_index(drop=True)
    key = list(zip(rows["user_id"], rows["media_id"]))
    # (1, 5) test, created day 2; (2, 1) validation, created day 5; (1, 6) test, created
    # day 3 but only planned: not a positive.
    for pair, created in (((1, 5), day(2)), ((2, 1), day(5)), ((1, 6), day(3))):
        rows.loc[key.index(pair), "created_at"] = created
    rows.loc[key.index((1, 6)), "status"] = "PLANNING"
    changed = FeatureConfig(as_of=t0, horizon_days=5, targets="changed")   # still targets
    inter, _, _, _, schema = features.build(rows, _media(list(range(1, 10))), changed)
    assert schema["split"]["listed_before"] == {"validation": 1, "test": 1}
    assert not inter["listed_before"].any() and schema["counts"]["test"]["interactions"] == 1
    assert ("1 of the test period's 1 positives (100.0%) were on the user's list before it "
            "began") in features.describe_split(schema)
    added = FeatureConfig(as_of=t0, horizon_days=5)   # the default: targets="added"
    assert added.targets == "added"
    inter, _, _, _, schema = features.build(rows, _media(list(range(1, 10))), added)
    assert schema["split"]["listed_before"] == {"validation": 1, "test": 1}
    flags = inter.set_index(["user_id", "media_id"])[["listed_before", "is_interaction",
                                                       "is_label"]]
    assert flags.loc[(1, 5)].tolist() == [True, False, True]      # history, still a score
    assert flags.loc[(2, 1)].tolist() == [True, False, True]
    assert flags.loc[(1, 6)].tolist() == [True, False, False]     # PLANNING: never a target
    assert not flags.drop([(1, 5), (2, 1), (1, 6)])["listed_before"].any()
    assert schema["counts"]["test"]["interactions"] == 0
    assert ("targets are the titles added in the period: 1 more (100.0%) were on the "
            "user's list before it") in features.describe_split(schema)
    with pytest.raises(InputError, match="`targets` must be one of"):
        FeatureConfig(targets="new")
    _, _, _, _, untimed = features.build(rows, _media(list(range(1, 10))), PER_USER)
    assert "listed_before" not in untimed["split"]


def _selection_periods(rows, media, config):
    return features.build(rows, media, config)[4]["split"]["periods"]


def test_a_random_list_folds_its_validation_part_into_train():
    rows = pd.concat([_entries(u, [None] * 50, media=list(range(50))) for u in range(10)])
    a, _ = assign_split(rows, FeatureConfig(seed=3))
    b, _ = assign_split(rows, FeatureConfig(seed=3, fold_validation=True))
    merged = a.merge(b, on=["user_id", "media_id"], suffixes=("_a", "_b"))
    assert (merged["split_b"] == merged["split_a"].astype(object).replace(
        {"validation": "train"})).all()
    assert (merged["split_b"] == "test").sum() == 50 and (merged["split_b"] == "train").sum() == 450


def test_relations_reach_the_title_table_within_the_catalog():
    """Each title carries its relations to the other titles of the catalog as of the
    cutoff (a sequel first listed after it is not one), described in the schema; the
    franchise signal's input is read from them by type."""
    day = lambda d: 1_000 * DAY + d * DAY  # noqa: E731
    rows = pd.concat([_entries(1, [day(1), day(2), day(12)], media=[1, 2, 4]),
                      _entries(2, [day(3), day(13)], media=[3, 2])])
    config = FeatureConfig(as_of=pd.Timestamp(day(10), unit="s").strftime("%Y-%m-%d"),
                           horizon_days=5)
    # 1 -> 2 -> 4 the main line, 3 a side story of 2; 4 is first listed after the cutoff,
    # and 9 is no title of the store at all.
    edges = [(1, 2, "SEQUEL"), (2, 1, "PREQUEL"), (2, 3, "SIDE_STORY"), (3, 2, "PARENT"),
             (2, 4, "SEQUEL"), (4, 2, "PREQUEL"), (9, 1, "ADAPTATION")]
    relations = pd.DataFrame(edges, columns=["media_id", "related_id", "relation_type"])
    _, _, _, anime, schema = features.build(rows, _media([1, 2, 3, 4]), config, relations)
    assert anime["media_id"].tolist() == [1, 2, 3]
    assert anime["related_ids"].map(list).tolist() == [[2], [1, 3], [2]]
    assert anime["related_types"].map(list).tolist() == [["SEQUEL"], ["PREQUEL", "SIDE_STORY"],
                                                         ["PARENT"]]
    assert schema["relations"] == {
        "columns": ["related_ids", "related_types"], "pairs": 4, "titles": 3,
        "types": {"PARENT": 1, "PREQUEL": 1, "SEQUEL": 1, "SIDE_STORY": 1}, "outside_catalog": 3}
    assert "franchise" not in schema["dropped_features"]
    # What each title continues (its PREQUEL / PARENT), as rows: 2 continues 1, 3 continues 2.
    assert related_rows(anime, schema).tolist() == [[-1], [0], [1]]
    assert related_rows(anime, schema, ("SEQUEL", "PREQUEL", "SIDE_STORY", "PARENT")).tolist() \
        == [[1, -1], [0, 2], [1, -1]]
    # Relations change the data, so the fingerprint.
    _, _, _, plain, without = features.build(rows, _media([1, 2, 3, 4]), config)
    assert without["fingerprint"] != schema["fingerprint"]

    # A source without relations (the Kaggle dumps, an older store) or with none inside
    # the catalog: no relation columns, and the franchise signal is a dropped feature.
    _, _, _, outside, only_outside = features.build(rows, _media([1, 2, 3, 4]), config,
                                                    relations.iloc[[4, 5, 6]])
    for table, schema in ((plain, without), (outside, only_outside)):
        assert "related_ids" not in table and "relations" not in schema
        assert schema["dropped_features"]["franchise"] == \
            "no relations between the catalog's titles in the source"
        assert related_rows(table, schema) is None
    pd.testing.assert_frame_equal(plain, outside)
    # A schema that records relations over a table without them is a clear error.
    with pytest.raises(InputError, match="no 'related_ids'"):
        related_rows(plain, {"relations": {"pairs": 1}})


def test_a_list_at_one_time_is_placed_by_it_unless_most_lists_are_stamps():
    # Users 0-3 have histories; user 9 added three titles at one moment after the cutoff
    # (a one-time list). Per user it has no order (random split); as of the cutoff its
    # time places it: nothing of it may land in train.
    rows = pd.concat([_entries(u, [d * DAY for d in range(u, 100, 4)],
                               media=list(range(u, 100, 4))) for u in range(4)]
                     + [_entries(9, [95 * DAY] * 3, media=[1, 2, 3])])
    split, cutoff = assign_split(rows, FeatureConfig())
    late = split[split["user_id"] == 9]
    assert not late["random_split"].any() and (late["split"] != "train").all()
    per_user, _ = assign_split(rows, PER_USER)
    assert per_user.loc[per_user["user_id"] == 9, "random_split"].all()
    # Every list at one time: an import stamp, not a history; split at random per user.
    stamped = rows.assign(created_at=5 * DAY, updated_at=5 * DAY)
    split, cutoff = assign_split(stamped, FeatureConfig())
    assert cutoff is None and split["random_split"].all()


def test_default_cutoff_holds_out_the_last_fifth_of_entries():
    # 100 entries one day apart: T at the 80% quantile (day 79.2 -> midnight of day 79),
    # the two periods cover the rest: h = ceil((100 - 79) / 2) = 11 days.
    rows = pd.concat([_entries(u, [d * DAY for d in range(u, 100, 4)],
                               media=list(range(u, 100, 4))) for u in range(4)])
    split, cutoff = assign_split(rows, FeatureConfig())
    assert cutoff == {"as_of": 79 * DAY, "horizon": 11 * DAY, "last": 99 * DAY}
    counts = split["split"].value_counts()
    assert (counts["train"], counts["validation"], counts["test"]) == (79, 11, 10)
    with pytest.raises(InputError, match="leaves no training entries"):
        assign_split(rows, FeatureConfig(as_of="1960-01-01"))
    with pytest.raises(InputError, match="leaves no validation or test entries"):
        assign_split(rows, FeatureConfig(as_of="2100-01-01"))
    with pytest.raises(InputError, match="ISO date"):
        FeatureConfig(as_of="last tuesday")
    with pytest.raises(InputError, match="protocol"):
        FeatureConfig(protocol="random")


def test_temporal_split_is_exact():
    # 10 entries at distinct times, inserted out of order: last 1 test, 1 before validation.
    times = [5, 1, 9, 3, 7, 2, 10, 4, 8, 6]
    split, _ = assign_split(_entries(1, times), PER_USER)
    by_time = split.set_index("time")["split"]
    assert by_time[10] == "test" and by_time[9] == "validation"
    assert (by_time[list(range(1, 9))] == "train").all()
    # 20 entries -> 16 / 2 / 2; a user under min_entries_to_split keeps everything in train.
    both = pd.concat([_entries(1, list(range(20))), _entries(2, [3, 2, 1])])
    counts = assign_split(both, PER_USER)[0].groupby(["user_id", "split"], observed=True).size()
    assert counts[1].to_dict() == {"train": 16, "validation": 2, "test": 2}
    assert counts[2].to_dict() == {"train": 3}


def test_ties_at_a_boundary_go_to_the_earlier_split():
    # Times 1..8 then three entries at time 9: the would-be test entry ties with the
    # validation and train entries before it, so all three stay in train.
    times = [1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9]
    split, _ = assign_split(_entries(1, times), PER_USER)
    assert (split["split"] == "train").all()
    # 1..9 then two at 10: the last (test) entry ties with the one before it, so both
    # go to validation and the user has no test entry rather than a leaky one.
    split, _ = assign_split(_entries(1, list(range(1, 10)) + [10, 10]), PER_USER)
    assert split.loc[split["time"] == 10, "split"].eq("validation").all()
    assert split.loc[split["time"] <= 9, "split"].eq("train").all()


def test_untimed_users_get_a_seeded_random_split_independent_of_row_order():
    rows = pd.concat([_entries(u, [None] * 50, media=list(range(50))) for u in range(40)])
    config = FeatureConfig(seed=3)
    a, cutoff = assign_split(rows, config)
    assert cutoff is None  # no times: no cutoff, whatever the protocol
    b, _ = assign_split(rows.sample(frac=1.0, random_state=1), config)
    key = ["user_id", "media_id"]
    merged = a.merge(b, on=key, suffixes=("_a", "_b"))
    assert (merged["split_a"] == merged["split_b"]).all()
    assert a["random_split"].all()
    counts = a.groupby("user_id")["split"].value_counts().unstack()
    assert (counts["test"] == 5).all() and (counts["validation"] == 5).all()
    other = assign_split(rows, FeatureConfig(seed=4))[0].merge(a, on=key)
    assert (other["split_x"] != other["split_y"]).any(), "the seed changes the split"


def test_no_leakage_on_a_synthetic_world(tiny_db, tmp_path):
    features.run(tiny_db, tmp_path / "f", PER_USER, progress=False)
    inter = load(tmp_path / "f")["interactions"]
    bounds = inter.groupby(["user_id", "split"], observed=True)["time"].agg(["min", "max"]).unstack()
    has_test = bounds["min"]["test"].notna()
    b = bounds[has_test]
    assert (b["max"]["train"] < b["min"]["validation"]).all()
    assert (b["max"]["validation"] < b["min"]["test"]).all()
    assert has_test.mean() > 0.8


def _rewrite_after(entries: pd.DataFrame, cutoff: int) -> pd.DataFrame:
    """Every entry (of any user) from ``cutoff`` on rewritten: score reversed, status
    DROPPED, favourite flipped, every third one deleted, and one new entry per user."""
    future = (entries["updated_at"] >= cutoff).to_numpy()
    out = entries.copy()
    out.loc[future, "score"] = 100 - out.loc[future, "score"]
    out.loc[future, "status"] = "DROPPED"
    out.loc[future, "is_favourite"] = ~out.loc[future, "is_favourite"]
    out = out[~(future & (np.arange(len(out)) % 3 == 0))]
    extra = out.groupby("user_id").tail(1).assign(
        media_id=lambda f: f["media_id"] + 1_000_000, created_at=cutoff + 5,
        updated_at=cutoff + 5)
    return pd.concat([out, extra], ignore_index=True)


def test_no_entry_after_the_cutoff_changes_any_training_table_statistic_or_vocabulary(tiny_db):
    from pipelines import store

    conn = store.connect(tiny_db, readonly=True)
    entries, media = store.read_entries(conn), store.read_media(conn)
    conn.close()
    _, _, _, _, schema = features.build(entries, media)
    cutoff = schema["split"]["as_of"]
    # T and h pinned: the default T is a quantile of all entry times, so it moves when
    # later entries do (that choice of date carries no entry into any table).
    config = FeatureConfig(as_of=schema["split"]["periods"]["validation"][0],
                           horizon_days=schema["split"]["horizon_days"])
    inter, users, vectors, anime, schema = features.build(entries, media, config)
    # The history (two list columns) is in the user table compared below, and not empty.
    assert {"history", "history_weight"} <= set(users) and users["history"].map(len).sum() > 0
    changed = _rewrite_after(entries, cutoff)
    media2 = pd.concat([media, media.assign(media_id=media["media_id"] + 1_000_000)])
    inter2, users2, vectors2, anime2, schema2 = features.build(changed, media2, config)
    assert schema2["split"]["as_of"] == cutoff
    pd.testing.assert_frame_equal(users, users2)
    for name in vectors:
        np.testing.assert_array_equal(vectors[name], vectors2[name])
    pd.testing.assert_frame_equal(anime, anime2)
    assert schema["vocab"] == schema2["vocab"] and schema["stats"] == schema2["stats"]
    assert schema["features"] == schema2["features"]
    train, train2 = (i[i["split"] == "train"].reset_index(drop=True) for i in (inter, inter2))
    pd.testing.assert_frame_equal(train, train2)
    assert schema["fingerprint"] != schema2["fingerprint"], "the data did change"

    # The same rewrite does reach the tables under the per-user split: other users'
    # later entries are training entries there (why as-of is the default).
    _, users3, _, anime3, schema3 = features.build(changed, media2, PER_USER)
    _, users4, _, anime4, schema4 = features.build(entries, media, PER_USER)
    assert not anime3["popularity"].equals(anime4["popularity"])
    assert schema3["stats"] != schema4["stats"]


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
    entries.loc[[0, 2], "is_favourite"] = True
    config = FeatureConfig(protocol="per_user", min_entries_to_split=6, affinity_prior=1.0)
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
    # Title statistics are counted from the training entries, not read from the media
    # table (whose popularity 100, favourites 1, scores 70 are a crawl-time snapshot).
    assert a.loc[1, "popularity"] == a.loc[4, "popularity"] == 1  # any status counts
    assert a.loc[1, "favourites"] == 1 and a.loc[2, "favourites"] == 0
    assert a.loc[5, "average_score"] == 70.0 and a.loc[1, "average_score"] == 80.0
    assert np.isnan(a.loc[4, "average_score"])  # PLANNING, unscored
    assert inter["is_label"].tolist() == [True, True, True, False, True]


def test_history_weights_by_hand():
    # User 1, all in train (min_entries_to_split=9), times in days:
    #   m1 day 0    score 80  COMPLETED  -> (1 + 0.80) * 0.5 ** (730 / 365) = 0.45
    #   m2 day 365  unscored  CURRENT    -> (1 + 0.75) * 0.5 ** (365 / 365) = 0.875
    #      (unscored counts as the user's mean score: (80 + 70) / 2 = 75)
    #   m3 day 730  score 70  COMPLETED  -> (1 + 0.70) * 0.5 ** 0 = 1.7
    #   m4 day 800  unscored  PLANNING   -> not watched: not in the history, and not the
    #      newest title the ages count from
    # User 2: one title with no time -> no decay; unscored, no scores -> the global mean
    # of the training scores, (80 + 70 + 60) / 3 = 70.
    # User 3: m1 60 on day 0, m3 unscored on day 0 -> one time: no decay either way.
    entries = pd.concat([
        _entries(1, [0, 365 * DAY, 730 * DAY, 800 * DAY], scores=[80, 0, 70, 0],
                 statuses=["COMPLETED", "CURRENT", "COMPLETED", "PLANNING"], media=[1, 2, 3, 4]),
        _entries(2, [None], scores=[0], media=[1]),
        _entries(3, [0, 0], scores=[60, 0], media=[1, 3])], ignore_index=True)
    config = FeatureConfig(protocol="per_user", min_entries_to_split=9)
    _, users, _, _, schema = features.build(entries, _media([1, 2, 3, 4]), config)
    [spec] = [f for f in schema["features"] if f["kind"] == "history"]
    assert spec == {"name": "history", "entity": "user", "kind": "history", "vocab": "media_id",
                    "transform": "none", "length": 50}
    u = users.set_index("user_id")
    # Highest weight first.
    assert u.loc[1, "history"].tolist() == [3, 2, 1]
    np.testing.assert_allclose(u.loc[1, "history_weight"], [1.7, 0.875, 0.45], rtol=1e-6)
    assert u.loc[2, "history"].tolist() == [1]
    np.testing.assert_allclose(u.loc[2, "history_weight"], [1.7], rtol=1e-6)
    assert u.loc[3, "history"].tolist() == [1, 3]
    np.testing.assert_allclose(u.loc[3, "history_weight"], [1.6, 1.6], rtol=1e-6)

    # The cap keeps the highest-weighted titles; a half-life changes the decay; 0 = no feature.
    short = FeatureConfig(protocol="per_user", min_entries_to_split=9, history_length=2,
                          history_half_life_days=730)
    _, users, _, _, _ = features.build(entries, _media([1, 2, 3, 4]), short)
    first = users.set_index("user_id").loc[1]
    assert first["history"].tolist() == [3, 2]
    np.testing.assert_allclose(first["history_weight"], [1.7, 1.75 * 0.5 ** 0.5], rtol=1e-6)
    none = FeatureConfig(protocol="per_user", min_entries_to_split=9, history_length=0)
    _, users, _, _, schema = features.build(entries, _media([1, 2, 3, 4]), none)
    assert "history" not in users and schema["dropped_features"]["history"] == "history_length is 0"
    assert "history" not in {f["name"] for f in schema["features"]}


def test_run_writes_complete_tables_atomically(tiny_db, tmp_path, monkeypatch):
    out = tmp_path / "features"
    summary = features.run(tiny_db, out, progress=False)
    tables = load(out)
    assert summary["entries"] == len(tables["interactions"])
    assert sum(summary[s]["entries"] for s in features.SPLITS) == summary["entries"]
    # Users as of the cutoff: those with an entry before it (of the world's 400).
    inter = tables["interactions"]
    n_users = inter.loc[inter["split"] == "train", "user_id"].nunique()
    assert len(tables["users"]) == summary["users"] == n_users and 350 < n_users < 400
    width = len(tables["schema"]["vocab"]["genres"])
    assert read_vector(tables["users"], "genre_share").shape == (n_users, width)
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


# ---------------------------------------------------------------------------------------
# Streaming: the stage reads the store in blocks of whole users (issue 21).

def _mixed_store(tiny_db, path):
    """The tiny world with every kind of list the split knows: timed lists, lists with
    a missing time (split at random), lists of several entries at one time (import
    stamps), and entries of titles without metadata (skipped)."""
    import shutil
    import sqlite3
    shutil.copy(tiny_db, path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE entries SET created_at = NULL, updated_at = NULL, "
                     "completed_at = NULL WHERE user_id % 7 = 0 AND media_id % 3 = 0")
        conn.execute("UPDATE entries SET created_at = 1700000000, updated_at = 1700000000, "
                     "completed_at = NULL WHERE user_id % 11 = 0")
        conn.execute("INSERT INTO entries (user_id, media_id, score, status, updated_at) "
                     "SELECT user_id, 9999999, 80, 'COMPLETED', MAX(updated_at) FROM entries "
                     "WHERE user_id % 5 = 0 GROUP BY user_id")
    return path


def _same_tables(a, b):
    for name in ("interactions.parquet", "users.parquet", "anime.parquet",
                 features.NEW_TITLES_FILE, features.NEW_ENTRIES_FILE):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    schemas = [json.loads((d / features.SCHEMA_FILE).read_text()) for d in (a, b)]
    for schema in schemas:
        schema.pop("timings")
    assert schemas[0] == schemas[1]
    return schemas[0]


@pytest.mark.parametrize("config", [FeatureConfig(), PER_USER], ids=["as_of", "per_user"])
def test_the_tables_are_the_same_byte_for_byte_whatever_the_block_size(tiny_db, tmp_path, config):
    db = _mixed_store(tiny_db, tmp_path / "mixed.db")
    features.run(db, tmp_path / "one", config, progress=False, block_entries=10**9)
    features.run(db, tmp_path / "many", config, progress=False, block_entries=300)
    schema = _same_tables(tmp_path / "one", tmp_path / "many")
    # The world has what it was built to have, so the blocks had work to do.
    assert schema["split"]["method"] == "mixed"
    import sqlite3
    with sqlite3.connect(db) as conn:
        unknown = conn.execute("SELECT COUNT(*) FROM entries WHERE media_id NOT IN "
                               "(SELECT media_id FROM media)").fetchone()[0]
    assert schema["counts"]["entries_without_media"] == unknown >= 80
    assert schema["counts"]["random_split_users"] > 50


def test_interactions_are_cut_into_the_row_groups_one_write_gives(tiny_db, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import store
    db = _mixed_store(tiny_db, tmp_path / "mixed.db")
    # pyarrow's default row group (what one to_parquet of the whole table gives) is the
    # stage's: a table one row longer has two.
    one_more = pa.table({"x": np.zeros(features.ROW_GROUP_ROWS + 1, np.int8)})
    pq.write_table(one_more, tmp_path / "x.parquet")
    assert [pq.ParquetFile(tmp_path / "x.parquet").metadata.row_group(i).num_rows
            for i in range(2)] == [features.ROW_GROUP_ROWS, 1]
    # Streamed in blocks of 300 entries with row groups of 1,000 rows, the file is the
    # one writing the whole in-memory table at once gives.
    monkeypatch.setattr(features, "ROW_GROUP_ROWS", 1_000)
    features.run(db, tmp_path / "f", progress=False, block_entries=300)
    conn = store.connect(db, readonly=True)
    inter = features.build(store.read_entries(conn), store.read_media(conn),
                           relations=store.read_relations(conn))[0]
    conn.close()
    inter.to_parquet(tmp_path / "whole.parquet", index=False, compression="zstd",
                     row_group_size=1_000)
    streamed = pq.ParquetFile(tmp_path / "f" / "interactions.parquet")
    assert streamed.num_row_groups == -(-len(inter) // 1_000) > 10
    assert (tmp_path / "f" / "interactions.parquet").read_bytes() == \
        (tmp_path / "whole.parquet").read_bytes()


@pytest.mark.parametrize("n", [1, 2, 3, 10, 997])
def test_the_streamed_quantile_is_numpys(n):
    rng = np.random.default_rng(n)
    values = np.sort(rng.integers(1_600_000_000, 1_800_000_000, n))
    values[: n // 3] = values[0]  # ties
    for q in (0.0, 0.1, 0.5, 0.8, 0.8000001, 0.999, 1.0, 1 / 3):
        got = features._linear_quantile(n, q, lambda i: values[i])
        assert got == np.quantile(values, q), (n, q)


def test_the_default_cutoff_is_the_quantile_of_the_timed_entries_to_the_day():
    # Timed users' entries spread over 400 days at random seconds; the cutoff is the
    # day of their 80% quantile (numpy's), whichever day and second the entries fall on.
    rng = np.random.default_rng(0)
    start = 1_700_000_000
    rows = pd.concat([_entries(u, list(start + rng.integers(0, 400 * DAY, 30)),
                               media=list(range(30))) for u in range(50)]
                     + [_entries(99, [None] * 30, media=list(range(30)))])  # untimed: left out
    times = rows.loc[rows["user_id"] != 99, "created_at"].to_numpy(np.int64)
    _, cutoff = assign_split(rows, FeatureConfig())
    assert cutoff["as_of"] == int(np.quantile(times, 0.8)) // DAY * DAY
    assert cutoff["last"] == times.max()


def test_new_titles_are_kept_apart_as_they_look_at_the_cutoff(tmp_path):
    # The as-of fixture: m9 is first listed on day 16 by user 2 (known before T), in the
    # test period. It is left out of the tables, and kept apart for the new-title slice:
    # its entry, and its row with its metadata and nothing counted (no training entry).
    from pipelines import store
    from pipelines.tables import FeatureTables
    day, t0, rows = _as_of_fixture()
    db = tmp_path / "s.db"
    conn = store.connect(db)
    store.upsert_media(conn, _media(list(range(1, 10)), genres=[["Action"]] * 8 + [["Drama"]]))
    store.upsert_entries(conn, rows)
    conn.commit()
    conn.close()
    features.run(db, tmp_path / "f", FeatureConfig(as_of=t0, horizon_days=5), progress=False)
    tables = FeatureTables.load(tmp_path / "f")
    entries = tables.new_entries
    assert entries[["user_id", "media_id", "time", "split"]].values.tolist() == [[2, 9, day(16), "test"]]
    assert entries["is_interaction"].tolist() == [True]
    assert entries["user_row"].tolist() == [tables.users["user_id"].tolist().index(2)]
    new = tables.new_anime
    assert new["media_id"].tolist() == [9] and new["genres"].map(list).tolist() == [["Drama"]]
    for name, value in features.COUNTED_TITLE_FEATURES.items():
        if name in tables.schema["dropped_features"]:   # favourites: no one has one here
            continue
        if np.isnan(value):
            assert new[name].isna().all(), name
        else:
            assert new[name].tolist() == [value], name
    assert list(new.columns) == [c for c in tables.anime.columns if c in new.columns]
    assert tables.new_anime_raw["genres"].shape == (1, tables.widths["genres"])
    assert tables.schema["split"]["new_titles"] == {"titles": 1, "validation": 0, "test": 1}
