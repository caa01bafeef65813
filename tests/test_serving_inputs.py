"""Every public call of Recommender (and the batch job over it) checks its arguments:
a bad one raises InputError naming the argument, the value received and what is allowed,
instead of a numpy/pandas error, a silent wrong answer or an out-of-memory kill."""

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import InputError, NotInCatalog
from serving import Filters, Recommender, batch


@pytest.fixture(scope="module")
def rec(tiny_ranked):
    return Recommender.from_pretrained(str(tiny_ranked[0]))


@pytest.fixture(scope="module")
def users(rec):
    return rec.users["user_id"].to_numpy()[:3]


@pytest.mark.parametrize("k", [-3, 0, 2.5, "10", True])
def test_k_must_be_a_positive_int(rec, users, k):
    with pytest.raises(InputError, match=rf"`k` must be an int.*Received: k={k!r}"):
        rec.recommend(users, k=k)
    with pytest.raises(InputError, match=rf"`k` must be an int.*Received: k={k!r}"):
        rec.recommend_for_history([(int(rec.anime["media_id"].iloc[0]), 80)], k=k)
    with pytest.raises(InputError, match=r"`candidates` must be an int.*Received: candidates="):
        rec.recommend(users, k=5, candidates=k)
    out = rec.recommend(users, k=np.int64(3), candidates=np.int32(20))  # numpy ints are ints
    assert (out.groupby("user_id").size() == 3).all()


def test_k_is_capped_at_the_catalog_size(rec, users, monkeypatch):
    n = len(rec.anime)
    search = rec.index.search

    def spy(queries, k=None, **kwargs):
        assert k <= n, f"searched with k={k} > catalog size {n}"
        return search(queries, k, **kwargs)

    monkeypatch.setattr(rec.index, "search", spy)
    ranked = Filters(entry_points=False, per_franchise=None)   # every allowed title, no franchise rule
    out = rec.recommend(users[:1], k=10**9, filters=ranked)
    allowed = set(rec.anime["media_id"][Filters().allowed(rec.anime)])
    expected = allowed - set(rec._seen[rec._user_row.get_loc(users[0])].tolist())
    assert set(out["anime_id"]) == expected and out["rank"].tolist() == list(range(1, len(expected) + 1))
    assert len(rec.recommend(users[:1], k=10**9, candidates=10**12, filters=ranked)) == len(expected)
    assert len(rec.popular([1], k=10**9)) == len(allowed)
    assert len(rec.similar_anime(int(rec.anime["media_id"].iloc[0]), k=10**9)) == n - 1
    history = rec.recommend_for_history([(int(rec.anime["media_id"].iloc[0]), 80)], k=10**9,
                                        filters=ranked)
    assert len(history) == len(allowed - {int(rec.anime["media_id"].iloc[0])})


def test_history_unknown_titles_warn_and_none_matching_is_an_error(rec):
    known = int(rec.anime["media_id"].iloc[0])
    with pytest.warns(UserWarning, match=r"1 history entries match no .*'Cowboy Bebop'"):
        out = rec.recommend_for_history([("Cowboy Bebop", 90), (known, None)], k=5)
    assert out.attrs["unknown"] == ["Cowboy Bebop"] and len(out) == 5
    with pytest.raises(NotInCatalog, match=r"None of the 2 entries matches.*'Cowboy Bebop', 99999999"
                                           r".*rec\.anime\[\['media_id', 'title'"):
        rec.recommend_for_history([("Cowboy Bebop", 90), (99999999, None)])
    # Times as unix seconds or ISO dates are the same times.
    first, second = (int(m) for m in rec.anime["media_id"].iloc[:2])
    by_seconds = rec.recommend_for_history([(first, 90, 1_700_000_000), (second, None, 0)], k=5)
    by_date = rec.recommend_for_history([(first, 90, "2023-11-14T22:13:20"),
                                         (second, None, "1970-01-01")], k=5)
    pd.testing.assert_frame_equal(by_seconds, by_date)
    empty = rec.recommend_for_history([], k=5)  # documented: the popularity fallback
    assert len(empty) == 5 and (empty["source"] == "popularity").all()


@pytest.mark.parametrize("entries, shown", [
    ([("Cowboy Bebop",)], r"entries\[0\]`.*Received: \('Cowboy Bebop',\)"),
    ([(38, 90), (38, 150)], r"entries\[1\]`.*0 to 100.*Received: \(38, 150\)"),
    ([(38, "90")], r"entries\[0\]`.*Received: \(38, '90'\)"),
    ([(2.5, 90)], r"entries\[0\]`.*Received: \(2.5, 90\)"),
    (["Cowboy Bebop"], r"entries\[0\]`.*Received: 'Cowboy Bebop'"),
    ([(38, 90, 1.5)], r"entries\[0\]`: the time must be.*unix seconds.*Received: \(38, 90, 1.5\)"),
    ([(38, 90, -5)], r"entries\[0\]`: the time must be.*Received: \(38, 90, -5\)"),
    ([(38, float("nan"))], r"entries\[0\]`: the score must be.*Received: \(38, nan\)"),
    ([(38, 90, 0, 1)], r"entries\[0\]`.*Received: \(38, 90, 0, 1\)"),
    ([(38, 90, "last week")], r"`entries\[0\] time` must be an ISO date"),
    ("Cowboy Bebop", r"`entries` must be a list.*Received: entries='Cowboy Bebop'"),
])
def test_history_entries_must_be_id_or_title_and_score_pairs(rec, entries, shown):
    with pytest.raises(InputError, match=shown):
        rec.recommend_for_history(entries)


