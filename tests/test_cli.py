"""The command line and the one environment module every entry point imports first."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import __main__ as cli
from pipelines import artifact
from pipelines.tables import load

ROOT = Path(__file__).resolve().parents[1]


def _python(*args, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


def test_help_lists_every_stage():
    result = _python("-m", "pipelines", "--help")
    assert result.returncode == 0
    for stage in ("synth", "import-kaggle", "features", "train-retrieval", "train-ranking",
                  "train-scores", "evaluate", "run"):
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
                     "--max-epochs", "2", "--batch-size", "128", "--ranking-epochs", "2",
                     "--recommendations", str(tmp_path / "recs")])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"feature tables in {out}" in printed and "120 users" in printed
    assert f"model in {model}" in printed and "most popular" in printed
    assert "end to end over top-100" in printed
    assert f"report: {model}/report/report.md" in printed
    assert (model / "report" / "report.md").exists()
    assert {p.name for p in model.iterdir()} >= {"config.json", "ranker", "query_tower", "index"}
    tables = load(out)
    # The selection model's users: those with an entry before the as-of cutoff, of the
    # world's 120; the served model (the release, refit on every entry) has them all.
    users = tables["users"]["user_id"].nunique()
    assert 100 < users <= 120
    assert tables["schema"]["counts"]["entries"] == len(tables["interactions"])
    # The walk-forward headline judges the order the model serves (decided on validation).
    order = json.loads((model / "config.json").read_text())["serving"]["order"]
    headline = artifact.ORDER_KEYS[order].replace("_", " ")
    assert f"{headline} - EASE (refit), NDCG@10" in printed and "served model refit on every" in printed
    served = load(tmp_path / "walk_forward" / "final" / "features")["users"]["user_id"].nunique()
    assert users <= served <= 120
    assert f"recommendations for {served} users" in printed and (tmp_path / "recs" / "_SUCCESS").exists()
    config = json.loads((model / "config.json").read_text())
    assert config["trained_through"] and config["selection"]["split"]["as_of"]
    assert (tmp_path / "walk_forward" / "selection" / "config.json").exists()


def test_comparisons_are_trained_only_when_asked_for():
    """The comparisons (the two-tower's ablations, one ranker per loss, the ranking
    ablations) triple the job's time: off by default, each on by its own flag, all on
    with `run --evidence`."""
    comparisons = ("ablations", "compare_losses", "ranking_ablations")

    def asked(*argv):
        args = cli.build_parser().parse_args(list(argv))
        return {c for c in comparisons if cli._evidence(args, c)}

    assert asked("run") == asked("train-retrieval") == asked("train-ranking") == set()
    assert asked("run", "--evidence") == set(comparisons)
    assert asked("train-retrieval", "--ablations") == {"ablations"}
    assert asked("train-ranking", "--compare-losses", "--ranking-ablations") == {
        "compare_losses", "ranking_ablations"}
    with pytest.raises(SystemExit):   # the old opt-out flags are gone, not ignored
        cli.build_parser().parse_args(["run", "--no-ablation"])


def test_no_ease_trains_reports_and_ranks_without_it(tmp_path, capsys):
    from pipelines.config import EASE_SIGNALS

    db, out, model = tmp_path / "w.db", tmp_path / "features", tmp_path / "model"
    code = cli.main(["--quiet", "run", "--db", str(db), "--out", str(out), "--model", str(model),
                     "--users", "120", "--anime", "80", "--entries-per-user", "20",
                     "--max-epochs", "1", "--no-ease", "--batch-size", "128",
                     "--ranking-epochs", "1"])
    assert code == 0
    assert not (model / "ease.npy").exists()
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["retrieval"]["ease"] is None
    assert metrics["retrieval"]["ease_skipped"] == "turned off (--no-ease)"
    ranking = json.loads((model / "config.json").read_text())["ranking"]
    assert ranking["ease_candidates"] == 0 and not set(ranking["signals"]) & set(EASE_SIGNALS)
    report = (model / "report" / "report.md").read_text()
    assert "EASE: skipped: turned off (--no-ease)." in report and "| EASE |" not in report


@pytest.mark.parametrize("argv, message", [
    (["features", "--db", "{tmp}/missing.db"], "No raw store at"),
    (["features", "--db", "{tmp}"], "is a directory, not a raw store"),
    (["features", "--db", "{tmp}/w.db", "--test-fraction", "2"], "test_fraction"),
    (["features", "--db", "{tmp}/w.db", "--interaction-statuses", "WATCHED"], "WATCHED"),
    (["import-kaggle", "--db", "{tmp}/k.db", "--anime", "{tmp}/none.csv"], "does not exist"),
    (["train-retrieval", "--features", "{tmp}"], "not a feature directory"),
    (["train-retrieval", "--features", "{tmp}", "--batch-size", "0"], "batch_size"),
    (["train-ranking", "--features", "{tmp}", "--candidates", "0"], "candidates"),
    (["evaluate", "--features", "{tmp}"], "not a feature directory"),
    (["features", "--db", "{tmp}/w.db", "--min-interaction-score", "500"], "min_interaction_score"),
    (["train-retrieval", "--features", "{tmp}", "--learning-rate", "0"], "learning_rate"),
    (["train-retrieval", "--features", "{tmp}", "--patience", "-1"], "patience"),
])
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, argv, message):
    code = cli.main(["--quiet", *[a.format(tmp=tmp_path) for a in argv]])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_the_service_refuses_a_port_out_of_range(capsys):
    from serving import app

    assert app.main(["--model", "unused", "--port", "99999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --port must be from 0 (a free one) to 65535. Received: 99999."]


def _option_parsers():
    """(name, parser) of every parser of every command line: ``python -m pipelines``
    and each stage, ``python data_query.py`` and each command, ``python -m serving.batch``."""
    import argparse

    import data_query
    from serving import batch

    out = []
    for prog, parser in (("pipelines", cli.build_parser()), ("data_query", data_query.build_parser())):
        out.append((prog, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                out += [(f"{prog} {name}", sub) for name, sub in action.choices.items()]
    # serving.batch builds its parser inside main(): catch it as it parses.
    caught = []

    def catch(self, args=None, namespace=None):
        caught.append(self)
        raise SystemExit(0)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = catch
    try:
        with pytest.raises(SystemExit):
            batch.main([])
    finally:
        argparse.ArgumentParser.parse_args = original
    out.append(("serving.batch", caught[0]))
    return out


def test_every_option_explains_itself_and_shows_its_default():
    import argparse

    parsers = _option_parsers()
    assert {name for name, _ in parsers} >= {
        "pipelines", "pipelines train-retrieval", "pipelines train-ranking",
        "pipelines train-scores", "pipelines run",
        "data_query users", "data_query media", "serving.batch"}
    lacking, no_default = [], []
    for name, parser in parsers:
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            flag = f"{name} {action.option_strings[0] if action.option_strings else action.dest}"
            text = action.help or ""
            if not isinstance(action.help, str) or not re.sub(r"\(default: %\(default\)s\)", "", text).strip(" .;"):
                lacking.append(flag)
                continue
            flag_only = action.nargs == 0   # --quiet, --evidence: on or off
            if not (flag_only or action.required) and "default" not in text:
                no_default.append(flag)
    assert not lacking, f"options without help: {lacking}"
    assert not no_default, f"options whose help does not show the default: {no_default}"
    # The ones a new user found without help, and the batch job's --users.
    helps = {f"{name} {a.option_strings[0]}": parser._get_formatter()._expand_help(a)
             for name, parser in parsers for a in parser._actions if a.option_strings and a.help}
    for flag in ("pipelines train-retrieval --batch-size", "pipelines train-retrieval --patience",
                 "pipelines synth --seed", "pipelines train-retrieval --train-seed",
                 "pipelines train-ranking --ranking-seed", "pipelines features --split-seed"):
        assert len(helps[flag]) > 40 and "(default: " in helps[flag], flag
    assert "(default: all)" in helps["serving.batch --users"]


@pytest.mark.parametrize("argv, quiet", [
    (["--quiet", "features"], True),
    (["features", "--quiet"], True),
    (["--quiet", "features", "--quiet"], True),
    (["features"], False),
    (["--quiet", "train-retrieval", "--batch-size", "64"], True),
    (["train-retrieval", "--batch-size", "64", "--quiet"], True),
])
def test_quiet_goes_before_or_after_the_stage(argv, quiet):
    assert cli.build_parser().parse_args(argv).quiet is quiet


def test_quiet_after_the_stage_reaches_the_stage(tmp_path, capsys):
    db = tmp_path / "w.db"
    assert cli.main(["synth", "--db", str(db), "--users", "30", "--anime", "20",
                     "--entries-per-user", "5", "--quiet"]) == 0
    out = capsys.readouterr()
    assert "synthetic world: 30 users" in out.out
    assert "it/s" not in out.err and "%|" not in out.err, "no progress bars"


def test_publish_help_names_the_login_command_the_pinned_hub_client_has():
    result = _python("-m", "pipelines", "publish", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "`hf auth login`" in text and "huggingface-cli" not in text
    assert "huggingface-cli" not in Path(cli.__file__).read_text()


TF_START = ("import towers.model, tensorflow as tf, os; "
            "print(int(tf.constant(1) + 1), os.environ['TF_CPP_MIN_LOG_LEVEL'])")


def test_tensorflow_start_up_is_quiet_unless_asked():
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL")}
    # The first op initialises the devices: that is where cuInit fails on a CPU machine.
    result = subprocess.run([sys.executable, "-c", TF_START], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "2"
    for chatter in ("cuInit", "oneDNN custom operations", "cpu_feature_guard",
                    "Could not find cuda drivers"):
        assert chatter not in result.stderr, result.stderr
    # The user's own setting wins (it shows the lines again, where this machine has them).
    loud = subprocess.run([sys.executable, "-c", TF_START], cwd=ROOT,
                          env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"},
                          capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0, loud.stderr
    assert loud.stdout.split() == ["2", "0"]
    # Errors are still raised as exceptions, with TensorFlow's message.
    bad = subprocess.run([sys.executable, "-c", "import towers.model, tensorflow as tf; "
                          "tf.constant([1, 2]) @ tf.constant([[1.0]])"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert "InvalidArgumentError" in bad.stderr and "MatMul" in bad.stderr


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_a_bad_block_size_is_refused_with_the_rule_and_the_default(value, tmp_path):
    result = _python("-m", "pipelines", "features", "--db", str(tmp_path / "none.db"),
                     "--out", str(tmp_path / "f"), "--block-entries", value)
    assert result.returncode == 2
    assert f"--block-entries must be a whole number of entries, 1 or more (got '{value}')" \
        in result.stderr and "250,000" in result.stderr
    assert not (tmp_path / "f").exists()


def test_the_service_starts_without_tensorflow_chatter(tiny_scored):
    """`python -m serving.app` starts with its one line and nothing on stderr: no
    tf.function retracing warnings (the ranker's scorer is traced once for every batch
    size) and no absl line from its first XLA compilation."""
    import requests

    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL")}
    proc = subprocess.Popen([sys.executable, "-m", "serving.app", "--model", str(tiny_scored[0]),
                             "--port", "0", "--quiet"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), line
        url = line.split()[1]
        history = {"entries": [[1, 80]], "k": 3}
        assert requests.get(url + "health", timeout=30).status_code == 200
        assert requests.post(url + "recommend_for_history", json=history, timeout=30).status_code in (200, 404)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert err.strip() == "", err


@pytest.fixture
def damaged(tmp_path, tiny_db, tiny_features):
    """Inputs of the kinds the CLI audit found tracebacks for (issue 33, item 6)."""
    import shutil
    import sqlite3

    (tmp_path / "victim.txt").write_text("keep me\n")
    (tmp_path / "ids.txt").write_text("1\n2\n")
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir2").mkdir()
    (tmp_path / "adir2" / "notes.md").write_text("mine\n")   # not a batch output: never removed
    shutil.copy(tiny_db, tmp_path / "badver.db")
    with sqlite3.connect(tmp_path / "badver.db") as conn:
        conn.execute("UPDATE meta SET value='abc' WHERE key='schema_version'")
    for name in ("badschema", "badusers"):
        shutil.copytree(tiny_features, tmp_path / name)
    (tmp_path / "badschema" / "schema.json").write_text("{not json")
    users = tmp_path / "badusers" / "users.parquet"
    users.write_bytes(users.read_bytes()[:100])
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    # An output path that is an existing file: named, and the file left as it is.
    (["features", "--db", "{db}", "--out", "{tmp}/victim.txt"], "victim.txt is a file, not a directory"),
    (["run", "--db", "{tmp}/r.db", "--model", "{tmp}/victim.txt"], "--model {tmp}/victim.txt is a file"),
    (["run", "--db", "{tmp}/r.db", "--recommendations", "{tmp}/adir2"], "holds something other than a batch"),
    # Paths that cannot be written: the path named, never a temporary sibling.
    (["features", "--db", "{db}", "--out", "/proc/nope"], "--out /proc/nope cannot be written"),
    (["train-retrieval", "--features", "{tmp}/badschema", "--model", "/proc/nope"], "--model /proc/nope cannot be written"),
    (["synth", "--db", "/proc/nope/x.db", "--users", "20", "--anime", "20"], "/proc/nope does not exist"),
    (["synth", "--db", "{tmp}/victim.txt/x.db", "--users", "20", "--anime", "20"], "victim.txt"),
    (["import-kaggle", "--db", "{tmp}/k.db", "--anime", "{tmp}/adir"], "adir is a folder where a file is needed"),
    # Damaged inputs: the file named.
    (["features", "--db", "{tmp}/badver.db"], "schema version abc"),
    (["train-retrieval", "--features", "{tmp}/badschema"], "badschema/schema.json cannot be read"),
    (["train-retrieval", "--features", "{tmp}/badusers"], "badusers/users.parquet cannot be read"),
])
def test_audited_bad_input_is_one_error_line_and_loses_nothing(damaged, tiny_db, capsys, argv, message):
    fill = {"tmp": damaged, "db": tiny_db}
    code = cli.main(["--quiet", *[a.format(**fill) for a in argv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert message.format(**fill) in err[0], err
    assert (damaged / "victim.txt").read_text() == "keep me\n"
    assert not list(damaged.glob(".*.tmp")) and not list(damaged.glob(".*.old"))
    assert not (damaged / "r.db").exists(), "run checks its outputs before making the world"
    assert (damaged / "adir2" / "notes.md").read_text() == "mine\n"


@pytest.mark.parametrize("argv", [["synth", "--seed", "-1"], ["train-retrieval", "--train-seed", "-1"],
                                  ["train-scores", "--score-seed", str(2**32)]])
def test_seeds_out_of_range_are_refused_by_the_parser(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "a seed is a whole number from 0 to 4294967295" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["users", "--ids", "{tmp}/binary.bin"], "binary.bin is not a UTF-8 text file"),
    (["users", "--ids", "{tmp}/adir"], "adir does not exist or is not a file"),
    (["users", "--ids", "{tmp}/ids.txt", "--endpoint", "not-a-url"], "--endpoint must be an http"),
    (["users", "--ids", "{tmp}/ids.txt", "--timeout", "0"], "--timeout must be a number > 0"),
    (["users", "--ids", "{tmp}/ids.txt", "--db", "/proc/nope/q.db"], "/proc/nope does not exist"),
])
def test_the_crawler_names_bad_input_in_one_line(damaged, capsys, argv, message):
    import data_query

    argv = [a.format(tmp=damaged) for a in argv]
    if "--db" not in argv:
        argv += ["--db", str(damaged / "q.db")]
    assert data_query.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message.format(tmp=damaged) in err[0], err
