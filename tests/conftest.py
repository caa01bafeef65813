"""Shared fixtures: small seeded synthetic worlds and their feature tables. The worlds'
sizes and the helpers that build them are in tests/worlds.py (import those from there);
the project root is on the path through pytest's ``pythonpath`` (pyproject.toml).

`make test` runs the suite on every core, up to four processes (pytest-xdist). A
session fixture that trains or builds something is made once for the whole run, not
once per process: ``once`` builds it in a directory the processes share, the first
process to ask doing the work while the others wait on a file lock (pytest-xdist's own
recipe), and every process reads the same files back."""

import json
import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

from pipelines import features, store, tables
from tests.worlds import SMALL, TINY, TINY_RANKING, build_features, build_world


def once(tmp_path_factory, name: str, build):
    """``build(directory)``'s value (JSON: paths as strings), run once per test run for
    ``name`` in a directory every pytest process sees, and read back from JSON in each
    (one process or many, the tests see the same types)."""
    base = tmp_path_factory.getbasetemp()   # under pytest-xdist, one per process
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "once"
    root.mkdir(exist_ok=True)
    directory, value = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not value.exists():
            shutil.rmtree(directory, ignore_errors=True)   # what a failed build left
            directory.mkdir()
            value.write_text(json.dumps(build(directory)))
    return json.loads(value.read_text())


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist each process is first sent a run of consecutive tests (a
    quarter of its share; xdist's load scheduling), the rest as they finish. The first
    run opens with the tests on the tiny trained model and the others with tests
    without it, so one process trains the model while the others work instead of
    waiting on its lock. Only the order changes; one process keeps pytest's own."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        return
    chunk = max(len(items) // workers // 4, 2)
    trained = [item for item in items if "tiny_model" in item.fixturenames]
    others = [item for item in items if "tiny_model" not in item.fixturenames]
    cut = chunk * (workers - 1)
    items[:] = trained[:chunk] + others[:cut] + trained[chunk:] + others[cut:]


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory) -> Path:
    """A 400-user, 300-anime synthetic world (about 16k entries)."""
    return Path(once(tmp_path_factory, "tiny_db", lambda d: str(build_world(d / "tiny.db", **TINY))))


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory) -> Path:
    """The default demo world (3k users, 2k anime, ~320k entries): a few seconds."""
    return Path(once(tmp_path_factory, "demo_db", lambda d: str(build_world(d / "demo.db"))))


@pytest.fixture(scope="session")
def small_schema(tmp_path_factory) -> dict:
    """The feature schema (schema.json) of the 50-user SMALL world: a real one, with
    every feature kind. Under a second."""
    root = tmp_path_factory.mktemp("small")
    out = build_features(build_world(root / "small.db", **SMALL), root / "features")
    return json.loads((out / features.SCHEMA_FILE).read_text())


@pytest.fixture(scope="session")
def demo_features(demo_db, tmp_path_factory):
    out = once(tmp_path_factory, "demo_features",
               lambda d: str(build_features(demo_db, d / "features")))
    return tables.load(out)


@pytest.fixture(scope="session")
def demo_raw(demo_db):
    conn = store.connect(demo_db, readonly=True)
    try:
        return {"entries": store.read_entries(conn), "media": store.read_media(conn),
                "users": store.read_users(conn)}
    finally:
        conn.close()


@pytest.fixture(scope="session")
def tiny_features(tiny_db, tmp_path_factory) -> Path:
    return Path(once(tmp_path_factory, "tiny_features",
                     lambda d: str(build_features(tiny_db, d / "features"))))


def _trained(tmp_path_factory, name: str, train) -> tuple[Path, dict]:
    """``(model dir, metrics)`` of ``train(model dir) -> metrics``, made once per run."""
    def build(directory):
        return {"model": str(directory / "model"), "metrics": train(directory / "model")}

    value = once(tmp_path_factory, name, build)
    return Path(value["model"]), value["metrics"]


