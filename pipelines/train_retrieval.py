"""Feature tables -> trained two-tower retrieval model, candidate index and metrics.

    python -m pipelines train-retrieval --features data/features --out data/model

Training: train-split interactions become (user row, anime row) index pairs in a
``tf.data`` pipeline that gathers each batch's raw features from constant tensors (no
per-example Python), in graph mode. After each epoch the validation users' Recall@K over
every title they have not seen is computed in numpy; training stops when it has not
improved for ``patience`` epochs and the best epoch's weights are kept.

Evaluation on the test split, for the model, a popularity baseline, EASE (closed-form
item-item, ``pipelines/baselines.py``) and (optionally) an id-only two-tower trained the
same way:
  - factorized top-K accuracy (TFRS's metric; the original system reported 0.14 @100):
    is the test title among the K best-scored of *all* titles?
  - Recall@K and NDCG@K ranking every title the user has not seen before the test
    period (train and validation entries excluded): the honest protocol;
  - the same for users with fewer than 10 training entries (where side features matter);
  - ScaNN (tree + asymmetric hashing) recall@100 against exact search on the same
    embeddings, and queries/s of both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from pipelines import __version__, atomic, baselines
from pipelines import features as feature_tables
from pipelines.config import RetrievalConfig
from pipelines.errors import InputError
from pipelines.formatting import num
from ranking.metrics import hits, ndcg_at_k, recall_at_k, top_k
from towers.features import (apply_in_blocks, feature_specs, input_signature,
                             multi_widths, raw_features)
from towers.index import CandidateIndex, IndexConfig, brute_force_top_k
from towers.model import TwoTowerModel

KS = (10, 50, 100)
FACTORIZED_KS = (1, 5, 10, 50, 100)
SHORT_HISTORY = 10  # users with fewer training entries than this: the cold-ish group


@dataclasses.dataclass
class Data:
    """Feature tables as arrays: raw features by row, and interactions as row pairs."""

    schema: dict
    users: pd.DataFrame
    anime: pd.DataFrame
    user_raw: dict
    anime_raw: dict
    widths: dict
    interactions: pd.DataFrame  # + user_row, anime_row

    @classmethod
    def load(cls, directory) -> "Data":
        tables = feature_tables.load(directory)
        schema, users, anime = tables["schema"], tables["users"], tables["anime"]
        widths = multi_widths(anime, schema)
        inter = tables["interactions"]
        inter = inter.assign(
            user_row=pd.Index(users["user_id"]).get_indexer(inter["user_id"]),
            anime_row=pd.Index(anime["media_id"]).get_indexer(inter["media_id"]))
        return cls(schema, users, anime,
                   raw_features(users, feature_specs(schema, "user"), widths),
                   raw_features(anime, feature_specs(schema, "anime"), widths),
                   widths, inter)

    def pairs(self, split: str, interactions_only: bool = True) -> pd.DataFrame:
        mask = self.interactions["split"] == split
        if interactions_only:
            mask &= self.interactions["is_interaction"]
        return self.interactions.loc[mask, ["user_row", "anime_row"]]

    def train_counts(self) -> np.ndarray:
        """Training interactions per title ``[num_anime]``: popularity as the models saw it."""
        return np.bincount(self.pairs("train")["anime_row"], minlength=len(self.anime))

    def matrix(self, rows: np.ndarray, pairs: pd.DataFrame) -> np.ndarray:
        """Dense bool ``[len(rows), num_anime]``: which titles each listed user has in ``pairs``."""
        position = pd.Series(np.arange(len(rows)), index=rows)
        sub = pairs[pairs["user_row"].isin(rows)]
        out = np.zeros((len(rows), len(self.anime)), bool)
        out[position[sub["user_row"]].to_numpy(), sub["anime_row"].to_numpy()] = True
        return out


def check_trainable(data: Data) -> None:
    """Raises an ``InputError`` naming the data problem, before any TensorFlow runs: a
    two-tower model needs several users and titles to learn from, and interactions in
    the validation split (early stopping) and the test split (evaluation)."""
    train = data.pairs("train")
    fix = "import more of the source (a recommender learns from what many users share)"
    for what, column in (("users", "user_row"), ("titles", "anime_row")):
        found = train[column].nunique()
        if found < 2:
            raise InputError(f"The training split has interactions of only {found} "
                             f"{what[:-1] if found == 1 else what}; the two-tower model needs "
                             f"at least 2: {fix}.")
    config = data.schema["config"]
    for split in ("validation", "test"):
        if data.pairs(split).empty:
            raise InputError(
                f"The {split} split has no interactions (statuses "
                f"{', '.join(config['interaction_statuses'])}): there is nothing to "
                f"{'stop early on' if split == 'validation' else 'evaluate on'}. Users are "
                f"split only with at least {config['min_entries_to_split']} entries and a "
                f"{split}_fraction above 0 (now {config[split + '_fraction']}); rebuild the "
                "features with `python -m pipelines features --min-entries-to-split N "
                f"--{split.replace('_', '-')}-fraction F`, or {fix}.")


def _dataset(data: Data, config: RetrievalConfig) -> tuple[tf.data.Dataset, int]:
    pairs = data.pairs("train")
    if pairs.empty:
        raise InputError("The training split has no interactions: nothing to train on.")
    counts = data.train_counts()
    probability = tf.constant(counts / counts.sum(), tf.float32)
    users = {k: tf.constant(v) for k, v in data.user_raw.items()}
    anime = {k: tf.constant(v) for k, v in data.anime_raw.items()}

    def gather(u, a):
        batch = {k: tf.gather(v, u) for k, v in users.items()}
        batch.update({k: tf.gather(v, a) for k, v in anime.items()})
        batch["sampling_probability"] = tf.gather(probability, a)
        return batch

    ds = (tf.data.Dataset.from_tensor_slices((pairs["user_row"].to_numpy(np.int32),
                                              pairs["anime_row"].to_numpy(np.int32)))
          .cache()
          .shuffle(len(pairs), seed=config.seed, reshuffle_each_iteration=True)
          .batch(config.batch_size)
          .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))
    return ds, len(pairs)


def _embed(tower, raw: dict, rows: np.ndarray | None = None, batch_size: int = 4096) -> np.ndarray:
    """Embeddings of the rows ``rows`` (default: all) of raw features by a Keras tower."""
    if rows is not None:
        raw = {k: v[rows] for k, v in raw.items()}
    names = [s["name"] for s in tower.encoder.specs]
    return apply_in_blocks(lambda batch: tower(batch).numpy(), raw, names, batch_size)


def rank_per_user(score_fn, data: Data, split: str, user_rows: np.ndarray | None = None,
                  ks=KS, batch_size: int = 1024) -> tuple[np.ndarray, dict]:
    """Per-user Recall@K / NDCG@K of ``score_fn(user_rows) -> [b, num_anime]`` on ``split``.

    Relevant: the user's interactions in ``split``. Excluded from the ranking: every
    entry (any status) the user has before ``split`` (train; and validation for test).
    Returns the user rows scored and ``{"recall@k": [users], "ndcg@k": [users]}`` (NaN
    for users with nothing relevant).
    """
    before = {"validation": ["train"], "test": ["train", "validation"]}[split]
    inter = data.interactions
    seen = inter.loc[inter["split"].isin(before), ["user_row", "anime_row"]]
    relevant_pairs = data.pairs(split)
    rows = np.unique(relevant_pairs["user_row"]) if user_rows is None else user_rows
    kmax = max(ks)
    per_user = {f"{m}@{k}": [] for m in ("recall", "ndcg") for k in ks}
    for start in range(0, len(rows), batch_size):
        r = rows[start:start + batch_size]
        relevant = data.matrix(r, relevant_pairs)
        exclude = data.matrix(r, seen)
        relevant &= ~exclude
        hit = hits(top_k(score_fn(r), kmax, exclude), relevant)
        n_rel = relevant.sum(1)
        for k in ks:
            per_user[f"recall@{k}"].append(recall_at_k(hit, n_rel, k))
            per_user[f"ndcg@{k}"].append(ndcg_at_k(hit, n_rel, k))
    return rows, {k: np.concatenate(v) if v else np.zeros(0) for k, v in per_user.items()}


def rank_metrics(score_fn, data: Data, split: str, user_rows: np.ndarray | None = None,
                 batch_size: int = 1024) -> dict:
    """Mean Recall@K / NDCG@K (K in ``KS``, see :func:`rank_per_user`) over users with at
    least one relevant title, overall and for users with fewer than ``SHORT_HISTORY``
    training entries."""
    rows, per_user = rank_per_user(score_fn, data, split, user_rows, KS, batch_size)
    kmax = max(KS)
    short = data.users["n_train"].to_numpy()[rows] < SHORT_HISTORY
    out = {k: float(np.nanmean(v)) for k, v in per_user.items()}
    out["users"] = int(np.isfinite(per_user[f"recall@{kmax}"]).sum())
    out["short_history"] = {k: float(np.nanmean(v[short])) if short.any() else None
                            for k, v in per_user.items()}
    out["short_history"]["users"] = int(np.isfinite(per_user[f"recall@{kmax}"][short]).sum())
    return out


def factorized_top_k(query: np.ndarray, candidates: np.ndarray, pairs: pd.DataFrame,
                     batch_size: int = 4096) -> dict:
    """TFRS FactorizedTopK on (user, title) pairs: share whose title is in the top K of
    all candidates (no exclusions), K in ``FACTORIZED_KS``. Ties count against the title."""
    u, a = pairs["user_row"].to_numpy(), pairs["anime_row"].to_numpy()
    ranks = []
    for start in range(0, len(u), batch_size):
        q = query[u[start:start + batch_size]]
        scores = q @ candidates.T
        true = scores[np.arange(len(q)), a[start:start + batch_size]]
        ranks.append((scores > true[:, None]).sum(1))  # 0 = best
    ranks = np.concatenate(ranks) if ranks else np.zeros(0)
    return {f"top_{k}": float((ranks < k).mean()) for k in FACTORIZED_KS}


class _EarlyStopping(tf.keras.callbacks.Callback):
    """Validation Recall@K after each epoch; keeps the best weights; stops on a plateau."""

    def __init__(self, data: Data, config: RetrievalConfig, bar):
        super().__init__()
        self.data, self.config, self.bar = data, config, bar
        rows = np.unique(data.pairs("validation")["user_row"])
        if config.validation_users and len(rows) > config.validation_users:
            rows = np.sort(np.random.default_rng(config.seed).choice(
                rows, config.validation_users, replace=False))
        self.rows = rows
        self.best, self.best_epoch, self.best_weights, self.history = -1.0, -1, None, []

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        candidates = _embed(model.candidate_tower, self.data.anime_raw)
        queries = _embed(model.query_tower, self.data.user_raw)
        metric = f"recall@{self.config.eval_k}"
        value = rank_metrics(lambda r: queries[r] @ candidates.T, self.data, "validation",
                             self.rows)[metric] if len(self.rows) else 0.0
        self.history.append({"epoch": epoch + 1, "loss": float(logs["loss"]),
                             f"validation_{metric}": value})
        if value > self.best:
            self.best, self.best_epoch, self.best_weights = value, epoch + 1, model.get_weights()
        elif epoch + 1 - self.best_epoch >= self.config.patience:
            model.stop_training = True
        self.bar.update()
        self.bar.set_postfix(loss=f"{logs['loss']:.3f}", **{f"val_{metric}": f"{value:.4f}"})


def train(data: Data, config: RetrievalConfig = RetrievalConfig(), *,
          progress: bool = True) -> tuple[TwoTowerModel, dict]:
    """Fits a two-tower model with early stopping. Returns the model (best weights) and
    a training summary (history, best epoch, examples/s)."""
    tf.keras.utils.set_random_seed(config.seed)
    ds, n_pairs = _dataset(data, config)
    model = TwoTowerModel(data.schema, config)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    bar = tqdm(total=config.max_epochs, desc=f"retrieval ({config.features})", unit="epoch",
               disable=not progress)
    stopper = _EarlyStopping(data, config, bar)
    start = time.perf_counter()
    fit_seconds = 0.0

    class _Timer(tf.keras.callbacks.Callback):  # training time without the validation pass
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            nonlocal fit_seconds
            fit_seconds += time.perf_counter() - self.t

    model.fit(ds, epochs=config.max_epochs, verbose=0, callbacks=[_Timer(), stopper])
    bar.close()
    model.set_weights(stopper.best_weights)
    epochs = len(stopper.history)
    return model, {
        "history": stopper.history, "best_epoch": stopper.best_epoch,
        "epochs": epochs, "train_pairs": n_pairs,
        "examples_per_second": round(n_pairs * epochs / fit_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }


def evaluate(model: TwoTowerModel, data: Data) -> dict:
    """Test-split metrics of a trained model."""
    candidates = _embed(model.candidate_tower, data.anime_raw)
    queries = _embed(model.query_tower, data.user_raw)
    return {"factorized": factorized_top_k(queries, candidates, data.pairs("test")),
            **rank_metrics(lambda r: queries[r] @ candidates.T, data, "test")}


def popularity_metrics(data: Data) -> dict:
    """The same protocol for "most popular in training" (ties broken by title order)."""
    return rank_metrics(baselines.popularity_scorer(data), data, "test")


def ease_metrics(data: Data) -> dict | None:
    """The same protocol for EASE, its lambda tuned on validation Recall@100 (None above
    ``baselines.MAX_EASE_TITLES`` titles)."""
    ease = baselines.fit_ease(data)
    if ease is None:
        return None
    return {**rank_metrics(ease["scorer"], data, "test"), "lambda": ease["lambda"],
            "validation_recall@100": {str(k): v for k, v in ease["validation_recall@100"].items()}}


def index_benchmark(candidates: np.ndarray, queries: np.ndarray, ids: np.ndarray,
                    k: int = 100) -> dict:
    """ScaNN (tree + AH, forced on whatever the catalog size) against exact brute force:
    recall@k of ScaNN's top-k against the exact top-k, and queries/s of both."""
    index = CandidateIndex.build(candidates, ids, IndexConfig(mode="ann", k=k))
    tick = time.perf_counter()
    exact = brute_force_top_k(queries, candidates, k)
    exact_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    approx_ids, _ = index.search(queries, k)
    scann_seconds = time.perf_counter() - tick
    exact_ids = ids[exact]
    found = min(k, len(ids))   # a catalog smaller than k: every title is the whole answer
    recall = np.mean([len(np.intersect1d(a, b)) / found for a, b in zip(approx_ids, exact_ids)])
    return {"k": k, "candidates": len(ids), "queries": len(queries),
            "scann_recall": float(recall), "settings": index.config.resolved(len(ids)),
            "scann_queries_per_second": round(len(queries) / scann_seconds, 1),
            "brute_force_queries_per_second": round(len(queries) / exact_seconds, 1)}


