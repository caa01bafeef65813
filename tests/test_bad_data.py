"""Data no stage was built around: each ends in a one-line ``error:`` that names the data
problem and what to do, or works and says what it did; never a traceback.

Each case edits a small synthetic world with SQL into the shape under test.
"""

import json
import sqlite3

import pytest

from pipelines import synth
from pipelines.__main__ import main

SMALL = dict(users=150, anime=80, entries_per_user=20, seed=11)   # 80 titles: fewer than K=100


def _world(tmp_path, *statements) -> str:
    db = tmp_path / "x.db"
    synth.run(db, progress=False, **SMALL)
    conn = sqlite3.connect(db)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()
    return str(db)


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main(["--quiet", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(code: int, err: str, *phrases: str) -> None:
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err   # (the rest: TensorFlow's log)
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


def _features(capsys, tmp_path, db, *args):
    code, out, err = _run(capsys, "features", "--db", db, "--out", tmp_path / "f", *args)
    assert code == 0, err
    return json.loads((tmp_path / "f" / "schema.json").read_text()), out


# The newest quarter of the entries by time, in SQL: covers the default as-of periods
# (the newest fifth, from a cutoff at midnight before it).
_LATE = ("COALESCE(updated_at, completed_at, created_at) >= (SELECT t FROM (SELECT "
         "COALESCE(updated_at, completed_at, created_at) AS t FROM entries ORDER BY t) "
         "LIMIT 1 OFFSET (SELECT COUNT(*) * 3 / 4 FROM entries))")


@pytest.mark.parametrize("case, statement, args, phrases", [
    ("one user", "DELETE FROM entries WHERE user_id != (SELECT MIN(user_id) FROM entries)",
     (), ("only 1 user;", "import more")),
    ("one title", "DELETE FROM entries WHERE media_id != (SELECT media_id FROM entries "
                  "GROUP BY media_id ORDER BY COUNT(*) DESC LIMIT 1)",
     (), ("only 1 title;", "import more")),
    ("lists too short to split", "DELETE FROM entries WHERE (user_id, media_id) IN (SELECT "
     "user_id, media_id FROM (SELECT user_id, media_id, ROW_NUMBER() OVER (PARTITION BY "
     "user_id ORDER BY media_id) AS i FROM entries) WHERE i > 4)", ("--protocol", "per_user"),
     ("The validation split has no interactions", "--min-entries-to-split")),
    ("nothing watched after the cutoff", f"UPDATE entries SET status = 'PLANNING' WHERE {_LATE}",
     (), ("The validation split has no interactions", "The validation period runs from",
          "--as-of DATE")),
])
def test_data_a_model_cannot_learn_from_is_named(case, statement, args, phrases, tmp_path, capsys):
    db = _world(tmp_path, statement)
    _features(capsys, tmp_path, db, *args)
    code, _, err = _run(capsys, "train-retrieval", "--features", tmp_path / "f",
                        "--model", tmp_path / "m")
    _one_line_error(code, err, *phrases)
    assert not (tmp_path / "m").exists()


def test_an_empty_store_is_named(tmp_path, capsys):
    db = _world(tmp_path, "DELETE FROM entries")
    code, _, err = _run(capsys, "features", "--db", db, "--out", tmp_path / "f")
    _one_line_error(code, err, "no list entries")


def test_one_timestamp_for_every_entry_splits_at_random(tmp_path, capsys):
    """An import stamp is not a history: such lists are split at random, and say so."""
    db = _world(tmp_path, "UPDATE entries SET created_at = 1600000000, updated_at = 1600000000,"
                          " completed_at = 1600000000")
    schema, out = _features(capsys, tmp_path, db)
    assert schema["split"]["method"] == "random"
    split_users = schema["split"]["users"]    # those with enough entries to be split
    assert schema["split"]["random_split_users"] == split_users > 100
    assert schema["counts"]["test"]["interactions"] > 0
    assert f"{split_users} users without usable entry times" in out


def test_no_scores_at_all(tmp_path, capsys):
    """Retrieval trains on what users watched; the ranker needs scores and says so; the
    model directory still evaluates and serves without a ranker."""
    db = _world(tmp_path, "UPDATE entries SET score = 0")
    schema, _ = _features(capsys, tmp_path, db)
    assert schema["dropped_features"]["average_score"] == "no values in the source"
    f, m = tmp_path / "f", tmp_path / "m"
    code, _, err = _run(capsys, "train-retrieval", "--features", f, "--model", m,
                        "--max-epochs", "1")
    assert code == 0, err
    code, _, err = _run(capsys, "train-ranking", "--features", f, "--model", m,
                        "--ranking-epochs", "1")
    _one_line_error(code, err, "no scored entries", "complete without a ranker")
    code, out, err = _run(capsys, "evaluate", "--features", f, "--model", m)
    assert code == 0, err
    report = (m / "report" / "report.md").read_text()
    assert "## Retrieval" in report and "## Ranking" not in report


def test_single_values_small_catalog_and_no_labelled_test_users(tmp_path, capsys):
    """One format and one country for every title (a one-value vocabulary), 80 titles
    (fewer than the 100 candidates ranking reorders), and no scores in anyone's test
    period (no held-out lists): every stage runs, and the tables say "-"."""
    db = _world(tmp_path, "UPDATE media SET format = 'TV', country = 'JP'")
    schema, _ = _features(capsys, tmp_path, db)
    test_start = schema["split"]["as_of"] + 86_400 * schema["split"]["horizon_days"]
    with sqlite3.connect(db) as conn:  # no score in anyone's test period
        conn.execute("UPDATE entries SET score = 0 WHERE "
                     f"COALESCE(updated_at, completed_at, created_at) >= {test_start}")
    schema, _ = _features(capsys, tmp_path, db)
    assert schema["vocab"]["format"] == ["TV"] and schema["vocab"]["country"] == ["JP"]
    assert {"format", "country", "format_share"} <= {f["name"] for f in schema["features"]}
    assert schema["counts"]["test"]["labels"] == 0
    f, m = tmp_path / "f", tmp_path / "m"
    # The ranking ablations too: with 80 titles, fewer than the candidates they switch.
    for stage, args in (("train-retrieval", ["--max-epochs", "1"]),
                        ("train-ranking", ["--ranking-epochs", "1", "--ranking-ablations"]),
                        ("evaluate", [])):
        code, out, err = _run(capsys, stage, "--features", f, "--model", m, *args)
        assert code == 0, err
        assert "Warning" not in err, err
        if stage == "train-ranking":
            assert "(none: no test user has two or more scored titles" in out
    metrics = json.loads((m / "metrics.json").read_text())["evaluation"]
    assert metrics["ranking"]["held_out_users"] == 0
    assert metrics["ranking"]["score_correlation"]["ranker_vs_score"] is None
    report = (m / "report" / "report.md").read_text()
    assert "no held-out lists to order" in report and "| random | - | - |" in report
    assert "scores.png" not in report and not (m / "report" / "scores.png").exists()
    assert metrics["retrieval"]["curves"]["two-tower"]["recall@200"] == pytest.approx(1.0)


def test_sources_never_mix_in_one_store(tmp_path, capsys):
    """A crawl or an import into a store another source filled stops and names it."""
    import data_query as dq
    from tests.test_real_sources import FIXTURES

    db = _world(tmp_path)
    code, _, err = _run(capsys, "import-kaggle", "--db", db, "--anime",
                        FIXTURES / "kaggle2017" / "anime.csv")
    _one_line_error(code, err, "already holds a synthetic world", "--db")
    code = dq.main(["users", "--discover", "--db", db, "--endpoint", "http://127.0.0.1:9", "--quiet"])
    _one_line_error(code, capsys.readouterr().err, "already holds a synthetic world")
    kaggle = tmp_path / "mal.db"
    for _ in range(2):   # the same source twice is one store
        code, _, err = _run(capsys, "import-kaggle", "--db", kaggle, "--anime",
                            FIXTURES / "kaggle2017" / "anime.csv")
        assert code == 0, err
