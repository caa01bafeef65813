"""The model directory: what a complete one is, how it is written and changed, and how
its SavedModels and retrieval half are loaded back.

    model/
      config.json            feature schema, configs, versions, data fingerprint (its
                             presence marks a complete directory: written last)
      metrics.json           every number about this model: "retrieval" (training stage),
                             "ranking" (ranking stage), "scores" (score stage),
                             "evaluation" (the report)
      query_tower/           SavedModel: raw user features -> embedding
      candidate_tower/       SavedModel: raw title features -> embedding
      index/                 CandidateIndex over every title
      anime.parquet, users.parquet, seen.parquet   what serving needs (seen: every
                             title on each user's lists; ``history``: the training
                             interactions, EASE's and the franchise signal's input;
                             anime: the titles' relations too, where the source has them)
      ease.npy               EASE's title x title weights (float32), the second candidate
                             generator (absent above ``baselines.MAX_EASE_TITLES`` titles)
      ranker/                SavedModel (after the ranking stage)
      scorer/                SavedModel: raw user + title features -> predicted score
                             (after the score stage)
      report/                report.md and plots (after evaluate)
      manifest.json          every other file's size and sha256, written with each swap

Every write is one atomic directory swap (``create`` for the first, ``update`` for each
later stage), so a crash leaves the previous complete directory, never a mix. Each swap
writes the manifest last, and serving checks it before it loads anything
(``check_manifest``): a missing, truncated or altered file is named, never served. Nothing
written here holds an absolute path: the directory is published as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import __version__, atomic
from pipelines.errors import InputError
from pipelines.candidates import Generator
from pipelines.config import EASE_SIGNALS, RELATION_SIGNALS
from pipelines.protocol import Candidates, seen_before
from pipelines.tables import FeatureTables, related_rows
from towers.features import apply_in_blocks, feature_specs, raw_features, raw_names
from towers.index import CandidateIndex

CONFIG, METRICS, EASE, MANIFEST = "config.json", "metrics.json", "ease.npy", "manifest.json"
# A directory with all of these can be served and published; ranker/ is optional.
REQUIRED = (CONFIG, METRICS, "anime.parquet", "users.parquet", "seen.parquet",
            "query_tower/saved_model.pb", "candidate_tower/saved_model.pb",
            "index/index_config.json", "index/candidate_ids.npy",
            "index/candidate_embeddings.npy")
# Feature-schema keys that describe this machine, not the model: never published.
LOCAL_KEYS = ("source_db",)


def check_complete(model_dir: Path) -> None:
    """Raises ``InputError`` naming the missing files of an incomplete model directory."""
    missing = [f for f in REQUIRED if not (model_dir / f).exists()]
    if missing:
        raise InputError(f"{model_dir} is not a complete anirank model: missing {missing}. Train it "
                         "with `python -m pipelines train-retrieval` (or download it again).")


def read_json(model_dir: Path, name: str) -> dict:
    """``config.json`` / ``metrics.json`` of a model directory, or a named error."""
    path = model_dir / name
    if not path.exists():
        raise InputError(f"{model_dir} has no {name}: train the retrieval model first "
                         "(`python -m pipelines train-retrieval`).")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise InputError(f"{path} is corrupt ({err}); retrain or download the model again.") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is corrupt (not a JSON object); retrain or download the "
                         "model again.")
    return data


def read_file(path: Path, reader):
    """``reader(path)`` for a file of a model, or an InputError naming the file: a
    damaged one (say, saved again over a bad copy, so its manifest agrees) is named,
    never a numpy, Arrow or JSON traceback."""
    try:
        return reader(path)
    except (ValueError, OSError, EOFError, KeyError, TypeError) as err:
        raise InputError(f"{path} cannot be read ({type(err).__name__}: {str(err)[:120]}): "
                         "the model is damaged; download it again or retrain it.") from None


def write_json(directory: Path, name: str, data: dict) -> None:
    (directory / name).write_text(json.dumps(data, indent=2, sort_keys=True))


def versions() -> dict:
    """The library versions a model was made with (checked when it is loaded)."""
    from importlib.metadata import version

    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    return {"anirank": __version__, "tensorflow": tf.__version__,
            "tensorflow-recommenders": tfrs.__version__, "scann": version("scann"),
            "numpy": np.__version__, "pandas": pd.__version__}


def check_versions(config: dict, model_dir: Path) -> None:
    """A SavedModel loads only into the TensorFlow minor version that wrote it (or a
    later one, not reliably): refuse a mismatch with the fix, not a TF traceback."""
    import tensorflow as tf

    saved = config.get("versions", {}).get("tensorflow", "")
    if saved.split(".")[:2] != tf.__version__.split(".")[:2]:
        raise InputError(f"{model_dir} was saved with TensorFlow {saved}; this is "
                         f"{tf.__version__}. Install tensorflow=={saved} to load it.")


def published_schema(schema: dict) -> dict:
    """The feature schema as config.json carries it: without this machine's paths."""
    return {k: v for k, v in schema.items() if k not in LOCAL_KEYS}


