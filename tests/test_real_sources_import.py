"""The Kaggle importers on the committed fixtures in the real dumps' exact layouts.

``tests/fixtures/`` (written by ``tests/fixtures/make_fixtures.py``) holds small files with
the exact headers and value formats of the two public MyAnimeList dumps. Every expected
number here is computed from the CSVs with pandas, independently of ``pipelines.kaggle``.
"""

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import kaggle, store

FIXTURES = Path(__file__).resolve().parent / "fixtures"
K2017, K2017_MIN10, K2020 = (FIXTURES / "kaggle2017", FIXTURES / "kaggle2017_min10",
                             FIXTURES / "kaggle2020")
WATCHING_STATUS = {1: "CURRENT", 2: "COMPLETED", 3: "PAUSED", 4: "DROPPED", 6: "PLANNING"}
SOURCE = {"Original": "ORIGINAL", "Manga": "MANGA", "4-koma manga": "MANGA",
          "Web manga": "MANGA", "Light novel": "LIGHT_NOVEL", "Visual novel": "VISUAL_NOVEL",
          "Novel": "NOVEL", "Web novel": "WEB_NOVEL", "Game": "VIDEO_GAME"}
FORMAT = {"TV": "TV", "Movie": "MOVIE", "OVA": "OVA", "ONA": "ONA", "Special": "SPECIAL",
          "Music": "MUSIC"}
ONLY_2020 = ["title_english", "season", "season_year", "studio", "source", "duration",
             "favourites"]


def _load(db):
    conn = store.connect(db, readonly=True)
    try:
        return store.read_entries(conn), store.read_media(conn), store.read_users(conn)
    finally:
        conn.close()