def test_filters_are_checked(rec, users):
    valid = sorted(rec.anime["format"].dropna().unique())
    with pytest.raises(InputError, match=rf"`formats` must be formats of this model's catalog: "
                                         rf"\['{valid[0]}'.*Received: formats=\('TVV',\)"):
        rec.recommend(users, filters=Filters(formats=("TVV",)))
    one = Filters(formats="TV")  # a single string is one format, not four letters
    assert one.formats == ("TV",)
    out = rec.recommend(users, k=5, filters=one)
    formats = rec.anime.set_index("media_id").loc[out["anime_id"], "format"]
    assert len(out) == 15 and (formats == "TV").all()
    with pytest.raises(InputError, match=r"`min_year` must be <= `max_year`. "
                                         r"Received: min_year=2020, max_year=2010"):
        Filters(min_year=2020, max_year=2010)
    with pytest.raises(InputError, match=r"`max_popularity` must be a number >= 0.*max_popularity=-1"):
        Filters(max_popularity=-1)
    with pytest.raises(InputError, match=r"`exclude_ids` must be anime ids.*exclude_ids=\('a',\)"):
        Filters(exclude_ids=("a",))
    with pytest.raises(InputError, match=r"`min_year` must be an int. Received: min_year='2000'"):
        Filters(min_year="2000")
    with pytest.raises(InputError, match=r"`filters` must be a serving.Filters.*filters=\{'formats'"):
        rec.recommend(users, filters={"formats": "TV"})


def test_user_ids_must_be_integers(rec, users):
    with pytest.raises(InputError, match=r"`user_ids` must be a list or array of integer ids. "
                                         r"Received 1 value\(s\) that are not: \['abc'\]"):
        rec.recommend(["abc"])
    with pytest.raises(InputError, match=r"`user_ids`.*\[2.5, 'x'\]"):
        rec.recommend([int(users[0]), 2.5, "x"])
    with pytest.raises(InputError, match="not in the training data"):
        rec.recommend([123456789])
    assert rec.recommend(int(users[0]), k=2)["user_id"].tolist() == [users[0]] * 2


def test_similar_anime_checks_k_and_the_id(rec):
    anime_id = int(rec.anime["media_id"].iloc[0])
    with pytest.raises(InputError, match=r"`k` must be an int >= 1. Received: k=-2"):
        rec.similar_anime(anime_id, k=-2)
    with pytest.raises(InputError, match=rf"`anime_id` must be an int. Received: anime_id='{anime_id}'"):
        rec.similar_anime(str(anime_id))
    with pytest.raises(InputError, match=r"`anime_id` must be an int. Received: anime_id=1.5"):
        rec.similar_anime(1.5)


def test_candidates_must_be_at_least_k(rec, users, tiny_ranked, tmp_path, capsys):
    message = r"`candidates` must be >= `k`.*Received: k=10, candidates=5"
    with pytest.raises(InputError, match=message):
        rec.recommend(users, k=10, candidates=5)
    with pytest.raises(InputError, match=message):
        rec.recommend_for_history([(int(rec.anime["media_id"].iloc[0]), 80)], k=10, candidates=5)
    # Default candidates follow k: max(k, 100), capped at the catalog.
    ranked = Filters(entry_points=False, per_franchise=None)
    assert (rec.recommend(users, k=101, filters=ranked).groupby("user_id").size() == 101).all()

    out = tmp_path / "recs"
    for args, shown in [(["--k", "10", "--candidates", "5"], "k=10, candidates=5"),
                        (["--k", "-3"], "k=-3"), (["--formats", "TVV"], "TVV"),
                        (["--min-year", "2020", "--max-year", "2010"], "min_year=2020")]:
        code = batch.main(["--model", str(tiny_ranked[0]), "--out", str(out), "--quiet", *args])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and shown in err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert not out.exists(), "nothing is written for a bad option"


