"""Kaggle importers on small hand-made CSVs of both formats, bad rows included."""

import pandas as pd
import pytest

from pipelines import kaggle, store
from pipelines.errors import InputError

ANIME_2017 = """\
anime_id,name,genre,type,episodes,rating,members
32281,Kimi no Na wa.,"Drama, Romance, School, Supernatural",Movie,1,9.37,200630
5114,Fullmetal Alchemist: Brotherhood,"Action, Adventure, Drama, Fantasy, Magic, Military, Shounen",TV,64,9.26,793665
28977,Gintama&#039;,"Action, Comedy, Historical, Parody, Samurai, Sci-Fi, Shounen",TV,51,9.25,114262
abc,Broken id,Action,TV,12,7.0,100
9999,Some OVA,Hentai,OVA,Unknown,,50
"""
# 12 data lines: 6 good; 1 non-numeric id, 2 out of range (11 and 0), 1 unknown anime,
# 1 line with an extra field, 1 duplicate (user 1, 5114: the later row wins).
RATING_2017 = """\
user_id,anime_id,rating
1,32281,10
1,5114,-1
1,28977,8
2,5114,9
2,424242,7
2,32281,11
x,5114,7
3,9999,0
3,28977,7,extra
3,5114,7
3,9999,6
1,5114,4
"""

