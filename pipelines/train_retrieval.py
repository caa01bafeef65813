"""Feature tables -> trained two-tower retrieval model, candidate index and metrics.

    python -m pipelines train-retrieval --features data/features --out data/model

Training: train-split interactions become (user row, anime row) index pairs in a
``tf.data`` pipeline that gathers each batch's raw features from constant tensors (no
per-example Python), in graph mode. The pairs are held in memory and shuffled over all
of them (``--input memory``, the default on one machine), or written once to shard files
and streamed through a bounded shuffle buffer (``--input stream``); with ``TF_CONFIG``
naming several processes, each streams its own share under
``MultiWorkerMirroredStrategy`` (``pipelines/distribution.py``) and only the chief
evaluates and writes the model. After each epoch the validation users' Recall@K over
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

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from pipelines import artifact, baselines, distribution, fitting, protocol
from pipelines.arrays import find_sorted
from pipelines.config import RetrievalConfig
from pipelines.errors import InputError
from pipelines.features import covered
from pipelines.formatting import RETRIEVAL_COLUMNS, num, retrieval_rows, table
from pipelines.tables import FeatureTables
from towers.features import apply_in_blocks, feature_specs, input_signature
from towers.index import CandidateIndex, IndexConfig, ann_benchmark
from towers.model import TwoTowerModel

# Where the training pairs come from (``input_mode``).
INPUTS = ("auto", "memory", "stream")


def check_trainable(tables: FeatureTables) -> None:
    """Raises an ``InputError`` naming the data problem, before any TensorFlow runs: a
    two-tower model needs several users and titles to learn from, and interactions in
    the validation split (early stopping) and the test split (evaluation)."""
    train = tables.pairs("train")
    fix = "import more of the source (a recommender learns from what many users share)"
    for what, column in (("users", "user_row"), ("titles", "anime_row")):
        found = train[column].nunique()
        if found < 2:
            raise InputError(f"The training split has interactions of only {found} "
                             f"{what[:-1] if found == 1 else what}; the two-tower model needs "
                             f"at least 2: {fix}.")
    config = tables.schema["config"]
    split_info = tables.schema.get("split") or {}
    # Walk-forward tables have no validation split, the served model's none at all: their
    # settings come from elsewhere.
    held_out = (() if split_info.get("final") else ("test",) if split_info.get("fold_validation")
                else ("validation", "test"))
    for split in held_out:
        if not tables.pairs(split).empty:
            continue
        why = (f"The {split} split has no interactions (statuses "
               f"{', '.join(config['interaction_statuses'])}): there is nothing to "
               f"{'stop early on' if split == 'validation' else 'evaluate on'}.")
        if split_info.get("protocol") == "as_of":
            period = split_info["periods"][split]
            raise InputError(
                f"{why} The {split} period runs from {period[0]} to {period[1]}; rebuild the "
                "features with another `--as-of DATE` or `--horizon-days N` (`python -m "
                f"pipelines features --help`), or {fix}.")
        raise InputError(
            f"{why} Users are split only with at least {config['min_entries_to_split']} "
            f"entries and a {split}_fraction above 0 (now {config[split + '_fraction']}); "
            "rebuild the features with `python -m pipelines features --min-entries-to-split "
            f"N --{split}-fraction F`, or {fix}.")


def batch_features(tables: FeatureTables):
    """``to_batch(user_rows, anime_rows)``: a batch's raw features gathered from the
    feature tables held as constant tensors (+ each title's sampling probability for
    logQ). The one place a training batch is built, whatever feeds it the rows."""
    counts = tables.train_counts()
    probability = tf.constant(counts / counts.sum(), tf.float32)
    users, anime = fitting.constants(tables.user_raw), fitting.constants(tables.anime_raw)

    def to_batch(u, a):
        return {**fitting.gather(users, u), **fitting.gather(anime, a),
                "sampling_probability": tf.gather(probability, a)}

    return to_batch


def training_dataset(tables: FeatureTables, config: RetrievalConfig) -> tuple[tf.data.Dataset, int]:
    """Shuffled batches of the training interactions' raw features, every pair held in
    memory and shuffled over all of them (the ``memory`` input), and how many pairs an
    epoch has."""
    pairs = tables.pairs("train")
    to_batch = batch_features(tables)
    slices = (pairs["user_row"].to_numpy(np.int32), pairs["anime_row"].to_numpy(np.int32))
    return fitting.index_dataset(slices, to_batch, config.batch_size, config.seed), len(pairs)


def write_training_pairs(tables: FeatureTables, directory: Path, seed: int,
                         workers: int = 1) -> list[str]:
    """The training pairs as shard files for the ``stream`` input (``fitting``), split
    into a multiple of ``workers`` files."""
    pairs = tables.pairs("train")
    return fitting.write_pair_shards((pairs["user_row"].to_numpy(np.int32),
                                      pairs["anime_row"].to_numpy(np.int32)),
                                     directory, seed, groups=workers)


def input_mode(requested: str, where: distribution.Cluster) -> str:
    """The input a training reads: ``memory`` (every pair in this process, shuffled over
    all of them: the default on one machine, the README's numbers) or ``stream`` (shard
    files, a bounded shuffle buffer; ``auto`` picks it for several workers)."""
    if requested not in INPUTS:
        raise InputError(f"`input` must be one of {list(INPUTS)}. Received: {requested!r}.")
    if requested == "auto":
        return "stream" if where.size > 1 else "memory"
    if requested == "memory" and where.size > 1:
        raise InputError(f"{distribution.VARIABLE} names {where.size} processes, but the "
                         "`memory` input gives each of them every pair; use `--input stream` "
                         "(or `auto`, the default) to split the pairs between them.")
    return requested


def embed(tower, raw: dict, rows: np.ndarray | None = None, batch_size: int = 4096) -> np.ndarray:
    """Embeddings of the rows ``rows`` (default: all) of raw features by a Keras tower."""
    if rows is not None:
        raw = {k: v[rows] for k, v in raw.items()}
    names = tower.encoder.raw_names
    return apply_in_blocks(lambda batch: tower(batch).numpy(), raw, names, batch_size)


class _EarlyStopping(tf.keras.callbacks.Callback):
    """Validation Recall@K after each epoch, into ``fitting.EarlyStopping``."""

    def __init__(self, tables: FeatureTables, config: RetrievalConfig, bar):
        super().__init__()
        self.tables, self.config, self.bar = tables, config, bar
        rows = np.unique(tables.pairs("validation")["user_row"])
        if config.validation_users and len(rows) > config.validation_users:
            rows = np.sort(np.random.default_rng(config.seed).choice(
                rows, config.validation_users, replace=False))
        self.rows = rows
        self.stopping = fitting.EarlyStopping(config.patience)
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        candidate_embeddings = embed(model.candidate_tower, self.tables.anime_raw)
        queries = embed(model.query_tower, self.tables.user_raw)
        metric = f"recall@{self.config.eval_k}"
        value = protocol.rank_metrics(lambda r: queries[r] @ candidate_embeddings.T,
                                      self.tables, "validation", self.rows)[metric]
        self.history.append({"epoch": epoch + 1, "loss": float(logs["loss"]),
                             f"validation_{metric}": value})
        if self.stopping.update(epoch + 1, value, model.get_weights):
            model.stop_training = True
        self.bar.update()
        self.bar.set_postfix(loss=f"{logs['loss']:.3f}", **{f"val_{metric}": f"{value:.4f}"})


class _FixedEpochs(tf.keras.callbacks.Callback):
    """A refit's epochs: the loss of each, no validation pass (``train(epochs=N)``)."""

    def __init__(self, bar):
        super().__init__()
        self.bar, self.history = bar, []

    def on_epoch_end(self, epoch, logs=None):
        self.history.append({"epoch": epoch + 1, "loss": float(logs["loss"])})
        self.bar.update()
        self.bar.set_postfix(loss=f"{logs['loss']:.3f}")


