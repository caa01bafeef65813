"""The test worlds: sizes of the seeded synthetic worlds the fixtures (conftest.py) and
tests build, and the helpers that build a world and its feature tables.

Import from here (``from tests.worlds import TINY``), never from conftest.py: pytest
imports conftest itself, and a second import under another name would define its
fixtures twice.
"""

from __future__ import annotations

from pathlib import Path

from pipelines import features, synth

# 400 users, 300 anime, about 16k entries: the world of the trained tiny model.
TINY = dict(users=400, anime=300, entries_per_user=40, seed=7)

# A ranker trained on the tiny world in seconds.
# EASE candidates on (off by default): the tests exercise both candidate generators.
TINY_RANKING = dict(labelled_per_list=5, negatives_per_list=10, max_lists_per_user=2,
                    max_epochs=6, batch_size=64, ease_candidates=20)

# 50 users, 40 anime, about 400 entries: a real schema (every feature kind, the
# genre/format crosses) in well under a second, for unit tests of the models.
SMALL = dict(users=50, anime=40, entries_per_user=10, seed=0)


def build_world(db: Path, **sizes) -> Path:
    """A seeded synthetic raw store at ``db`` (``sizes``: ``synth.run``'s, e.g. TINY)."""
    synth.run(db, progress=False, **sizes)
    return db


def build_features(db: Path, out: Path) -> Path:
    """The feature tables of the store ``db``, written to ``out`` (default config)."""
    features.run(db, out, progress=False)
    return out
