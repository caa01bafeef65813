"""Raw store: schema, idempotent upserts, NULL round trips, statistics, clear errors."""

import math

import numpy as np
import pandas as pd
import pytest

from pipelines import store
from pipelines.errors import StoreError


def _entries(**overrides):
    rows = {
        "user_id": [1, 1, 1, 1, 2],
        "media_id": [10, 11, 12, 13, 10],
        "score": [80, 60, 0, 0, 90],
        "status": ["COMPLETED", "DROPPED", "PLANNING", "CURRENT", "COMPLETED"],
        "progress": [12, 3, 0, np.nan, 12],
        "repeat": [0, 0, 0, 0, 1],
        "is_favourite": [1, 0, 0, 0, 0],
        "created_at": [100, 200, 300, np.nan, 100],
        "updated_at": [150, 250, 300, 400, 100],
        "completed_at": [150, np.nan, np.nan, np.nan, 100],
    }
    rows.update(overrides)
    return pd.DataFrame(rows)


def _media():
    return pd.DataFrame({
        "media_id": [10, 11, 12, 13], "id_mal": [1, 2, None, 4],
        "title_romaji": ["A", "B", "C", "D"], "title_english": [None, "Bee", None, None],
        "format": ["TV", "MOVIE", "OVA", "TV"], "status": ["FINISHED"] * 4,
        "episodes": [12, 1, None, 24], "duration": [24, 100, 30, None],
        "source": ["MANGA"] * 4, "season": ["FALL"] * 4, "season_year": [2020] * 4,
        "average_score": [70, 80, None, 60], "mean_score": [71, 81, None, 61],
        "popularity": [1000, 50, 10, 5], "favourites": [10, 1, 0, 0],
        "is_adult": [0, 0, 1, 0], "country": ["JP"] * 4, "studio": ["S", "T", None, "S"],
        "genres": [["Action"], ["Drama", "Romance"], [], ["Action", "Comedy"]],
        "tags": [[{"name": "Gore", "rank": 80}], [], None, []],
        "description": [None] * 4, "fetched_at": [None] * 4,
    })