def warm_start(model: TwoTowerModel, tables: FeatureTables, previous: Path) -> dict:
    """Initialises ``model`` (built on ``tables``) from the towers of the model directory
    ``previous`` (a refit's warm start, ``train(warm_from=...)``): every weight of the
    same name and shape is copied; an id embedding's rows are copied by id (row 0, the
    out-of-vocabulary one, too), so users and titles new to ``tables`` keep their fresh
    initial rows. Returns what was copied: ``{"weights", "ids": {name: [known, new]}}``."""
    old_config = artifact.read_json(previous, artifact.CONFIG)
    old_vocab = old_config["feature_schema"]["vocab"]
    old = {}
    for tower in ("query_tower", "candidate_tower"):
        saved = artifact.load_saved_model(previous / tower)
        old.update({v.name: v.numpy() for v in saved.signatures["serving_default"].variables})
    embed(model.query_tower, tables.user_raw, np.arange(min(2, len(tables.users))))  # builds
    embed(model.candidate_tower, tables.anime_raw, np.arange(min(2, len(tables.anime))))
    ids = {f"{s['name']}_embedding/embeddings:0": s["vocab"] for s in tables.schema["features"]
           if s["kind"] == "id"}
    copied, mapped = 0, {}
    for var in model.variables:
        value = old.get(var.name)
        if value is None:
            continue
        vocab = next((v for suffix, v in ids.items() if var.name.endswith(suffix)), None)
        if vocab is not None:
            old_ids = np.asarray(old_vocab[vocab], np.int64)
            order = np.argsort(old_ids)
            at, known = find_sorted(old_ids[order], np.asarray(tables.schema["vocab"][vocab],
                                                               np.int64))
            weights = var.numpy()
            weights[0] = value[0]
            weights[1 + np.flatnonzero(known)] = value[1 + order[at[known]]]
            var.assign(weights)
            mapped[vocab] = [int(known.sum()), int((~known).sum())]
        elif tuple(var.shape) == value.shape:
            var.assign(value)
            copied += 1
    return {"weights": copied, "ids": mapped}


