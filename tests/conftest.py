"""Shared fixtures: small seeded synthetic worlds and their feature tables. The worlds'
sizes and the helpers that build them are in tests/worlds.py (import those from there);
the project root is on the path through pytest's ``pythonpath`` (pyproject.toml)."""

import json
from pathlib import Path

import pytest

from pipelines import features, store, tables
from tests.worlds import SMALL, TINY, TINY_RANKING, build_features, build_world


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory) -> Path:
    """A 400-user, 300-anime synthetic world (about 16k entries)."""
    return build_world(tmp_path_factory.mktemp("tiny") / "tiny.db", **TINY)


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory) -> Path:
    """The default demo world (3k users, 2k anime, ~320k entries): a few seconds."""
    return build_world(tmp_path_factory.mktemp("demo") / "demo.db")


@pytest.fixture(scope="session")
def small_schema(tmp_path_factory) -> dict:
    """The feature schema (schema.json) of the 50-user SMALL world: a real one, with
    every feature kind. Under a second."""
    root = tmp_path_factory.mktemp("small")
    out = build_features(build_world(root / "small.db", **SMALL), root / "features")
    return json.loads((out / features.SCHEMA_FILE).read_text())


@pytest.fixture(scope="session")
def demo_features(demo_db, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_features") / "features"
    return tables.load(build_features(demo_db, out))


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
    return build_features(tiny_db, tmp_path_factory.mktemp("tiny_features") / "features")


@pytest.fixture(scope="session")
def tiny_model(tiny_features, tmp_path_factory):
    """A two-tower model trained on the tiny world, saved as an artifact: (dir, metrics).
    Without the history: the tests of how well retrieval and the ranker learn were
    measured on it, and on the tiny world the history's effect is within the seeds'
    spread (test Recall@100 with / without, training seeds 0, 1, 2: 0.810 / 0.847,
    0.883 / 0.860, 0.820 / 0.830). ``tiny_history_model`` has it."""
    from pipelines import train_retrieval
    from pipelines.config import RetrievalConfig

    out = tmp_path_factory.mktemp("tiny_model") / "model"
    metrics = train_retrieval.run(tiny_features, out,
                                  RetrievalConfig(max_epochs=10, batch_size=256, history=False),
                                  ablation=False, progress=False)
    return out, metrics


@pytest.fixture(scope="session")
def tiny_history_model(tiny_features, tmp_path_factory):
    """The tiny world's two-tower model with the history (the default config): (dir,
    metrics)."""
    from pipelines import train_retrieval
    from pipelines.config import RetrievalConfig

    out = tmp_path_factory.mktemp("tiny_history_model") / "model"
    metrics = train_retrieval.run(tiny_features, out,
                                  RetrievalConfig(max_epochs=10, batch_size=256),
                                  ablation=False, progress=False)
    return out, metrics


@pytest.fixture(scope="session")
def tiny_ranked(tiny_model, tiny_features, tmp_path_factory):
    """A copy of the tiny model with a ranker added: (dir, ranking metrics)."""
    import shutil

    from pipelines import train_ranking
    from pipelines.config import RankingConfig

    model_dir = tmp_path_factory.mktemp("ranked") / "model"
    shutil.copytree(tiny_model[0], model_dir)
    metrics = train_ranking.run(tiny_features, model_dir, RankingConfig(**TINY_RANKING),
                                compare_losses=False, progress=False)
    return model_dir, metrics


@pytest.fixture(scope="session")
def tiny_scored(tiny_ranked, tiny_features, tmp_path_factory):
    """A copy of the ranked tiny model with a score head added: (dir, score metrics)."""
    import shutil

    from pipelines import train_scores
    from pipelines.config import ScoreConfig

    model_dir = tmp_path_factory.mktemp("scored") / "model"
    shutil.copytree(tiny_ranked[0], model_dir)
    metrics = train_scores.run(tiny_features, model_dir, ScoreConfig(), progress=False)
    return model_dir, metrics


@pytest.fixture(scope="session")
def default_model(demo_db, tmp_path_factory):
    """(features dir, model dir) of the default world (what `make run` trains
    ``data/model`` on), trained for one epoch each: the README's examples run on it."""
    from pipelines import train_ranking, train_retrieval, train_scores
    from pipelines.config import RankingConfig, RetrievalConfig, ScoreConfig

    root = tmp_path_factory.mktemp("default_model")
    features_dir, model_dir = root / "features", root / "model"
    build_features(demo_db, features_dir)
    train_retrieval.run(features_dir, model_dir, RetrievalConfig(max_epochs=1, validation_users=200),
                        ablation=False, progress=False)
    train_ranking.run(features_dir, model_dir, RankingConfig(max_epochs=1, max_lists_per_user=1),
                      compare_losses=False, with_ablations=False, progress=False)
    train_scores.run(features_dir, model_dir, ScoreConfig(max_epochs=1), progress=False)
    return features_dir, model_dir


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