ANIME_2020 = """\
MAL_ID,Name,Score,Genres,English name,Japanese name,Type,Episodes,Aired,Premiered,Producers,Licensors,Studios,Source,Duration,Rating,Ranked,Popularity,Members,Favorites
1,Cowboy Bebop,8.78,"Action, Adventure, Comedy, Drama, Sci-Fi, Space",Cowboy Bebop,カウボーイビバップ,TV,26,"Apr 3, 1998 to Apr 24, 1999",Spring 1998,Bandai Visual,Funimation,Sunrise,Original,24 min. per ep.,R - 17+ (violence & profanity),28.0,39,1251960,61971
5,Cowboy Bebop: Tengoku no Tobira,8.39,"Action, Drama, Mystery, Sci-Fi, Space",Cowboy Bebop:The Movie,,Movie,1,"Sep 1, 2001",Unknown,Sunrise,Sony,"Bones, Sunrise",Original,1 hr. 55 min.,R - 17+ (violence & profanity),159.0,518,273145,1174
6,Trigun,8.24,"Action, Sci-Fi, Adventure",Trigun,,TV,26,"Apr 1, 1998 to Sep 30, 1998",Spring 1998,Victor,Funimation,Madhouse,Manga,24 min. per ep.,PG-13 - Teens 13 or older,266.0,201,558913,12944
7,Some Rx Title,Unknown,Hentai,Unknown,,OVA,Unknown,"Jan 1, 2005",Unknown,,,Unknown,Unknown,Unknown,Rx - Hentai,Unknown,9000,120,0
"""
# 10 data lines: 5 good; 1 status 5 (unknown), 1 score 12, 1 unknown anime, 1 bad id,
# 1 missing score.
ANIMELIST_2020 = """\
user_id,anime_id,score,watching_status,watched_episodes
0,1,9,2,26
0,5,0,1,0
0,6,7,4,5
1,1,10,2,26
1,7,0,6,0
1,6,8,5,3
2,1,12,2,26
2,999,8,2,1
2.5,1,8,2,26
3,1,,2,26
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_2017_format_exact_counts_and_mapping(tmp_path):
    db = tmp_path / "k.db"
    summary = kaggle.run(db, anime=_write(tmp_path, "anime.csv", ANIME_2017),
                         ratings=_write(tmp_path, "rating.csv", RATING_2017), progress=False)
    assert summary["anime"] == {"format": "2017", "read": 5, "imported": 4,
                                "skipped": {"non-numeric anime id": 1}}
    assert summary["ratings"]["read"] == 12
    assert summary["ratings"]["imported"] == 6
    assert summary["ratings"]["skipped"] == {
        "malformed line": 1, "non-numeric user or anime id": 1, "score out of range": 2,
        "anime not in the store": 1, "duplicate (user, anime) row (last kept)": 1}

    conn = store.connect(db, readonly=True)
    entries = store.read_entries(conn).set_index(["user_id", "media_id"])
    assert len(entries) == 6
    assert entries.loc[(1, 32281), "score"] == 100
    assert entries.loc[(1, 5114), "score"] == 40  # the later duplicate row wins
    assert entries.loc[(3, 9999), "score"] == 60
    assert set(entries["status"]) == {"COMPLETED"}
    assert entries[["created_at", "updated_at", "completed_at"]].isna().all().all()
    media = store.read_media(conn).set_index("media_id")
    assert media.loc[28977, "title_romaji"] == "Gintama'"  # HTML entity decoded
    assert media.loc[32281, "format"] == "MOVIE" and media.loc[32281, "average_score"] == 94
    assert media.loc[9999, "episodes"] is pd.NA and media.loc[9999, "is_adult"]
    assert media.loc[5114, "genres"][:2] == ["Action", "Adventure"]
    assert media.loc[5114, "id_mal"] == 5114 and media.loc[5114, "popularity"] == 793665
    users = store.read_users(conn).set_index("user_id")
    # User 1: 100, 40 (the duplicate that won) and 80.
    assert users.loc[1, "anime_count"] == 3 and users.loc[1, "mean_score"] == pytest.approx(220 / 3)


def test_2020_format_exact_counts_and_mapping(tmp_path):
    db = tmp_path / "k.db"
    summary = kaggle.run(db, anime=_write(tmp_path, "anime.csv", ANIME_2020),
                         ratings=_write(tmp_path, "animelist.csv", ANIMELIST_2020),
                         progress=False)
    assert summary["anime"]["format"] == "2020" and summary["anime"]["imported"] == 4
    assert summary["ratings"]["format"] == "animelist"
    assert (summary["ratings"]["read"], summary["ratings"]["imported"]) == (10, 5)
    assert summary["ratings"]["skipped"] == {
        "unknown watching_status": 1, "score out of range": 1, "anime not in the store": 1,
        "non-numeric user or anime id": 1, "missing score": 1}

    conn = store.connect(db, readonly=True)
    e = store.read_entries(conn).set_index(["user_id", "media_id"])
    assert e.loc[(0, 1), ["score", "status", "progress"]].tolist() == [90, "COMPLETED", 26]
    assert e.loc[(0, 5), ["score", "status"]].tolist() == [0, "CURRENT"]
    assert e.loc[(0, 6), ["score", "status", "progress"]].tolist() == [70, "DROPPED", 5]
    assert e.loc[(1, 7), "status"] == "PLANNING"
    m = store.read_media(conn).set_index("media_id")
    assert m.loc[1, ["season", "season_year", "studio", "source", "duration"]].tolist() == [
        "SPRING", 1998, "Sunrise", "ORIGINAL", 24]
    assert m.loc[5, ["season", "season_year", "studio", "duration", "title_english"]].tolist() == [
        None, 2001, "Bones", 115, "Cowboy Bebop:The Movie"]
    assert m.loc[6, "source"] == "MANGA" and m.loc[1, "favourites"] == 61971
    assert m.loc[7, "average_score"] is pd.NA and m.loc[7, "is_adult"]
    assert m.loc[7, "studio"] is None and m.loc[7, "episodes"] is pd.NA
    users = store.read_users(conn).set_index("user_id")
    # User 0: 3 non-planning entries, scores 90 and 70, 26 + 0 + 5 episodes,
    # minutes 26*24 + 0*115 + 5*24 = 744.
    assert users.loc[0, ["anime_count", "mean_score", "episodes_watched",
                         "minutes_watched"]].tolist() == [3, 80.0, 31, 744]


def test_reimport_is_idempotent(tmp_path):
    db = tmp_path / "k.db"
    anime = _write(tmp_path, "anime.csv", ANIME_2020)
    ratings = _write(tmp_path, "animelist.csv", ANIMELIST_2020)
    first = kaggle.run(db, anime=anime, ratings=ratings, progress=False)
    conn = store.connect(db, readonly=True)
    before = (store.fingerprint(conn), store.counts(conn))
    conn.close()
    second = kaggle.run(db, anime=anime, ratings=ratings, progress=False)
    conn = store.connect(db, readonly=True)
    assert (store.fingerprint(conn), store.counts(conn)) == before
    first.pop("seconds"), second.pop("seconds")
    assert first == second


def test_wrong_columns_name_what_is_missing(tmp_path):
    bad = _write(tmp_path, "anime.csv", "anime_id,name,genre\n1,A,Action\n")
    with pytest.raises(InputError, match=r"needs \['type', 'episodes', 'rating', 'members'\]"):
        kaggle.run(tmp_path / "k.db", anime=bad, progress=False)
    anime = _write(tmp_path, "anime2.csv", ANIME_2017)
    ratings = _write(tmp_path, "r.csv", "user,anime,stars\n1,2,3\n")
    with pytest.raises(InputError, match="not a Kaggle ratings file.*user_id"):
        kaggle.run(tmp_path / "k.db", anime=anime, ratings=ratings, progress=False)
    with pytest.raises(InputError, match="does not exist"):
        kaggle.run(tmp_path / "k.db", anime=tmp_path / "nope.csv", progress=False)


def test_ratings_before_any_anime_is_a_clear_error(tmp_path):
    conn = store.connect(tmp_path / "k.db")
    with pytest.raises(InputError, match="import the anime file first"):
        kaggle.import_ratings(conn, _write(tmp_path, "rating.csv", RATING_2017), progress=False)


def test_ratings_stream_in_bounded_blocks(tmp_path, monkeypatch):
    """Many blocks give the same store as one: nothing is lost at block boundaries."""
    anime = _write(tmp_path, "anime.csv", ANIME_2017)
    good = "user_id,anime_id,rating\n" + "".join(
        f"{u},{a},{(u + a) % 10 + 1}\n" for u in range(300) for a in (32281, 5114, 28977))
    ratings = _write(tmp_path, "rating.csv", good)
    kaggle.run(tmp_path / "one.db", anime=anime, ratings=ratings, progress=False)
    monkeypatch.setattr(kaggle, "BLOCK_BYTES", 256)
    summary = kaggle.run(tmp_path / "many.db", anime=anime, ratings=ratings, progress=False)
    assert summary["ratings"]["imported"] == 900 and summary["ratings"]["skipped"] == {}
    fingerprints = []
    for name in ("one.db", "many.db"):
        conn = store.connect(tmp_path / name, readonly=True)
        fingerprints.append(store.fingerprint(conn))
    assert fingerprints[0] == fingerprints[1]


def test_the_store_records_which_dump_filled_it(tmp_path):
    anime = _write(tmp_path, "anime.csv", ANIME_2020)
    kaggle.run(tmp_path / "a.db", anime=anime, progress=False)
    kaggle.run(tmp_path / "b.db", anime=anime, progress=False,
               ratings=_write(tmp_path, "animelist.csv", ANIMELIST_2020))
    described = {}
    for name in ("a", "b"):
        conn = store.connect(tmp_path / f"{name}.db", readonly=True)
        assert store.source(conn) == "kaggle"
        described[name] = store.describe_source(conn)
        conn.close()
    dump = 'the Kaggle "Anime Recommendation Database 2020" dump'
    assert described["a"] == {"kind": "kaggle", "dump": "2020", "ratings_file": None,
                              "description": dump}
    assert described["b"]["description"] == f"{dump} (animelist.csv)"