@contextlib.contextmanager
def create(model_dir: str | os.PathLike) -> Iterator[Path]:
    """``with create(model_dir) as tmp:`` the first write of a model directory (the
    retrieval stage): ``tmp`` replaces ``model_dir`` whole when the block succeeds."""
    with atomic.directory(model_dir) as tmp:
        yield tmp
        write_manifest(tmp)


@contextlib.contextmanager
def update(model_dir: str | os.PathLike) -> Iterator[Path]:
    """``with update(model_dir) as tmp:`` a later stage's change: ``tmp`` starts as a copy
    of the complete directory, and replaces it in one swap when the block succeeds (a
    crash leaves the old directory as it was)."""
    model_dir = Path(model_dir)
    check_complete(model_dir)
    with atomic.directory(model_dir) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        yield tmp
        write_manifest(tmp)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(model_dir: str | os.PathLike) -> None:
    """``manifest.json``: the size and sha256 of every other file of the directory
    (hidden files apart: ``publish`` leaves them out of a Hub commit too)."""
    model_dir = Path(model_dir)
    files = {}
    for path in sorted(model_dir.rglob("*")):
        name = path.relative_to(model_dir).as_posix()
        if path.is_file() and name != MANIFEST and not any(
                part.startswith(".") for part in path.relative_to(model_dir).parts):
            files[name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    write_json(model_dir, MANIFEST, {"files": files})


def check_manifest(model_dir: str | os.PathLike) -> None:
    """Raises ``InputError`` naming the first file of the manifest that is missing,
    of another size (truncated) or of other content than the model was saved with.
    Files the manifest does not list (a Hub repo's README.md) are not the model's.

    Raises:
      InputError: the damaged file, or a directory without a manifest, and the fix.
    """
    model_dir = Path(model_dir)
    again = "download the model again or retrain it"
    if not (model_dir / MANIFEST).exists():
        raise InputError(
            f"{model_dir} has no {MANIFEST} (the size and sha256 of its files): it was saved "
            "by an earlier anirank or is not a complete model; retrain it, or, if you "
            "trust its files, write one with `python -c \"from pipelines.artifact import "
            f"write_manifest; write_manifest('{model_dir}')\"`.")
    files = read_json(model_dir, MANIFEST).get("files")
    if not isinstance(files, dict) or not files:
        raise InputError(f"{model_dir / MANIFEST} lists no files: it is corrupt; {again}.")
    for name, expected in files.items():
        path = model_dir / name
        if not path.is_file():
            raise InputError(f"{path} is missing from the model ({MANIFEST} lists it); {again}.")
        size = path.stat().st_size
        if size != expected["size"]:
            raise InputError(f"{path} is damaged: {size:,} bytes, saved with "
                             f"{expected['size']:,} ({'truncated' if size < expected['size'] else 'grown'}); "
                             f"{again}.")
        if _sha256(path) != expected["sha256"]:
            raise InputError(f"{path} is damaged: its content is not the one the model was "
                             f"saved with (sha256 differs); {again}.")


def load_saved_model(path: Path):
    """A loaded SavedModel, or a named error instead of TensorFlow's traceback. Keep the
    object, not only its signatures: the signatures read its variables, and functions
    traced over them later fail once it is garbage collected."""
    import tensorflow as tf

    try:
        return tf.saved_model.load(str(path))
    except Exception as err:  # TF raises many types for a damaged SavedModel
        raise InputError(f"{path} is missing or corrupt and cannot be loaded as a SavedModel "
                         f"({type(err).__name__}); download the model again or retrain it.") from None


def export_saved_model(obj, path: Path, signatures: dict) -> None:
    """``tf.saved_model.save`` with the given signatures. Our Keras models have no
    get_config on purpose (they are restored as SavedModel functions, never rebuilt
    from a config), so Keras's warning about it is kept out of the log.

    Only the signatures are traced: Keras would also trace every layer's call for
    reviving the layers in Keras (``model.save(save_traces=False)`` turns that off; this
    is its switch), which nothing here loads. The variables, lookup tables and signatures
    are saved alike."""
    import tensorflow as tf
    from tf_keras.src.saving.legacy.saved_model import utils as keras_saving

    level = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")
    try:
        with keras_saving.keras_option_scope(save_traces=False, in_tf_saved_model_scope=True):
            tf.saved_model.save(obj, str(path), signatures=signatures)
    finally:
        tf.get_logger().setLevel(level)


class RetrievalArtifact:
    """The retrieval half of a model directory, loaded: config, the candidate index (with
    the candidate embeddings), the query tower and the user and title tables.

    Used by the ranking stage, the report and serving, so all three load it alike."""

    def __init__(self, model_dir: str | os.PathLike):
        self.directory = Path(model_dir)
        check_complete(self.directory)
        self.config = read_json(self.directory, CONFIG)
        if "feature_schema" not in self.config or "retrieval" not in self.config:
            raise InputError(f"{self.directory}/{CONFIG} is not an anirank model config; "
                             "retrain or download the model again.")
        check_versions(self.config, self.directory)
        self.schema = self.config["feature_schema"]
        self.widths = self.config["multi_widths"]
        self.anime = read_file(self.directory / "anime.parquet", pd.read_parquet)
        self.users = read_file(self.directory / "users.parquet", pd.read_parquet)
        self.index = read_file(self.directory / "index", CandidateIndex.load)
        if not np.array_equal(self.index.ids, self.anime["media_id"].to_numpy()):
            raise InputError(f"{self.directory}/index does not match anime.parquet; the "
                             "model is corrupt.")
        self.candidate_embeddings = self.index.embeddings
        self.saved = {"query_tower": load_saved_model(self.directory / "query_tower")}
        self.query_tower = self.saved["query_tower"].signatures["serving_default"]
        retrieval = self.config["retrieval"]
        self.user_specs = feature_specs(self.schema, "user", retrieval["features"],
                                        retrieval.get("history", True))

    def embed_users(self, user_raw: dict) -> np.ndarray:
        """Query embeddings ``[n, d]`` of users given as raw features."""
        return apply_in_blocks(lambda batch: self.query_tower(**batch)["embedding"], user_raw,
                               raw_names(self.user_specs))

    def embed_titles(self, anime: pd.DataFrame) -> np.ndarray:
        """Candidate embeddings ``[n, d]`` of titles given as ``anime.parquet`` rows, by
        the saved candidate tower: titles the model never saw (ids out of its vocabulary)
        are placed by their metadata (``RetrievalConfig.cold_start_dropout``)."""
        if "candidate_tower" not in self.saved:
            self.saved["candidate_tower"] = load_saved_model(self.directory / "candidate_tower")
        retrieval = self.config["retrieval"]
        specs = feature_specs(self.schema, "anime", retrieval["features"],
                              retrieval.get("history", True))
        tower = self.saved["candidate_tower"].signatures["serving_default"]
        return apply_in_blocks(lambda batch: tower(**batch)["embedding"],
                               raw_features(anime, specs, self.widths), raw_names(specs))

    def for_tables(self, tables: FeatureTables) -> "RetrievalArtifact":
        """Checks the model was trained on ``tables`` and embeds their users
        (``self.queries``, one row per ``tables.users`` row). Returns self."""
        if self.config["data_fingerprint"] != tables.schema["fingerprint"]:
            raise InputError(
                f"The retrieval model in {self.directory} was trained on other data "
                f"(fingerprint {self.config['data_fingerprint']}, features have "
                f"{tables.schema['fingerprint']}); retrain it on these feature tables.")
        if not np.array_equal(self.index.ids, tables.anime["media_id"].to_numpy()):
            raise InputError("The candidate index does not cover the feature tables' titles.")
        self.queries = self.embed_users(tables.user_raw)
        return self

    def load_ease(self) -> np.ndarray | None:
        """EASE's weights ``[n, n]`` float32 (in memory: read at random per request; 1.6 GB
        at the 20,000-title ceiling), or None for a model without them (too many titles,
        or a model from before the hybrid candidates)."""
        if not hasattr(self, "_ease"):   # read once: every generator of this model shares it
            path = self.directory / EASE
            weights = read_file(path, lambda p: np.load(p, allow_pickle=False)) if path.exists() else None
            if weights is not None and weights.shape != (len(self.anime), len(self.anime)):
                raise InputError(f"{path} has shape {weights.shape}, not {len(self.anime)} x "
                                 f"{len(self.anime)} titles; the model is corrupt.")
            self._ease = weights
        return self._ease

    def relations(self) -> np.ndarray | None:
        """Each title's related rows (``tables.related_rows``: the franchise signal's
        input), or None for a catalog without relations."""
        if not hasattr(self, "_relations"):   # once per model, as EASE's weights
            self._relations = related_rows(self.anime, self.schema)
        return self._relations

    def generator(self, k: int, k_ease: int = 0, ease: bool = True,
                  signals: tuple[str, ...] | None = None) -> Generator:
        """The candidate generators of this model: the two-tower's top ``k`` and (with
        ``ease`` and weights saved) EASE's top ``k_ease``, computing ``signals`` (None:
        all this model has)."""
        relations = (self.relations() if signals is None or set(RELATION_SIGNALS) & set(signals)
                     else None)
        return Generator(self.index, self.load_ease() if ease else None, k, k_ease, signals,
                         relations)

    def ranker_generator(self, config) -> Generator:
        """The candidate generators a ranker with ``RankingConfig`` ``config`` reorders:
        the two-tower's top ``num_candidates`` and, where the ranker reads EASE or EASE
        adds titles, EASE's."""
        ease = config.ease_candidates > 0 or any(s in EASE_SIGNALS for s in config.signals)
        return self.generator(config.num_candidates, config.ease_candidates, ease=ease,
                              signals=config.signals)

    def _split_inputs(self, tables: FeatureTables, split: str) -> tuple[list, list]:
        """Per user row of ``tables``: the history, EASE's and the franchise signal's input
        (training interaction rows), and what a ranking for ``split`` leaves out
        (candidate ids of every entry before it)."""
        media = tables.anime["media_id"].to_numpy()
        by_user = seen_before(tables, split).groupby("user_row")["anime_row"].agg(list)
        exclude = [media[by_user.get(u, [])] for u in range(len(tables.users))]
        train = tables.pairs("train").groupby("user_row")["anime_row"].agg(list)
        histories = [np.asarray(train.get(u, []), np.int64) for u in range(len(tables.users))]
        return histories, exclude

    def candidates(self, tables: FeatureTables, split: str, generator: Generator) -> Candidates:
        """Per user row of ``tables``: the candidates for ``split`` (every title the user
        had before it left out) with their signals."""
        histories, exclude = self._split_inputs(tables, split)
        return generator(self.queries, histories, exclude)

    def signals_for(self, tables: FeatureTables, split: str, generator: Generator,
                    user_rows: np.ndarray, anime_rows: np.ndarray) -> dict:
        """The candidate signals of any titles ``anime_rows`` ``[n, size]`` for
        ``user_rows`` ``[n]`` (e.g. held-out lists), ranks as on ``split``."""
        histories, exclude = self._split_inputs(tables, split)
        return generator.signals_for(self.queries[user_rows], [histories[u] for u in user_rows],
                                     [exclude[u] for u in user_rows], anime_rows).signals


# What each served order is, in words (``config.json["serving"]["order"]``), and its
# name in the end-to-end tables (``protocol.end_to_end``'s orders).
ORDER_NAMES = {"ranked": "the ranker", "blend": "the linear blend of the candidates' signals",
               "ease": "EASE's order", "retrieval": "retrieval order"}
ORDER_KEYS = {"ranked": "ranked", "blend": "blend", "ease": "ease_order",
              "retrieval": "retrieval_order"}


def served_order(config: dict) -> dict:
    """What the model serves: ``{"order": one of ORDER_NAMES, "why": str}`` from
    ``config.json``. The ranking stage writes it (``train_ranking.serving_decision``):
    the ranker or the blend only where it beat the better of EASE's and retrieval order
    on validation; models from before it serve the ranker when they have one."""
    if "serving" in config:
        return config["serving"]
    if config.get("ranking"):
        return {"order": "ranked", "why": "a model from before the ranking stage decided"}
    return {"order": "retrieval", "why": "the model has no ranker"}


def load_ranker(model_dir: Path):
    """``(saved model, serving_default signature)`` of the model's ranker, or
    ``(None, None)`` for a model without one."""
    if not (model_dir / "ranker").exists():
        return None, None
    saved = load_saved_model(model_dir / "ranker")
    return saved, saved.signatures["serving_default"]


def score_lists(signature, user_raw: dict, anime_raw: dict, user_rows: np.ndarray,
                anime_rows: np.ndarray, signals: dict, batch_size: int = 256) -> np.ndarray:
    """Scores ``[n, size]`` of padded lists (padding scored: mask it) by a saved ranker's
    ``serving_default`` signature: list ``i`` is user ``user_rows[i]`` of ``user_raw``
    with the titles ``anime_rows[i]`` of ``anime_raw`` (-1 = padding) and their candidate
    ``signals`` (``{name: [n, size]}``; the ones the ranker takes are passed). The report
    scores held-out lists with it; serving, a model without the factorised signatures."""
    import tensorflow as tf

    inputs = {spec.name for spec in signature.structured_input_signature[1].values()}
    missing = sorted(inputs - set(user_raw) - set(anime_raw) - set(signals))
    if missing:
        raise InputError(f"The ranker takes inputs {missing} that were not computed; the "
                         "model directory is inconsistent (retrain the ranking stage).")
    out = [np.zeros((0, anime_rows.shape[1]), np.float32)]
    for start in range(0, len(user_rows), batch_size):
        part = slice(start, start + batch_size)
        users, rows = user_rows[part], np.maximum(anime_rows[part], 0)
        batch = {k: v[users] for k, v in user_raw.items() if k in inputs}
        batch.update({k: v[rows] for k, v in anime_raw.items() if k in inputs})
        batch.update({k: v[part].astype(np.float32) for k, v in signals.items() if k in inputs})
        out.append(signature(**{k: tf.constant(v) for k, v in batch.items()})["scores"].numpy())
    return np.concatenate(out)


def load_scorer(model_dir: Path):
    """``(saved model, serving_default signature)`` of the model's score head
    (``scorer/``, written by the score stage), or ``(None, None)`` for a model without one."""
    if not (model_dir / "scorer").exists():
        return None, None
    saved = load_saved_model(model_dir / "scorer")
    return saved, saved.signatures["serving_default"]


def predict_pairs(signature, user_raw: dict, anime_raw: dict, user_rows: np.ndarray,
                  anime_rows: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Predicted scores ``[n]`` (float32, POINT_100, in [1, 100]) of the pairs (user
    ``user_rows[i]`` of ``user_raw``, title ``anime_rows[i]`` of ``anime_raw``) by a saved
    score head's ``serving_default`` signature."""
    import tensorflow as tf

    inputs = {spec.name for spec in signature.structured_input_signature[1].values()}
    out = [np.zeros(0, np.float32)]
    for start in range(0, len(user_rows), batch_size):
        users, titles = user_rows[start:start + batch_size], anime_rows[start:start + batch_size]
        batch = {k: v[users] for k, v in user_raw.items() if k in inputs}
        batch.update({k: v[titles] for k, v in anime_raw.items() if k in inputs})
        out.append(signature(**{k: tf.constant(v) for k, v in batch.items()})
                   ["predicted_score"].numpy())
    return np.concatenate(out)