def export_tower(tower: tf.keras.Model, signature: dict, path: Path) -> None:
    """SavedModel with a ``serving_default`` signature: raw feature dict -> embedding."""

    @tf.function(input_signature=[signature])
    def serve(features):
        return {"embedding": tower(features)}

    # Keras warns that our subclassed towers have no get_config: they are restored as
    # SavedModel functions (load_tower), never re-instantiated from a config.
    level = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")
    try:
        tf.saved_model.save(tower, str(path), signatures={"serving_default": serve})
    finally:
        tf.get_logger().setLevel(level)


def load_tower(path: str | os.PathLike):
    """The ``serving_default`` function of an exported tower: ``fn(**features)``."""
    return tf.saved_model.load(str(path)).signatures["serving_default"]


def _versions() -> dict:
    import tensorflow_recommenders as tfrs
    from importlib.metadata import version

    return {"anirank": __version__, "tensorflow": tf.__version__,
            "tensorflow-recommenders": tfrs.__version__,
            "scann": version("scann"), "numpy": np.__version__, "pandas": pd.__version__}


def save_artifact(out: Path, model: TwoTowerModel, data: Data, features_dir: Path,
                  metrics: dict, config: RetrievalConfig) -> None:
    """Writes the model directory into a temporary sibling and renames it into place."""
    with atomic.directory(out) as tmp:
        schema = data.schema
        export_tower(model.query_tower,
                     input_signature(feature_specs(schema, "user", config.features), schema,
                                     data.widths), tmp / "query_tower")
        export_tower(model.candidate_tower,
                     input_signature(feature_specs(schema, "anime", config.features), schema,
                                     data.widths), tmp / "candidate_tower")
        candidates = _embed(model.candidate_tower, data.anime_raw)
        CandidateIndex.build(candidates, data.anime["media_id"].to_numpy(),
                             IndexConfig()).save(tmp / "index")
        shutil.copy(features_dir / "anime.parquet", tmp / "anime.parquet")
        # What serving needs to recommend for known users: their features and every
        # title already on their lists (to exclude). (User-level data: publish with care.)
        shutil.copy(features_dir / "users.parquet", tmp / "users.parquet")
        data.interactions[["user_id", "media_id"]].to_parquet(tmp / "seen.parquet", index=False)
        config_json = {"feature_schema": schema, "multi_widths": data.widths,
                       "retrieval": config.to_dict(), "index": dataclasses.asdict(IndexConfig()),
                       "versions": _versions(), "data_fingerprint": schema["fingerprint"]}
        (tmp / "metrics.json").write_text(json.dumps({"retrieval": metrics}, indent=2, sort_keys=True))
        # config.json last: its presence marks a complete artifact.
        (tmp / "config.json").write_text(json.dumps(config_json, indent=2, sort_keys=True))