def test_connect_creates_schema_in_wal_mode(tmp_path):
    conn = store.connect(tmp_path / "raw.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "media", "entries", "crawl_state", "crawl_cursor", "meta"} <= tables


def test_upserts_are_idempotent_and_replace_by_key(tmp_path):
    conn = store.connect(tmp_path / "raw.db")
    store.upsert_media(conn, _media())
    store.upsert_entries(conn, _entries())
    first = store.fingerprint(conn)
    store.upsert_media(conn, _media())
    store.upsert_entries(conn, _entries())
    assert store.fingerprint(conn) == first
    assert store.counts(conn) == {"users": 0, "media": 4, "entries": 5}

    store.upsert_entries(conn, _entries().iloc[[0]].assign(score=95))
    entries = store.read_entries(conn)
    assert len(entries) == 5
    assert entries.loc[(entries.user_id == 1) & (entries.media_id == 10), "score"].item() == 95


def test_nulls_round_trip_as_missing_not_numbers(tmp_path):
    conn = store.connect(tmp_path / "raw.db")
    store.upsert_media(conn, _media())
    store.upsert_entries(conn, _entries())
    entries = store.read_entries(conn).set_index(["user_id", "media_id"])
    assert entries.loc[(1, 13), "progress"] is pd.NA
    assert entries.loc[(1, 13), "created_at"] is pd.NA
    assert entries.loc[(1, 11), "completed_at"] is pd.NA
    assert entries.loc[(1, 10), "completed_at"] == 150
    media = store.read_media(conn).set_index("media_id")
    assert media.loc[12, "episodes"] is pd.NA and media.loc[12, "id_mal"] is pd.NA
    assert media.loc[11, "genres"] == ["Drama", "Romance"]
    assert media.loc[10, "tags"] == [{"name": "Gore", "rank": 80}]
    assert media.loc[12, "tags"] == []
    assert conn.execute("SELECT tags FROM media WHERE media_id=12").fetchone()[0] is None


def test_entries_reject_invalid_status_and_score(tmp_path):
    conn = store.connect(tmp_path / "raw.db")
    with pytest.raises(Exception, match="CHECK"):
        store.upsert_entries(conn, _entries(status=["WATCHING"] * 5))
    with pytest.raises(Exception, match="CHECK"):
        store.upsert_entries(conn, _entries(score=[101, 0, 0, 0, 0]))


def test_refresh_user_stats_matches_hand_computed_values(tmp_path):
    conn = store.connect(tmp_path / "raw.db")
    store.upsert_media(conn, _media())
    store.upsert_entries(conn, _entries())
    assert store.refresh_user_stats(conn) == 2
    users = store.read_users(conn).set_index("user_id")
    # User 1: not-PLANNING entries = 3; scored = 80, 60 -> mean 70, population std 10;
    # episodes = 12 + 3 + 0 (+ NULL) = 15; minutes = 12*24 + 3*100 + 0*30 = 588.
    assert users.loc[1, "anime_count"] == 3
    assert users.loc[1, "mean_score"] == 70.0
    assert math.isclose(users.loc[1, "std_score"], 10.0)
    assert users.loc[1, "episodes_watched"] == 15
    assert users.loc[1, "minutes_watched"] == 588
    assert users.loc[2, "mean_score"] == 90.0 and users.loc[2, "std_score"] == 0.0

    # Only NULL-stat users are refreshed by default; named users are always recomputed.
    store.upsert_entries(conn, _entries().iloc[[4]].assign(score=50))
    assert store.refresh_user_stats(conn) == 0
    assert store.refresh_user_stats(conn, [2]) == 1
    assert store.read_users(conn).set_index("user_id").loc[2, "mean_score"] == 50.0


def test_transaction_rolls_back_on_error(tmp_path):
    conn = store.connect(tmp_path / "raw.db")
    with pytest.raises(RuntimeError):
        with store.transaction(conn):
            store.upsert_entries(conn, _entries())
            raise RuntimeError("crash mid-write")
    assert store.counts(conn)["entries"] == 0


def test_errors_name_the_bad_store(tmp_path):
    with pytest.raises(StoreError, match="No raw store at .*missing.db.*synth"):
        store.connect(tmp_path / "missing.db", readonly=True)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not an anirank raw store"):
        store.connect(junk)
    conn = store.connect(tmp_path / "old.db")
    conn.execute("UPDATE meta SET value='0' WHERE key='schema_version'")
    conn.close()
    with pytest.raises(StoreError, match="schema version 0"):
        store.connect(tmp_path / "old.db")


def test_crawl_state_queue_and_cursor(tmp_path):
    conn = store.connect(tmp_path / "raw.db")
    store.enqueue(conn, "lists", [5, 3, 9])
    store.set_state(conn, "lists", 3, "done")
    store.set_state(conn, "lists", 9, "failed", "HTTP 500")
    store.set_state(conn, "lists", 9, "failed", "timeout")
    store.enqueue(conn, "lists", [9, 11])  # known items keep their state
    assert store.pending(conn, "lists") == [5, 9, 11]
    assert store.crawl_items(conn, "lists", ["done", "skipped"]) == [3]
    assert store.pending(conn, "media") == []
    state = conn.execute("SELECT state, message, attempts FROM crawl_state "
                         "WHERE kind='lists' AND item_id=9").fetchone()
    assert state == ("failed", "timeout", 2)
    assert store.get_cursor(conn, "users_page") is None
    store.set_cursor(conn, "users_page", 4)
    store.set_cursor(conn, "users_page", 5)
    assert store.get_cursor(conn, "users_page") == "5"


def test_replace_user_entries_and_their_times(tmp_path):
    conn = store.connect(tmp_path / "raw.db")
    store.upsert_media(conn, _media().iloc[:2])
    store.upsert_entries(conn, _entries())
    assert store.latest_entry_update(conn, 1) == 400 and store.latest_entry_update(conn, 7) is None
    assert store.unknown_media(conn) == [12, 13]
    np.testing.assert_array_equal(store.media_ids(conn), [10, 11])
    with store.transaction(conn):
        store.replace_user_entries(conn, 1, _entries().iloc[[1]].assign(is_favourite=1))
    entries = store.read_entries(conn)
    assert entries[["user_id", "media_id", "is_favourite"]].values.tolist() == [
        [1, 11, True], [2, 10, False]]
    assert store.latest_entry_update(conn, 1) == 250
    assert store.unknown_media(conn) == []


def test_sources_never_mix_and_describe_themselves(tmp_path):
    conn = store.connect(tmp_path / "raw.db")
    assert store.source(conn) is None
    assert store.describe_source(conn)["kind"] == "unknown"
    store.claim_source(conn, "kaggle", "raw.db")
    store.claim_source(conn, "kaggle", "raw.db")  # the same source again: fine
    store.note_kaggle_import(conn, dump="2017")
    store.note_kaggle_import(conn, ratings_file="rating.csv")
    assert store.source(conn) == "kaggle"
    assert store.describe_source(conn) == {
        "kind": "kaggle", "dump": "2017", "ratings_file": "rating.csv",
        "description": 'the Kaggle "Anime Recommendations Database" (2017) dump (rating.csv)'}
    with pytest.raises(StoreError, match="already holds kaggle data; anilist data goes"):
        store.claim_source(conn, "anilist", "raw.db")

    synthetic = store.connect(tmp_path / "synth.db")
    store.claim_source(synthetic, "synth", "synth.db", {"users": 5, "anime": 1200, "seed": 3})
    assert store.source(synthetic) == 'synth:{"users": 5, "anime": 1200, "seed": 3}'
    assert store.describe_source(synthetic)["description"] == (
        "the anirank synthetic AniList-shaped world (seed 3, 5 users, 1,200 titles)")
    with pytest.raises(StoreError, match="already holds a synthetic world"):
        store.claim_source(synthetic, "anilist", "synth.db")
    # Stores of older versions recorded the config's Python repr, no longer read.
    synthetic.execute("UPDATE meta SET value=? WHERE key='source'",
                      ("synth:{'users': 5, 'anime': 1200, 'seed': 3}",))
    with pytest.raises(StoreError, match="older anirank; regenerate it"):
        store.describe_source(synthetic)


def test_relations_round_trip_replace_by_key_and_reject_unknown_types(tmp_path):
    conn = store.connect(tmp_path / "raw.db")
    assert store.read_relations(conn).empty
    relations = pd.DataFrame({"media_id": [11, 10, 10], "related_id": [10, 11, 12],
                              "relation_type": ["PREQUEL", "SEQUEL", "SIDE_STORY"]})
    assert store.upsert_relations(conn, relations) == 3
    store.upsert_relations(conn, relations.iloc[[2]].assign(relation_type="SPIN_OFF"))
    got = store.read_relations(conn)
    assert got.columns.tolist() == list(store.RELATION_COLUMNS)
    assert got.values.tolist() == [[10, 11, "SEQUEL"], [10, 12, "SPIN_OFF"], [11, 10, "PREQUEL"]]
    with pytest.raises(Exception, match="CHECK constraint"):
        store.upsert_relations(conn, relations.iloc[[0]].assign(relation_type="COUSIN"))
    conn.close()
    # A store written before the table existed, opened read-only, has no relations.
    old = tmp_path / "old.db"
    conn = store.connect(old)
    conn.execute("DROP TABLE media_relations")
    conn.close()
    conn = store.connect(old, readonly=True)
    assert store.read_relations(conn).empty
    conn.close()


def test_newest_entry_time_reads_times_as_the_feature_stage_does(tmp_path):
    conn = store.connect(tmp_path / "raw.db")
    assert store.newest_entry_time(conn) is None, "no entries: no time"
    # created_at 500 on the entry whose updated_at is 400: the first non-NULL counts.
    store.upsert_entries(conn, _entries(created_at=[100, 200, 300, 500, 100]))
    assert store.newest_entry_time(conn) == 400
    assert store.newest_entry_time(conn, ["created_at"]) == 500
    assert store.newest_entry_time(conn, ["completed_at", "created_at"]) == 500
    assert store.newest_entry_time(conn, ["completed_at"]) == 150
    with pytest.raises(StoreError, match="time columns"):
        store.newest_entry_time(conn, ["score"])


@pytest.mark.parametrize("fetch", [store.FETCH, 997])
@pytest.mark.parametrize("block", [1, 7, 300, 10**6])
def test_entries_come_in_blocks_of_whole_users_equal_to_reading_them_at_once(tiny_db, block,
                                                                            fetch, monkeypatch):
    """Whatever the block and the fetch (997 rows: users run across fetches), the blocks
    hold whole users, at least ``block`` rows each but the last, and join to the table."""
    monkeypatch.setattr(store, "FETCH", fetch)
    conn = store.connect(tiny_db, readonly=True)
    whole = store.read_entries(conn)
    blocks = list(store.iter_entries(conn, block))
    conn.close()
    users = [set(b["user_id"]) for b in blocks]
    assert sum(len(u) for u in users) == len(set().union(*users))  # no user in two blocks
    assert all(len(b) >= block for b in blocks[:-1])
    if block == 1:   # a block per user
        assert [len(u) for u in users] == [1] * whole["user_id"].nunique()
    joined = pd.concat(blocks, ignore_index=True)
    assert joined.dtypes.drop("status").equals(whole.dtypes.drop("status"))
    pd.testing.assert_frame_equal(joined.astype({"status": str}), whole.astype({"status": str}))
    if block == 10**6:
        assert len(blocks) == 1


def test_an_empty_store_gives_no_blocks(tmp_path):
    conn = store.connect(tmp_path / "empty.db")
    assert list(store.iter_entries(conn, 5)) == []
    conn.close()


def test_real_columns_keep_their_fractions(tmp_path):
    """The store's REAL columns are exactly the ones written as floats (any other float
    column is an integer one pandas widened for NaN), and a day's predicted scores and
    baselines come back with their fractions."""
    conn = store.connect(tmp_path / "s.db")
    store.create_future_tables(conn)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    declared = {row[1] for t in tables for row in conn.execute(f"PRAGMA table_info({t})")
                if row[2] == "REAL"}
    assert declared == store._REAL_COLUMNS
    predictions = pd.DataFrame({"user_id": [1, 2], "media_id": [10, 10],
                                "predicted_score": [96.98, np.nan], "served_rank": [3, np.nan],
                                "popularity_rank": [np.nan, 7], "user_mean": [71.25, 60.5],
                                "title_mean": [np.nan, 80.75]})
    outcomes = pd.DataFrame(columns=[c for c in store.DAILY_OUTCOME_COLUMNS if c != "day"])
    store.replace_day(conn, "rev", "2026-11-01", outcomes, predictions, {})
    back = store.read_daily(conn, "predictions", "rev")
    np.testing.assert_allclose(back["predicted_score"].astype(float), [96.98, np.nan])
    np.testing.assert_allclose(back["user_mean"].astype(float), [71.25, 60.5])
    np.testing.assert_allclose(back["title_mean"].astype(float), [np.nan, 80.75])
    assert back["served_rank"].tolist()[0] == 3