@pytest.fixture(scope="session")
def tiny_model(tiny_features, tmp_path_factory):
    """A two-tower model trained on the tiny world, saved as an artifact: (dir, metrics).
    Without the history: the tests of how well retrieval and the ranker learn were
    measured on it, and on the tiny world the history's effect is within the seeds'
    spread (test Recall@100 with / without, training seeds 0, 1, 2: 0.810 / 0.847,
    0.883 / 0.860, 0.820 / 0.830). ``tiny_history_model`` has it."""
    from pipelines import train_retrieval
    from pipelines.config import RetrievalConfig

    return _trained(tmp_path_factory, "tiny_model", lambda out: train_retrieval.run(
        tiny_features, out, RetrievalConfig(max_epochs=10, batch_size=256, history=False),
        ablation=False, progress=False))


@pytest.fixture(scope="session")
def tiny_history_model(tiny_features, tmp_path_factory):
    """The tiny world's two-tower model with the history (the default config): (dir,
    metrics)."""
    from pipelines import train_retrieval
    from pipelines.config import RetrievalConfig

    return _trained(tmp_path_factory, "tiny_history_model", lambda out: train_retrieval.run(
        tiny_features, out, RetrievalConfig(max_epochs=10, batch_size=256),
        ablation=False, progress=False))


@pytest.fixture(scope="session")
def tiny_ranked(tiny_model, tiny_features, tmp_path_factory):
    """A copy of the tiny model with a ranker added, and its ablation rankers' metrics:
    (dir, ranking metrics)."""
    from pipelines import train_ranking
    from pipelines.config import RankingConfig

    def train(model_dir):
        shutil.copytree(tiny_model[0], model_dir)
        return train_ranking.run(tiny_features, model_dir, RankingConfig(**TINY_RANKING),
                                 with_ablations=True, progress=False)

    return _trained(tmp_path_factory, "tiny_ranked", train)


@pytest.fixture(scope="session")
def tiny_scored(tiny_ranked, tiny_features, tmp_path_factory):
    """A copy of the ranked tiny model with a score head added: (dir, score metrics)."""
    from pipelines import train_scores
    from pipelines.config import ScoreConfig

    def train(model_dir):
        shutil.copytree(tiny_ranked[0], model_dir)
        return train_scores.run(tiny_features, model_dir, ScoreConfig(), progress=False)

    return _trained(tmp_path_factory, "tiny_scored", train)


@pytest.fixture(scope="session")
def default_model(demo_db, tmp_path_factory):
    """(features dir, model dir) of the default world (what `make run` trains
    ``data/model`` on), trained for one epoch each: the README's examples run on it."""
    from pipelines import train_ranking, train_retrieval, train_scores
    from pipelines.config import RankingConfig, RetrievalConfig, ScoreConfig

    def build(root):
        features_dir, model_dir = root / "features", root / "model"
        build_features(demo_db, features_dir)
        train_retrieval.run(features_dir, model_dir,
                            RetrievalConfig(max_epochs=1, validation_users=200),
                            ablation=False, progress=False)
        train_ranking.run(features_dir, model_dir, RankingConfig(max_epochs=1, max_lists_per_user=1),
                          compare_losses=False, with_ablations=False, progress=False)
        train_scores.run(features_dir, model_dir, ScoreConfig(max_epochs=1), progress=False)
        return {"features": str(features_dir), "model": str(model_dir)}

    value = once(tmp_path_factory, "default_model", build)
    return Path(value["features"]), Path(value["model"])


@pytest.fixture(scope="session")
def app_rec(tiny_scored):
    """The tiny model with its ranker and score head, loaded once for the service's tests
    (tests/test_app.py, tests/test_app_browser.py)."""
    from serving import Recommender

    return Recommender.from_pretrained(str(tiny_scored[0]))


@pytest.fixture(scope="session")
def anilist(tiny_db):
    """The stand-in AniList API serving the tiny world (the model's), names ``user<id>``."""
    from tests.anilist_server import AniListStandIn

    with AniListStandIn(tiny_db) as server:
        yield server
