"""The command line and the one environment module every entry point imports first."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import __main__ as cli
from pipelines import features

ROOT = Path(__file__).resolve().parents[1]


def _python(*args, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


def test_help_lists_every_stage():
    result = _python("-m", "pipelines", "--help")
    assert result.returncode == 0
    for stage in ("synth", "import-kaggle", "features", "train-retrieval", "train-ranking",
                  "evaluate", "run"):
        assert f"\n  {stage}" in result.stdout
    sub = _python("-m", "pipelines", "features", "--help")
    assert "--test-fraction" in sub.stdout and "--interaction-statuses" in sub.stdout


def test_every_package_gives_tensorflow_keras_2():
    # Importing any of our packages first must make tf.keras Keras 2 (what TFRS needs),
    # even though TF 2.20 defaults to Keras 3.
    for first in ("pipelines", "towers", "ranking", "serving"):
        code = f"import {first}, tensorflow as tf; print(tf.keras.__name__)"
        result = _python("-c", code)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().startswith("tf_keras"), (first, result.stdout)
    # The control: without our import first, TF 2.20 hands out Keras 3.
    result = _python("-c", "import tensorflow as tf; print(tf.keras.__name__)")
    assert not result.stdout.strip().startswith("tf_keras")


def test_run_builds_a_world_its_features_and_a_model(tmp_path, capsys):
    db, out, model = tmp_path / "w.db", tmp_path / "features", tmp_path / "model"
    code = cli.main(["--quiet", "run", "--db", str(db), "--out", str(out), "--model", str(model),
                     "--users", "120", "--anime", "80", "--entries-per-user", "20",
                     "--max-epochs", "2", "--no-ablation", "--batch-size", "128",
                     "--ranking-epochs", "2", "--no-loss-comparison",
                     "--recommendations", str(tmp_path / "recs")])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"feature tables in {out}" in printed and "120 users" in printed
    assert f"model in {model}" in printed and "most popular" in printed
    assert "end to end over top-100" in printed
    assert f"report: {model}/report/report.md" in printed
    assert (model / "report" / "report.md").exists()
    assert "recommendations for 120 users" in printed and (tmp_path / "recs" / "_SUCCESS").exists()
    assert {p.name for p in model.iterdir()} >= {"config.json", "ranker", "query_tower", "index"}
    tables = features.load(out)
    assert tables["users"]["user_id"].nunique() == 120
    assert tables["schema"]["counts"]["entries"] == len(tables["interactions"])


@pytest.mark.parametrize("argv, message", [
    (["features", "--db", "{tmp}/missing.db"], "No raw store at"),
    (["features", "--db", "{tmp}/w.db", "--test-fraction", "2"], "test_fraction"),
    (["features", "--db", "{tmp}/w.db", "--interaction-statuses", "WATCHED"], "WATCHED"),
    (["import-kaggle", "--db", "{tmp}/k.db", "--anime", "{tmp}/none.csv"], "does not exist"),
    (["train-retrieval", "--features", "{tmp}"], "not a feature directory"),
    (["train-retrieval", "--features", "{tmp}", "--batch-size", "0"], "batch_size"),
    (["train-ranking", "--features", "{tmp}", "--candidates", "0"], "candidates"),
    (["evaluate", "--features", "{tmp}"], "not a feature directory"),
])
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, argv, message):
    code = cli.main(["--quiet", *[a.format(tmp=tmp_path) for a in argv]])
    assert code == 2
    assert message in capsys.readouterr().err