def run(features: str | os.PathLike = "data/features", out: str | os.PathLike = "data/model",
        config: RetrievalConfig = RetrievalConfig(), *, ablation: bool = True,
        progress: bool = True) -> dict:
    """Stage function behind ``python -m pipelines train-retrieval``.

    Returns:
      The metrics written to ``<out>/metrics.json`` under ``retrieval``.
    """
    features = Path(features)
    data = Data.load(features)
    check_trainable(data)
    model, training = train(data, config, progress=progress)
    metrics = {"model": evaluate(model, data), "training": training,
               "config": config.to_dict(), "popularity": popularity_metrics(data),
               "ease": ease_metrics(data)}
    if ablation and config.features != "ids":
        ids_config = dataclasses.replace(config, features="ids")
        ids_model, ids_training = train(data, ids_config, progress=progress)
        metrics["ids_only"] = evaluate(ids_model, data)
        metrics["ids_only"]["training"] = ids_training
    candidates = _embed(model.candidate_tower, data.anime_raw)
    test_rows = np.unique(data.pairs("test")["user_row"])
    metrics["index"] = index_benchmark(candidates, _embed(model.query_tower, data.user_raw, test_rows),
                                       data.anime["media_id"].to_numpy())
    save_artifact(Path(out), model, data, features, metrics, config)
    return metrics


