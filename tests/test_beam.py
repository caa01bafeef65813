"""The batch job as a Beam pipeline (``python -m serving.batch --runner ...``): the same
parts, manifest and ``_SUCCESS`` counts as the in-process job on the tiny model, with the
DirectRunner in process, with worker processes (``multi_processing``, 2 workers) and with
the portable runner (an embedded job server, LOOPBACK workers); a Beam run resumes one
the in-process job began; clear errors without Beam or with an unknown runner, and the
in-process job without Beam.

The DirectRunner of Beam 2.77 first tries its Prism runner, which it downloads from
GitHub, and runs batch pipelines on its FnApiRunner when it cannot (offline, as here).
The worker-process test names the FnApiRunner, so that it tests multi_processing (which
Prism ignores) on any machine."""

import json
import sys

import pandas as pd
import pytest

import serving
from serving import Recommender, batch

pytest.importorskip("apache_beam", reason="apache-beam is not installed "
                                          "(pip install -r requirements-scale.txt)")

# _SUCCESS fields that say how, not what: they differ between runners and runs.
HOW = ("seconds", "runner", "model_loads", "parts_written", "parts_skipped", "out")


@pytest.fixture(scope="module")
def users_file(tiny_scored, tmp_path_factory):
    """Every user of the tiny model (382), then an unknown user, a duplicate and a row
    that is not a user id: 383 users in 10 parts of 40."""
    ids = Recommender.from_pretrained(str(tiny_scored[0])).users["user_id"].tolist()
    path = tmp_path_factory.mktemp("beam_users") / "users.csv"
    path.write_text("user_id\n" + "\n".join(map(str, [*ids, 999999999, ids[0]])) + "\nabc\n")
    return path


@pytest.fixture(scope="module")
def in_process(tiny_scored, users_file, tmp_path_factory):
    """The in-process job's output directory."""
    out = tmp_path_factory.mktemp("in_process") / "recs"
    batch.run(str(tiny_scored[0]), str(users_file), out, k=5, chunk_size=40, progress=False)
    return out


def _command(model, users, out, *runner):
    return ["--model", str(model), "--users", str(users), "--out", str(out), "--k", "5",
            "--chunk-size", "40", "--quiet", *runner]


def _sorted(out) -> pd.DataFrame:
    return (batch.read_output(out).sort_values(["user_id", "rank"], kind="stable")
            .reset_index(drop=True))


def assert_same_output(out, expected):
    """The same rows (sorted by user and rank), part names, manifest, invalid rows and
    _SUCCESS counts as the in-process job's output ``expected``."""
    pd.testing.assert_frame_equal(_sorted(out), _sorted(expected), check_exact=True)
    assert sorted(p.name for p in out.glob("part-*")) == sorted(p.name for p in expected.glob("part-*"))
    for name in (batch.MANIFEST, batch.INVALID):
        assert (out / name).read_text() == (expected / name).read_text(), name
    done, reference = (json.loads((d / batch.DONE).read_text()) for d in (out, expected))
    assert {k: v for k, v in done.items() if k not in HOW} == \
        {k: v for k, v in reference.items() if k not in HOW}
    assert not list(out.glob(".*.tmp"))


def test_direct_runner_writes_the_in_process_output(tiny_scored, users_file, in_process, tmp_path,
                                                    capsys):
    out = tmp_path / "direct"
    assert batch.main(_command(tiny_scored[0], users_file, out, "--runner", "DirectRunner")) == 0
    assert "(DirectRunner: 10 parts, 0 already done;" in capsys.readouterr().out
    assert_same_output(out, in_process)
    done = json.loads((out / batch.DONE).read_text())
    assert done["users"] == 383 and done["popularity_fallback_users"] == 1
    assert done["duplicate_users"] == 1 and done["invalid_row_count"] == 1
    assert done["parts_written"] == 10 and done["runner"] == "DirectRunner"
    # One worker, the test's own process: the model is loaded once for 10 parts (none
    # if this process still holds it from an earlier pipeline).
    assert done["model_loads"] <= 1
    # A rerun over the finished parts writes none and loads no model.
    (out / batch.DONE).unlink()
    assert batch.main(_command(tiny_scored[0], users_file, out, "--runner", "DirectRunner")) == 0
    again = json.loads((out / batch.DONE).read_text())
    assert again["parts_written"] == 0 and again["parts_skipped"] == 10
    assert again["model_loads"] == 0
    assert_same_output(out, in_process)


def test_worker_processes_write_the_in_process_output(tiny_scored, users_file, in_process,
                                                      tmp_path):
    """Two worker processes (the DirectRunner's FnApiRunner in multi_processing mode),
    each loading the model once, however many of the 10 parts it writes."""
    out = tmp_path / "workers"
    summary = batch.run(str(tiny_scored[0]), str(users_file), out, k=5, chunk_size=40,
                        progress=False, runner="FnApiRunner",
                        beam_options=["--direct_running_mode", "multi_processing",
                                      "--direct_num_workers", "2"])
    assert_same_output(out, in_process)
    # The runner deals the 10 chunks out to its two workers in turn: each loads once.
    assert summary["model_loads"] == 2 and summary["parts_written"] == 10


def test_portable_runner_finishes_a_job_the_in_process_one_began(tiny_scored, users_file,
                                                                 in_process, tmp_path):
    """The in-process job killed after some parts (here: parts removed, no _SUCCESS),
    then the portable runner on an embedded job server completes it: only the missing
    parts are written, and the output is the uninterrupted one."""
    out = tmp_path / "resumed"
    batch.run(str(tiny_scored[0]), str(users_file), out, k=5, chunk_size=40, progress=False)
    (out / batch.DONE).unlink()
    for i in (2, 7, 9):
        (out / f"part-{i:05d}.parquet").unlink()
    summary = batch.run(str(tiny_scored[0]), str(users_file), out, k=5, chunk_size=40,
                        progress=False, runner="PortableRunner",
                        beam_options=["--job_endpoint", "embed", "--environment_type", "LOOPBACK"])
    assert summary["parts_written"] == 3 and summary["parts_skipped"] == 7
    assert summary["runner"] == "PortableRunner"
    assert_same_output(out, in_process)


def test_runner_errors_come_before_anything_is_written(tiny_scored, users_file, tmp_path,
                                                       monkeypatch, capsys):
    out = tmp_path / "recs"
    assert batch.main(_command(tiny_scored[0], users_file, out, "--runner", "NoSuchRunner")) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: `runner` must be a Beam runner. Received: runner='NoSuchRunner'")
    assert "DirectRunner" in error  # the runners Beam knows
    assert batch.main(_command(tiny_scored[0], users_file, out, "--",
                               "--direct_num_workers", "2")) == 2
    assert "need a --runner" in capsys.readouterr().err
    # Without apache-beam installed (its import fails): what to install.
    monkeypatch.setitem(sys.modules, "apache_beam", None)
    monkeypatch.delitem(sys.modules, "serving.beam", raising=False)
    monkeypatch.delattr(serving, "beam", raising=False)
    assert batch.main(_command(tiny_scored[0], users_file, out, "--runner", "DirectRunner")) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --runner needs Apache Beam") and "requirements-scale.txt" in error
    assert not out.exists()
    # The in-process job never imports it.
    assert batch.main(_command(tiny_scored[0], users_file, out)) == 0
    assert json.loads((out / batch.DONE).read_text())["runner"] == "in-process"