def _raw(path) -> pd.DataFrame:
    """A fixture CSV as strings, exactly as written ('' stays '', 'Unknown' stays)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _expected_ratings(ratings: pd.DataFrame, anime_ids: set[int], *, status_col=None):
    """The rows that should import and the skip counts by reason, from the CSV alone."""
    rows = ratings.copy()
    for column in rows.columns:
        rows[column] = rows[column].astype(int)
    skipped = {}
    ok = np.ones(len(rows), bool)
    if status_col is not None:
        bad_status = ~rows[status_col].isin(list(WATCHING_STATUS))
        skipped["unknown watching_status"] = int(bad_status.sum())
        ok &= ~bad_status
    unknown = ok & ~rows["anime_id"].isin(list(anime_ids))
    skipped["anime not in the store"] = int(unknown.sum())
    ok &= ~unknown
    kept = rows[ok]
    duplicated = kept.duplicated(["user_id", "anime_id"], keep="last")
    skipped["duplicate (user, anime) row (last kept)"] = int(duplicated.sum())
    return kept[~duplicated], {k: v for k, v in skipped.items() if v}


@pytest.mark.parametrize("fixture", [K2017, K2017_MIN10], ids=["kaggle2017", "min10"])
def test_kaggle2017_fixture_imports_exactly(tmp_path, fixture):
    anime, ratings = _raw(fixture / "anime.csv"), _raw(fixture / "rating.csv")
    assert list(anime.columns) == ["anime_id", "name", "genre", "type", "episodes",
                                   "rating", "members"]
    assert list(ratings.columns) == ["user_id", "anime_id", "rating"]
    anime_ids = set(anime["anime_id"].astype(int))
    kept, skipped = _expected_ratings(ratings, anime_ids)
    # The fixture's quirks are there (so the assertions below test something).
    assert skipped["anime not in the store"] > 0
    assert skipped["duplicate (user, anime) row (last kept)"] == 1
    minus_one = int((kept["rating"] == -1).sum())
    assert 0.15 < (ratings["rating"] == "-1").mean() < 0.3 and minus_one > 0

    summary = kaggle.run(tmp_path / "k.db", anime=fixture / "anime.csv",
                         ratings=fixture / "rating.csv", progress=False)
    assert summary["anime"] == {"format": "2017", "read": len(anime),
                                "imported": len(anime), "skipped": {}}
    assert summary["ratings"]["format"] == "rating"
    assert summary["ratings"]["read"] == len(ratings)
    assert summary["ratings"]["imported"] == len(kept)
    assert summary["ratings"]["users"] == kept["user_id"].nunique()
    assert summary["ratings"]["skipped"] == skipped

    entries, media, users = _load(tmp_path / "k.db")
    assert len(entries) == len(kept) and len(media) == len(anime)
    assert len(users) == kept["user_id"].nunique()
    got = entries.set_index(["user_id", "media_id"])
    want = kept.set_index(["user_id", "anime_id"])["rating"]
    assert sorted(got.index) == sorted(want.index)
    scores = got["score"].astype(int)
    assert (scores[want.index] == np.where(want > 0, want * 10, 0)).all()
    # -1 (watched, not rated) becomes an unscored COMPLETED entry; every row is COMPLETED.
    assert int((scores == 0).sum()) == minus_one
    assert set(entries["status"]) == {"COMPLETED"}
    assert entries["progress"].isna().all()
    assert entries[["created_at", "updated_at", "completed_at"]].isna().all().all()
    # A user who only ever gave -1 has entries but no mean score.
    per_user = kept.groupby("user_id")["rating"].max()
    never_scored = per_user[per_user == -1].index
    assert len(never_scored) >= 1
    assert users.set_index("user_id").loc[never_scored, "mean_score"].isna().all()

    m = media.set_index("media_id")
    a = anime.set_index(anime["anime_id"].astype(int))
    assert sorted(m.index) == sorted(a.index)
    assert (m["title_romaji"] == a.loc[m.index, "name"].map(html.unescape)).all()
    assert not m["title_romaji"].str.contains("&#|&quot;|&amp;").any()
    assert m.loc[9969, "title_romaji"] == "Gintama'"
    assert m.loc[6351, "title_romaji"] == '"Bungaku Shoujo" Movie'
    assert m.loc[2082, "title_romaji"] == "Tada, Kimi wo Aishiteru"
    assert m.loc[9941, "title_romaji"] == "Tiger & Bunny"
    unknown_eps = a["episodes"] == "Unknown"
    assert unknown_eps.any() and m.loc[a.index[unknown_eps], "episodes"].isna().all()
    assert (m.loc[a.index[~unknown_eps], "episodes"]
            == a.loc[~unknown_eps, "episodes"].astype(int)).all()
    no_rating = a["rating"] == ""
    assert no_rating.any() and m.loc[a.index[no_rating], "average_score"].isna().all()
    rated = a.index[~no_rating]
    assert (m.loc[rated, "average_score"]
            == (a.loc[rated, "rating"].astype(float) * 10).round().astype(int)).all()
    assert (m["popularity"] == a.loc[m.index, "members"].astype(int)).all()
    assert (m["format"].fillna("-") == a.loc[m.index, "type"].map(FORMAT).fillna("-")).all()
    assert (a["type"] == "").any()
    genres = a.loc[m.index, "genre"].map(lambda g: [x.strip() for x in g.split(",") if x.strip()])
    assert (m["genres"] == genres).all() and (a["genre"] == "").any()
    assert (m["is_adult"] == genres.map(lambda g: "Hentai" in g)).all() and m["is_adult"].any()
    assert (m["id_mal"] == m.index).all()
    # The 2017 dump has no studio, source, season, duration, English title or favourites.
    assert m[ONLY_2020].isna().all().all()

    if fixture == K2017_MIN10:
        assert entries.groupby("user_id").size().min() >= 12
    else:
        sizes = entries.groupby("user_id").size()
        assert sizes.min() < 10 and (sizes < 10).sum() >= 3


def _minutes(text: str):
    if text == "Unknown":
        return None
    hours = re.search(r"(\d+) hr\.", text)
    mins = re.search(r"(\d+) min\.", text)
    secs = re.search(r"(\d+) sec\.", text)
    total = (int(hours[1]) * 60 if hours else 0) + (int(mins[1]) if mins else 0) + bool(secs)
    return total or None


def _check_2020_media(media: pd.DataFrame, anime: pd.DataFrame) -> None:
    m = media.set_index("media_id")
    a = anime.set_index(anime["MAL_ID"].astype(int))
    assert sorted(m.index) == sorted(a.index)

    def known(column):
        return a[column].where(a[column] != "Unknown", None)

    assert (m["title_romaji"] == a["Name"]).all() and m.loc[9969, "title_romaji"] == "Gintama'"
    assert (m["title_english"].fillna("-") == known("English name").fillna("-")).all()
    studio = known("Studios").map(lambda s: s.split(",")[0].strip(), na_action="ignore")
    assert (m["studio"].fillna("-") == studio.fillna("-")).all()
    assert m.loc[5, "studio"] == "Bones" and m["studio"].isna().any()
    source = known("Source").map(SOURCE)
    assert (m["source"].fillna("-") == source.fillna("-")).all() and m["source"].isna().any()
    premiered = a["Premiered"].str.extract(r"^(Winter|Spring|Summer|Fall) (\d{4})$")
    assert (m["season"].fillna("-") == premiered[0].str.upper().fillna("-")).all()
    aired_year = a["Aired"].str.extract(r"(\d{4})", expand=False)
    year = premiered[1].fillna(aired_year)
    assert (m["season_year"].astype("Float64").fillna(-1)
            == year.astype(float).fillna(-1)).all()
    assert m.loc[1, ["season", "season_year"]].tolist() == ["SPRING", 1998]
    assert m.loc[5, "season"] is None and m.loc[5, "season_year"] == 2001
    duration = a["Duration"].map(_minutes)
    assert (m["duration"].astype("Float64").fillna(-1) == duration.astype(float).fillna(-1)).all()
    assert m.loc[5, "duration"] == 115 and m.loc[1, "duration"] == 24
    assert a["Duration"].str.contains("sec.").any() and a["Duration"].eq("Unknown").any()
    assert (m["favourites"] == a["Favorites"].astype(int)).all()
    assert (m["popularity"] == a["Members"].astype(int)).all()
    score = a["Score"].where(a["Score"] != "Unknown")
    assert (m["average_score"].astype("Float64").fillna(-1)
            == (score.astype(float) * 10).round().fillna(-1)).all()
    episodes = a["Episodes"].where(a["Episodes"] != "Unknown")
    assert (m["episodes"].astype("Float64").fillna(-1) == episodes.astype(float).fillna(-1)).all()
    assert (m["format"].fillna("-") == a["Type"].map(FORMAT).fillna("-")).all()
    assert m["format"].isna().sum() == (a["Type"] == "Unknown").sum() == 1
    genres = a["Genres"].map(lambda g: [] if g == "Unknown" else [x.strip() for x in g.split(",")])
    assert (m["genres"] == genres).all()
    adult = genres.map(lambda g: "Hentai" in g) | a["Rating"].str.startswith("Rx")
    assert (m["is_adult"] == adult).all() and m["is_adult"].any()


def test_kaggle2020_animelist_fixture_imports_exactly(tmp_path):
    anime, ratings = _raw(K2020 / "anime.csv"), _raw(K2020 / "animelist.csv")
    assert len(anime.columns) == 35 and list(anime.columns[:4]) == ["MAL_ID", "Name", "Score",
                                                                    "Genres"]
    assert list(anime.columns[-3:]) == ["Score-3", "Score-2", "Score-1"]
    assert list(ratings.columns) == ["user_id", "anime_id", "score", "watching_status",
                                     "watched_episodes"]
    kept, skipped = _expected_ratings(ratings, set(anime["MAL_ID"].astype(int)),
                                      status_col="watching_status")
    assert skipped["unknown watching_status"] >= 3 and skipped["anime not in the store"] >= 1

    summary = kaggle.run(tmp_path / "k.db", anime=K2020 / "anime.csv",
                         ratings=K2020 / "animelist.csv", progress=False)
    assert summary["anime"] == {"format": "2020", "read": len(anime),
                                "imported": len(anime), "skipped": {}}
    assert summary["ratings"]["format"] == "animelist"
    assert summary["ratings"]["read"] == len(ratings)
    assert summary["ratings"]["imported"] == len(kept)
    assert summary["ratings"]["users"] == kept["user_id"].nunique()
    assert summary["ratings"]["skipped"] == skipped

    entries, media, users = _load(tmp_path / "k.db")
    assert len(entries) == len(kept) and len(users) == kept["user_id"].nunique()
    got = entries.set_index(["user_id", "media_id"]).sort_index()
    want = kept.set_index(["user_id", "anime_id"]).sort_index()
    assert list(got.index) == list(want.index)
    assert (got["status"].astype(str).to_numpy()
            == want["watching_status"].map(WATCHING_STATUS).to_numpy()).all()
    assert set(got["status"]) == set(WATCHING_STATUS.values())
    assert (got["score"].to_numpy() == want["score"].to_numpy() * 10).all()
    assert (got["score"] == 0).sum() == (want["score"] == 0).sum() > 0
    assert (got["progress"].to_numpy() == want["watched_episodes"].to_numpy()).all()
    assert entries[["created_at", "updated_at", "completed_at"]].isna().all().all()
    not_planning = want[want["watching_status"] != 6].groupby(level="user_id").size()
    u = users.set_index("user_id")
    assert (u.loc[not_planning.index, "anime_count"] == not_planning).all()
    _check_2020_media(media, anime)


def test_kaggle2020_rating_complete_fixture_imports_exactly(tmp_path):
    anime, ratings = _raw(K2020 / "anime.csv"), _raw(K2020 / "rating_complete.csv")
    assert list(ratings.columns) == ["user_id", "anime_id", "rating"]
    assert ratings["rating"].astype(int).between(1, 10).all()
    kept, skipped = _expected_ratings(ratings, set(anime["MAL_ID"].astype(int)))

    summary = kaggle.run(tmp_path / "k.db", anime=K2020 / "anime.csv",
                         ratings=K2020 / "rating_complete.csv", progress=False)
    assert summary["anime"]["format"] == "2020" and summary["anime"]["imported"] == len(anime)
    assert summary["ratings"]["format"] == "rating"
    assert (summary["ratings"]["read"], summary["ratings"]["imported"]) == (len(ratings),
                                                                            len(kept))
    assert summary["ratings"]["skipped"] == skipped

    entries, media, _ = _load(tmp_path / "k.db")
    got = entries.set_index(["user_id", "media_id"]).sort_index()
    want = kept.set_index(["user_id", "anime_id"]).sort_index()
    assert list(got.index) == list(want.index)
    assert (got["score"].to_numpy() == want["rating"].to_numpy() * 10).all()
    assert set(got["status"]) == {"COMPLETED"} and got["progress"].isna().all()
    _check_2020_media(media, anime)


def test_fixtures_stay_small():
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 250_000
    for csv_file in FIXTURES.rglob("*.csv"):
        assert csv_file.stat().st_size < 60_000, csv_file