def format_metrics(metrics: dict) -> str:
    """A small table of the headline numbers."""
    rows = [("two-tower", metrics["model"])]
    if "ids_only" in metrics:
        rows.append(("two-tower, ids only", metrics["ids_only"]))
    rows.append(("most popular", metrics["popularity"]))
    if metrics.get("ease"):
        rows.append((f"EASE (lambda {metrics['ease']['lambda']:g})", metrics["ease"]))
    lines = [f"{'test split':<22}{'R@10':>8}{'R@50':>8}{'R@100':>8}{'N@10':>8}{'N@100':>8}"
             f"{'R@100 <10 train':>17}"]
    for name, m in rows:
        lines.append(f"{name:<22}" + "".join(num(m[k], width=8) for k in (
            "recall@10", "recall@50", "recall@100", "ndcg@10", "ndcg@100"))
            + num(m["short_history"]["recall@100"], width=17))
    f = metrics["model"]["factorized"]
    lines.append("factorized top-K accuracy: " + "  ".join(f"@{k[4:]} {num(v)}" for k, v in f.items()))
    t, i = metrics["training"], metrics["index"]
    lines.append(f"training: {t['epochs']} epochs (best {t['best_epoch']}), "
                 f"{t['examples_per_second']:,.0f} examples/s")
    lines.append(f"ScaNN recall@{i['k']} vs brute force {num(i['scann_recall'])}; "
                 f"queries/s ScaNN {i['scann_queries_per_second']:,.0f}, "
                 f"brute force {i['brute_force_queries_per_second']:,.0f}")
    return "\n".join(lines)