def test_batch_users_files_and_out_directories_are_checked(rec, tiny_ranked, tmp_path, capsys):
    """Each bad --users file or --out is one `error:` line and exit 2 from the CLI, with
    nothing written; an id beyond int64 is an invalid row, never a wrapped-around id."""
    from serving.batch import main

    model = str(tiny_ranked[0])
    known = int(rec.users["user_id"].iloc[0])
    ids = tmp_path / "ids.txt"
    ids.write_text(f"user_id\n{known}\n99999999999999999999999\n9223372036854775807\n1_000\n")
    got, invalid = batch.read_users(str(ids), rec)
    assert got.tolist() == [known, 2**63 - 1]
    assert invalid == [(2, "99999999999999999999999"), (4, "1_000")]
    binary = tmp_path / "users.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header = tmp_path / "header.csv"
    header.write_text("user_id\n")
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet")
    words = tmp_path / "words.txt"
    words.write_text("alice\nbob\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [(["--users", str(binary)], "cannot be read as a CSV or text file of user ids (UnicodeDecodeError"),
             (["--users", str(empty)], "cannot be read as a CSV or text file of user ids (it is empty)"),
             (["--users", str(header)], "holds no user ids (no rows)"),
             (["--users", str(fake)], "cannot be read as a Parquet file"),
             (["--users", str(words)], "holds no valid user id"),
             (["--users", str(ids), "--out", "/proc/nope/out"], "--out /proc/nope/out cannot be created"),
             (["--users", str(ids), "--out", str(a_file)], f"--out {a_file} is a file")]
    for i, (args, message) in enumerate(cases):
        out = ["--out", str(tmp_path / f"out{i}")] if "--out" not in args else []
        assert main(["--model", model, *out, *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert not (tmp_path / f"out{i}").exists(), "nothing written"


def test_history_duplicates_collapse_to_the_newest_entry_and_the_cap_is_anilists(rec):
    """A title listed three times counts once: its newest entry (by time; the last given
    without times), named in a warning and ``attrs["duplicates"]``; the answer is the
    one-entry history's. 11,001 entries are refused as the service refuses them."""
    m, other = (int(x) for x in rec.anime["media_id"].iloc[:2])
    with pytest.warns(UserWarning, match=rf"1 titles are listed more than once.*\[{m}\]"):
        got = rec.recommend_for_history([(m, 90), (other, 70), (m, 10), (m, None)], k=5)
    assert got.attrs["duplicates"] == [m]
    want = rec.recommend_for_history([(m, None), (other, 70)], k=5)
    pd.testing.assert_frame_equal(got[["anime_id", "score"]], want[["anime_id", "score"]])
    with pytest.warns(UserWarning):
        timed = rec.recommend_for_history([(m, 90, 2_000_000), (m, 10, 1_000_000)], k=5)
    pd.testing.assert_frame_equal(
        timed[["anime_id", "score"]],
        rec.recommend_for_history([(m, 90, 2_000_000)], k=5)[["anime_id", "score"]])
    with pytest.raises(InputError, match=r"at most 11,000 titles .* Received: 11,001"):
        rec.recommend_for_history([(m, 50)] * 11_001)


def test_histories_batched_give_each_historys_own_answer(rec):
    """recommend_for_histories (what the service batches concurrent lists into) answers
    each history exactly as recommend_for_history does alone: timed, untimed, by title,
    an empty one (popularity) and one whose titles the filters leave nothing of."""
    ids = [int(m) for m in rec.anime["media_id"]]
    title = str(rec.anime["title"].iloc[3])
    histories = [[(ids[0], 90), (ids[1], None)],
                 [(ids[2], 70, 1_700_000_000), (ids[5], 40, 1_600_000_000)],
                 [(title, 85)],
                 [],
                 [(ids[7], 60), (ids[8], 95), (ids[9], None), (ids[10], 30)]]
    together = rec.recommend_for_histories(histories, k=7)
    assert len(together) == len(histories)
    # Built together, each is still a new user (the unknown id), never a known one.
    built = rec._history_features([([ids[0]], [90], [None]), ([ids[1]], [50], [None])])
    assert built["user_id"].tolist() == [-1, -1]
    for history, got in zip(histories, together):
        alone = rec.recommend_for_history(history, k=7)
        pd.testing.assert_frame_equal(got, alone, check_dtype=False, rtol=1e-5)
    assert together[3]["source"].eq("popularity").all() and len(together[3]) == 7
    # As columns (what the service reads): the same answers.
    arrays = rec.recommend_for_histories(histories, k=7, columns=True)
    for got, frame in zip(arrays, together):
        pd.testing.assert_frame_equal(pd.DataFrame(got), frame, check_dtype=False, rtol=1e-5)
    tv = rec.recommend_for_histories(histories[:2], k=5, filters=Filters(formats="TV"))
    tv_ids = set(rec.anime.loc[rec.anime["format"] == "TV", "media_id"])
    assert all(set(frame["anime_id"]) <= tv_ids and len(frame) == 5 for frame in tv)
    # Per-history exclusions (the service's "hide what I have seen" for AniList lists)
    # leave out exactly what the same ids in filters leave out, history by history.
    first = rec.recommend_for_history(histories[0], k=7)
    drop = first["anime_id"].iloc[:3].tolist()
    excluded = rec.recommend_for_histories(histories[:2], k=7, exclude=[drop, []])
    pd.testing.assert_frame_equal(
        excluded[0], rec.recommend_for_history(histories[0], k=7, filters=Filters(exclude_ids=drop)),
        check_dtype=False, rtol=1e-5)
    assert not set(drop) & set(excluded[0]["anime_id"])
    pd.testing.assert_frame_equal(excluded[1], together[1], check_dtype=False, rtol=1e-5)
    with pytest.raises(InputError, match=r"`exclude` must hold one list of anime ids per history"):
        rec.recommend_for_histories(histories[:2], k=7, exclude=[drop])