def train(tables: FeatureTables, config: RetrievalConfig = RetrievalConfig(), *,
          progress: bool = True, input: str = "memory",
          cluster: distribution.Cluster = distribution.Cluster(),
          epochs: int | None = None, warm_from: Path | None = None) -> tuple[TwoTowerModel, dict]:
    """Fits a two-tower model with early stopping. Returns the model (best weights) and
    a training summary (history, best epoch, examples/s, the weights' digest).

    ``epochs``: a refit (the walk-forward evaluation's): exactly this many epochs (the
    number validation chose for the same config), no validation pass, the last
    epoch's weights kept. ``warm_from``: start from the towers of that model directory
    (``warm_start``) instead of a fresh initialisation.

    ``input`` (``input_mode``): ``memory`` is the original pipeline, unchanged (the
    README's numbers); ``stream`` reads the pairs from shard files written to a
    temporary directory (removed after), in a bounded shuffle buffer. With a
    ``cluster`` of several processes (``TF_CONFIG``) every process calls this alike:
    each streams its own share of the pairs, batches of ``batch_size / processes``
    (the same global batch and number of steps as one process; each replica's in-batch
    softmax takes its negatives from its own part of the batch), and the gradients are
    summed across them, so all end with the same weights and take the same
    early-stopping decisions (validation Recall@K in numpy on every process).
    """
    mode = input_mode(input, cluster)
    strategy = distribution.strategy(cluster)  # before any TensorFlow op (see there)
    if strategy is not None and config.batch_size % strategy.num_replicas_in_sync:
        raise InputError(f"`batch_size` ({config.batch_size}) must be a multiple of the "
                         f"{strategy.num_replicas_in_sync} replicas training together: each "
                         "takes an equal part of every batch.")
    tf.keras.utils.set_random_seed(config.seed)
    work = None
    if mode == "memory":
        ds, n_pairs = training_dataset(tables, config)
        fit_args = {"x": ds}
    else:
        work = Path(tempfile.mkdtemp(prefix="anirank-pairs-"))
        files = write_training_pairs(tables, work, config.seed, cluster.size)
        n_pairs = len(tables.pairs("train"))
        to_batch = batch_features(tables)
        if strategy is None:
            fit_args = {"x": fitting.stream_dataset(files, to_batch, config.batch_size,
                                                    config.seed)}
        else:
            replicas = strategy.num_replicas_in_sync

            def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
                # One pass over this worker's files per epoch, repeated: Keras keeps one
                # iterator over a distributed dataset for all epochs.
                return fitting.stream_dataset(
                    files, to_batch, context.get_per_replica_batch_size(config.batch_size),
                    config.seed, pipeline=context.input_pipeline_id,
                    pipelines=context.num_input_pipelines).repeat()

            # The files give each worker ceil(n / workers) pairs or one fewer: the
            # largest share sets the steps of an epoch. (Only when the last global batch
            # has fewer pairs than there are workers does a smaller share have one batch
            # less, and that worker starts its next pass one step early.)
            share = -(-n_pairs // cluster.size)
            fit_args = {"x": strategy.distribute_datasets_from_function(per_worker),
                        "steps_per_epoch": -(-share // (config.batch_size // replicas))}
    # The model after its input, whichever it is (the order its seeds were drawn in).
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = TwoTowerModel(tables.schema, config)
        model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    warm = None if warm_from is None else warm_start(model, tables, Path(warm_from))
    bar = tqdm(total=epochs or config.max_epochs, unit="epoch", disable=not progress,
               desc=f"retrieval ({config.features}{', refit' if epochs else ''})")
    stopper = _FixedEpochs(bar) if epochs else _EarlyStopping(tables, config, bar)
    start = time.perf_counter()
    fit_seconds = 0.0

    class _Timer(tf.keras.callbacks.Callback):  # training time without the validation pass
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            nonlocal fit_seconds
            fit_seconds += time.perf_counter() - self.t

    try:
        model.fit(**fit_args, epochs=epochs or config.max_epochs, verbose=0,
                  callbacks=[_Timer(), stopper])
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    bar.close()
    if isinstance(stopper, _EarlyStopping):
        stopper.stopping.restore(model)
        best = stopper.stopping.best_epoch
    else:
        best = epochs
    epochs = len(stopper.history)
    return model, {
        "history": stopper.history, "best_epoch": best, "refit": isinstance(stopper, _FixedEpochs),
        **({"warm_start": {"from": str(warm_from), **warm}} if warm is not None else {}),
        "epochs": epochs, "train_pairs": n_pairs, "input": mode, "workers": cluster.size,
        "fit_seconds": fit_seconds,   # training only, without the validation passes
        "examples_per_second": round(n_pairs * epochs / fit_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "weights_sha256": fitting.weights_digest(model.get_weights()),
    }


def evaluate(model: TwoTowerModel, tables: FeatureTables, per_user: dict | None = None) -> dict:
    """Test-split metrics of a trained model (``per_user`` receives the per-user values)."""
    candidate_embeddings = embed(model.candidate_tower, tables.anime_raw)
    queries = embed(model.query_tower, tables.user_raw)
    return {"factorized": protocol.factorized_top_k(queries, candidate_embeddings,
                                                    tables.pairs("test")),
            **protocol.rank_metrics(lambda r: queries[r] @ candidate_embeddings.T, tables, "test",
                                    per_user=per_user)}


def popularity_metrics(tables: FeatureTables) -> dict:
    """The same protocol for "most popular in training" (ties broken by title order)."""
    return protocol.rank_metrics(baselines.popularity_scorer(tables), tables, "test")


def recent_popularity_metrics(tables: FeatureTables) -> dict | None:
    """The same protocol for "most popular in the last days before the cutoff" (None
    without a cutoff)."""
    recent = baselines.recent_popularity_scorer(tables)
    if recent is None:
        return None
    return {**protocol.rank_metrics(recent, tables, "test"), "days": baselines.RECENT_DAYS}


def ease_metrics(tables: FeatureTables, lam: float | None = None,
                 measure: bool = True) -> tuple[dict | None, np.ndarray | None]:
    """The same protocol for EASE, its lambda tuned on validation Recall@100 (or ``lam``,
    chosen elsewhere: a refit), and its weights (the model's second candidate generator);
    ``(None, None)`` above ``baselines.MAX_EASE_TITLES`` titles. ``seconds``: the Gram
    matrix, the lambda sweep and the test pass (cubic in the titles: ``bench/scale.py``
    shows it apart). ``measure=False`` (a refit, measured by the evaluation stage):
    ``{"lambda"}`` alone, no test pass."""
    start = time.perf_counter()
    ease = baselines.fit_ease(tables, lam=lam)
    if ease is None:
        return None, None
    if not measure:
        return {"lambda": ease["lambda"]}, ease["weights"]
    return ({**protocol.rank_metrics(ease["scorer"], tables, "test"), "lambda": ease["lambda"],
             "validation_recall@100": {str(k): v for k, v in ease["validation_recall@100"].items()},
             "seconds": round(time.perf_counter() - start, 1)},
            ease["weights"])


def ials_metrics(tables: FeatureTables, settings: dict | None = None,
                 measure: bool = True) -> dict:
    """The same protocol for iALS (``baselines.fit_ials``), its settings tuned on validation
    Recall@100 (or ``settings``, chosen elsewhere: a refit, which records them alone and
    leaves the measuring to the evaluation stage). iALS is a baseline, not saved: the
    evaluation stage refits it with these settings (seeded, so the same factors)."""
    start = time.perf_counter()
    if not measure:
        return {"settings": dict(settings), "iterations": baselines.IALS_ITERATIONS}
    ials = baselines.fit_ials(tables, settings=settings)
    return {**protocol.rank_metrics(ials["scorer"], tables, "test"),
            "settings": ials["settings"], "iterations": ials["iterations"],
            "validation_recall@100": ials["validation_recall@100"],
            "seconds": round(time.perf_counter() - start, 1)}


def export_tower(tower: tf.keras.Model, signature: dict, path: Path) -> None:
    """SavedModel with a ``serving_default`` signature: raw feature dict -> embedding."""

    @tf.function(input_signature=[signature])
    def serve(features):
        return {"embedding": tower(features)}

    artifact.export_saved_model(tower, path, {"serving_default": serve})


def save_artifact(out: Path, model: TwoTowerModel, tables: FeatureTables, features_dir: Path,
                  metrics: dict, config: RetrievalConfig, ease: np.ndarray | None = None) -> None:
    """Writes the model directory (``pipelines/artifact.py``) in one atomic swap."""
    with artifact.create(out) as tmp:
        schema = tables.schema
        for tower, entity in ((model.query_tower, "user"), (model.candidate_tower, "anime")):
            specs = feature_specs(schema, entity, config.features, config.history)
            export_tower(tower, input_signature(specs, schema, tables.widths), tmp / tower.name)
        CandidateIndex.build(embed(model.candidate_tower, tables.anime_raw),
                             tables.anime["media_id"].to_numpy(), IndexConfig()).save(tmp / "index")
        shutil.copy(features_dir / "anime.parquet", tmp / "anime.parquet")
        # What serving needs to recommend for known users: their features and every
        # title already on their lists (to exclude). (User-level data: publish with care.)
        shutil.copy(features_dir / "users.parquet", tmp / "users.parquet")
        # ``history``: the training interactions, EASE's input for each user.
        inter = tables.interactions
        inter[["user_id", "media_id"]].assign(
            history=(inter["split"] == "train") & inter["is_interaction"]
        ).to_parquet(tmp / "seen.parquet", index=False)
        if ease is not None:
            np.save(tmp / artifact.EASE, ease)
        artifact.write_json(tmp, artifact.METRICS, {"retrieval": metrics})
        # config.json last: its presence marks a complete artifact.
        artifact.write_json(tmp, artifact.CONFIG, {
            "feature_schema": artifact.published_schema(schema), "multi_widths": tables.widths,
            "retrieval": config.to_dict(), "index": dataclasses.asdict(IndexConfig()),
            "versions": artifact.versions(), "data_fingerprint": schema["fingerprint"],
            "trained_through": trained_through(tables)})


def trained_through(tables: FeatureTables) -> str | None:
    """The newest entry time the model learned from (its training split's), ISO 8601 in
    UTC; None for a source without entry times."""
    inter = tables.interactions
    times = inter.loc[inter["split"] == "train", "time"]
    newest = times.max() if len(times) else None
    if newest is None or pd.isna(newest):
        return None
    return pd.Timestamp(int(newest), unit="s", tz="UTC").isoformat()


def uses_history(tables: FeatureTables, config: RetrievalConfig) -> bool:
    """Does ``config``'s query tower read a history (the tables have one, and it is on)?"""
    return any(s["kind"] == "history"
               for s in feature_specs(tables.schema, "user", config.features, config.history))


def ablations(tables: FeatureTables, config: RetrievalConfig) -> list[tuple[str, str, RetrievalConfig]]:
    """``(metrics key, name, config)`` of the ablations of ``config``: ids only (no side
    features, no history) and, when the model reads one, without the history."""
    out = []
    if config.features != "ids":
        out.append(("ids_only", "ids only", dataclasses.replace(config, features="ids")))
    if uses_history(tables, config):
        out.append(("without_history", "without history",
                    dataclasses.replace(config, history=False)))
    return out


def run(features: str | os.PathLike = "data/features", out: str | os.PathLike = "data/model",
        config: RetrievalConfig = RetrievalConfig(), *, ablation: bool = False,
        with_ease: bool = True, progress: bool = True, input: str = "auto",
        epochs: int | None = None, ease_lambda: float | None = None,
        ials: dict | None = None, warm_from: str | os.PathLike | None = None) -> dict:
    """Stage function behind ``python -m pipelines train-retrieval``.

    ``ablation``: also train the id-only two-tower and the one without the history, for
    the report's comparison (``--ablations``; ``run --evidence``).

    ``epochs``, ``ease_lambda`` and ``ials``: a refit with settings chosen elsewhere (the
    walk-forward evaluation, ``pipelines/walk_forward.py``): the two-tower trained for
    exactly ``epochs`` epochs, EASE with ``ease_lambda`` and the iALS baseline's settings
    recorded for the evaluation stage (None: no iALS), none reading a validation split; ``warm_from``: the two-tower starts from that model directory's
    towers (``warm_start``).

    With ``TF_CONFIG`` naming several processes (``pipelines/distribution.py``) every
    one of them runs this alike and trains its share; only the chief evaluates and
    writes ``out``, the others return their training summaries (``worker_run``).

    Returns:
      The metrics written to ``<out>/metrics.json`` under ``retrieval``.
    """
    if epochs is not None and ablation:
        raise InputError("A refit (`epochs`) trains the model alone: its ablations stop "
                         "early on a validation split; train them without `epochs`.")
    where = distribution.cluster()
    distribution.strategy(where)  # before any TensorFlow op (see there)
    features = Path(features)
    tables = FeatureTables.load(features)
    check_trainable(tables)
    if not where.is_chief:
        return worker_run(tables, config, where, ablation=ablation, input=input)
    model, training = train(tables, config, progress=progress, input=input, cluster=where,
                            epochs=epochs, warm_from=warm_from)
    # A refit (walk-forward, release) is measured by the evaluation stage, if anything is
    # held out (the release's tables hold nothing out).
    refit = epochs is not None
    per_user = {"two-tower": {}}
    metrics = {"training": training, "fitted_on": covered(tables.schema, "train"),
               "config": config.to_dict()}
    if not refit:
        metrics.update(model=evaluate(model, tables, per_user["two-tower"]),
                       popularity=popularity_metrics(tables),
                       recent_popularity=recent_popularity_metrics(tables))
    if with_ease:
        metrics["ease"], ease = ease_metrics(tables, ease_lambda, measure=not refit)
        if metrics["ease"] is None:
            metrics["ease_skipped"] = baselines.skip_reason(len(tables.anime))
    else:   # asked not to: the model has no second candidate generator
        metrics["ease"], ease = None, None
        metrics["ease_skipped"] = "turned off (--no-ease)"
    if not refit or ials is not None:
        metrics["ials"] = ials_metrics(tables, ials, measure=not refit)
    if refit:
        save_artifact(Path(out), model, tables, features, metrics, config, ease)
        return metrics
    if ablation:
        # The ablations are trained like the model and not saved: the report reads their
        # paired differences on the same test users.
        for key, name, changed in ablations(tables, config):
            ablated, ablated_training = train(tables, changed, progress=progress, input=input,
                                              cluster=where)
            per_user[name] = {}
            metrics[key] = evaluate(ablated, tables, per_user[name])
            metrics[key]["training"] = ablated_training
        if len(per_user) > 1:
            metrics["differences"] = protocol.differences(
                per_user, "two-tower", [n for n in per_user if n != "two-tower"],
                ("recall@100", "ndcg@10"))
    test_rows = np.unique(tables.pairs("test")["user_row"])
    metrics["index"] = ann_benchmark(embed(model.candidate_tower, tables.anime_raw),
                                     embed(model.query_tower, tables.user_raw, test_rows),
                                     tables.anime["media_id"].to_numpy())
    save_artifact(Path(out), model, tables, features, metrics, config, ease)
    return metrics




def worker_run(tables: FeatureTables, config: RetrievalConfig, where: distribution.Cluster, *,
               ablation: bool, input: str) -> dict:
    """A non-chief process's part of ``run``: the same trainings as the chief, in the same
    order (the model, then its ablations), writing nothing. Returns ``{"worker": who,
    "training": summary}`` (with each ablation's under its metrics key)."""
    summary = {"worker": where.describe(),
               "training": train(tables, config, progress=False, input=input, cluster=where)[1]}
    if ablation:
        for key, _, changed in ablations(tables, config):
            summary[key] = {"training": train(tables, changed, progress=False, input=input,
                                              cluster=where)[1]}
    return summary


def format_worker(summary: dict) -> str:
    """A non-chief process's lines for the command line."""
    t = summary["training"]
    lines = [f"{summary['worker']}: trained {t['epochs']} epochs (best {t['best_epoch']}) on "
             f"its share of {t['train_pairs']:,} pairs, {t['examples_per_second']:,.0f} "
             f"examples/s in all; weights sha256 {t['weights_sha256']}."]
    lines += [f"{key}: weights sha256 {value['training']['weights_sha256']}"
              for key, value in summary.items() if key not in ("worker", "training")]
    return "\n".join(lines + ["The chief writes the model."])


def format_metrics(metrics: dict) -> str:
    """The headline numbers, for the command line."""
    lines = [table(retrieval_rows(metrics), RETRIEVAL_COLUMNS, markdown=False, label="test split")]
    f = metrics["model"]["factorized"]
    lines.append("factorized top-K accuracy: " + "  ".join(f"@{k[4:]} {num(v)}" for k, v in f.items()))
    t, i = metrics["training"], metrics["index"]
    lines.append(f"training: {t['epochs']} epochs (best {t['best_epoch']}), "
                 f"{t['examples_per_second']:,.0f} examples/s"
                 + (f" on {t['workers']} workers (weights sha256 {t['weights_sha256']})"
                    if t.get("workers", 1) > 1 else ""))
    lines.append(f"ScaNN recall@{i['k']} vs brute force {num(i['scann_recall'])}; "
                 f"queries/s ScaNN {i['scann_queries_per_second']:,.0f}, "
                 f"brute force {i['brute_force_queries_per_second']:,.0f}")
    return "\n".join(lines)
