"""Feature tables -> the score head (a user's POINT_100 score for a title), its metrics,
in the model dir.

    python -m pipelines train-scores --features data/features --model data/model

Fitted on the training split's scored entries (``is_label``), from the ridge user + title
biases (``pipelines.baselines.ridge_biases``, ``lambda`` by validation RMSE) with the
interaction MLP at zero (``ranking/scores.py``), early-stopped on the validation split's
scored entries (RMSE; epoch 0, the biases themselves, counts), and measured once on the
test split's scored entries beside every score baseline computed the same way
(``baselines.score_metrics``), with paired bootstrap 95% CIs of (the head's squared
error - the best baseline's), per entry and per user (users resampled; the per-user
one averages each user's mean difference). User features are computed from training
entries only and the split is as of one cutoff by default, so a validation or test
score is never among a head input.

The one leak left is inside training: the feature tables count every training score,
so a training entry's own score is part of its user's ``mean_score``, ``std_score``,
genre/format affinity and its title's ``average_score``. The head is fitted on those
features recomputed without the entry (``held_out_inputs``, leave-one-out, exactly the
feature stage's formulas), as they are for every pair it predicts afterwards. Measured
on the default world with the same MLP (64, 32) (test RMSE, biases 11.23): 11.01 fitted
on the tables' own features, 10.65 on the held-out ones (README).

Writes ``scorer/`` (SavedModel, ``serving_default``: raw user + title features, one
pair per row -> ``{"predicted_score": [b]}`` clipped to [1, 100]),
``metrics.json["scores"]`` and ``config.json["scores"]`` in one atomic swap.
"""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from pipelines import artifact, baselines, fitting
from pipelines.config import ScoreConfig
from pipelines.errors import InputError
from pipelines.formatting import interval, table
from pipelines.tables import FeatureTables
from ranking.scores import HIGH, LOW, ScoreModel
from towers.features import feature_specs, input_signature

HEAD = "score head"


def held_out_inputs(tables: FeatureTables, user_rows: np.ndarray, anime_rows: np.ndarray,
                    scores: np.ndarray) -> dict:
    """Per scored training entry, the score-derived features as they would be without it:
    the user's ``mean_score``, ``std_score``, ``genre_affinity``, ``format_affinity``
    and the title's ``average_score``, each recomputed leaving that entry's score out
    (``pipelines/features.py``'s formulas). ``{name: [entries]`` or ``[entries, width]}``
    (float32), for the features the schema has.

    Why: the feature tables count every training score, so a training entry's own score
    is inside its user's and title's features, while a validation, test or served pair's
    never is. Fitted on the tables' values, the head learns to trust those features more
    than they deserve (on a user with 5 scores, a fifth of their mean is the label)."""
    schema = tables.schema
    names = {f["name"] for f in schema["features"]}
    inter = tables.interactions
    train = inter[(inter["split"] == "train") & (inter["score"] > 0)]
    n_users, n_titles = len(tables.users), len(tables.anime)
    # The user's mean and spread count every scored entry (as the feature stage does);
    # affinities and title means only those of catalog titles.
    every_user, every_score = (train["user_row"].to_numpy(np.int64),
                               train["score"].to_numpy(np.float64))
    count = np.bincount(every_user, minlength=n_users)[user_rows] - 1.0
    total = np.bincount(every_user, every_score, n_users)[user_rows] - scores
    square = np.bincount(every_user, every_score ** 2, n_users)[user_rows] - scores ** 2
    known = train[train["anime_row"] >= 0]
    t_user = known["user_row"].to_numpy(np.int64)
    t_title = known["anime_row"].to_numpy(np.int64)
    t_score = known["score"].to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), schema["stats"]["global_mean_score"])
        std = np.where(count > 1, np.sqrt(np.maximum(square / np.maximum(count, 1) - mean ** 2, 0)), 0.0)
    out = {}
    if "mean_score" in names:
        out["mean_score"] = mean
    if "std_score" in names:
        out["std_score"] = std
    prior = schema["config"]["affinity_prior"]
    for vector, vocab, values in (("genre", "genres", tables.anime_raw.get("genres")),
                                  ("format", "format", tables.anime_raw.get("format"))):
        if f"{vector}_affinity" not in names or values is None:
            continue
        values = values.reshape(n_titles, -1)
        hot = np.stack([(values == v).any(1) for v in schema["vocab"][vocab]], 1).astype(np.float64)
        if "" in schema["vocab"][vocab]:   # padding and missing values are no genre/format
            hot[:, schema["vocab"][vocab].index("")] = 0.0
        evidence = np.zeros((n_users, hot.shape[1]))
        summed = np.zeros((n_users, hot.shape[1]))
        np.add.at(evidence, t_user, hot[t_title])
        np.add.at(summed, t_user, hot[t_title] * t_score[:, None])
        own = hot[anime_rows]
        e = evidence[user_rows] - own
        out[f"{vector}_affinity"] = (summed[user_rows] - own * scores[:, None]
                                     - mean[:, None] * e) / (e + prior)
    if "average_score" in names:
        raters = np.bincount(t_title, minlength=n_titles)[anime_rows] - 1.0
        summed = np.bincount(t_title, t_score, n_titles)[anime_rows] - scores
        out["average_score"] = np.where(raters > 0, summed / np.maximum(raters, 1), np.nan)
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def dataset(constants: tuple[dict, dict], user_rows: np.ndarray, anime_rows: np.ndarray,
            scores: np.ndarray, batch_size: int, shuffle_seed: int | None = None,
            inputs: dict | None = None) -> tf.data.Dataset:
    """Batches of the head's inputs (user + title raw features) and ``score``; ``inputs``
    (``{name: [entries, ...]}``) replace those features entry by entry."""
    users, anime = constants
    per_entry = fitting.constants(inputs or {})

    def to_batch(i, u, a, y):
        return {**fitting.gather(users, u), **fitting.gather(anime, a),
                **fitting.gather(per_entry, i), "score": y}

    slices = (np.arange(len(user_rows), dtype=np.int32), user_rows.astype(np.int32),
              anime_rows.astype(np.int32), scores.astype(np.float32))
    return fitting.index_dataset(slices, to_batch, batch_size, shuffle_seed)


_PREDICT_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def predict(model: ScoreModel, constants: tuple[dict, dict], user_rows: np.ndarray,
            anime_rows: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Clipped predictions ``[n]`` (float64) of a Keras head for row pairs."""
    # One graph function per head, reused across calls (a new tf.function per call
    # would retrace every time).
    if model not in _PREDICT_FUNCTIONS:
        _PREDICT_FUNCTIONS[model] = tf.function(model.predict_scores, reduce_retracing=True)
    fn = _PREDICT_FUNCTIONS[model]
    ds = dataset(constants, user_rows, anime_rows, np.zeros(len(user_rows)), batch_size)
    out = [fn(batch).numpy() for batch in ds]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def _rmse(prediction: np.ndarray, target: np.ndarray) -> float:
    return float(np.sqrt(np.mean((prediction - target) ** 2))) if len(target) else float("nan")


def train(tables: FeatureTables, config: ScoreConfig, *, progress: bool = True,
          epochs: int | None = None, bias_lambda: float | None = None) -> tuple[ScoreModel, dict]:
    """Fits the head on the training scores with early stopping on validation RMSE.

    ``epochs`` and ``bias_lambda``: a refit with the settings the selection run chose
    (the served model's, ``walk_forward.release``): exactly ``epochs`` epochs (0: the
    ridge biases alone), the biases' lambda given, no validation read."""
    tf.keras.utils.set_random_seed(config.seed)
    u, a, y = baselines.scored_entries(tables, "train")
    vu, va, vy = baselines.scored_entries(tables, "validation")
    if not len(y):
        raise InputError("The training split has no scored entries (statuses "
                         f"{', '.join(tables.schema['config']['label_statuses'])} with a score): "
                         "there is nothing to learn a score from.")
    if epochs is not None:
        return _refit(tables, config, u, a, y, epochs, bias_lambda, progress)
    lam, model, constants, ds = _head(tables, config, u, a, y, config.bias_lambdas)
    stopping = fitting.EarlyStopping(config.patience)
    # Epoch 0 is the untrained head (the ridge biases): training has to beat it.
    start_rmse = _rmse(predict(model, constants, vu, va), vy)
    stopping.update(0, -start_rmse, model.get_weights)
    history, fit_seconds = [{"epoch": 0, "validation_rmse": start_rmse}], 0.0
    bar = tqdm(total=config.max_epochs, desc="score head", unit="epoch", disable=not progress)
    for epoch in range(1, config.max_epochs + 1):
        tick = time.perf_counter()
        logs = model.fit(ds, epochs=1, verbose=0).history
        fit_seconds += time.perf_counter() - tick
        value = _rmse(predict(model, constants, vu, va), vy)
        history.append({"epoch": epoch, "loss": float(logs["loss"][0]), "validation_rmse": value})
        bar.update()
        bar.set_postfix(val_rmse=f"{value:.3f}")
        if stopping.update(epoch, -value if np.isfinite(value) else -np.inf, model.get_weights):
            break
    bar.close()
    stopping.restore(model)
    return model, {"history": history, "best_epoch": stopping.best_epoch,
                   "epochs": len(history) - 1, "train_entries": int(len(y)),
                   "bias_lambda": lam, "fit_seconds": round(fit_seconds, 1),
                   "entries_per_second": round(len(y) * (len(history) - 1) / max(fit_seconds, 1e-9))}


def vocabulary_order(tables: FeatureTables, biases: tuple) -> tuple:
    """``(mu, b_user, b_title)`` from rows of ``tables.users`` / ``tables.anime`` (as
    ``baselines.ridge_biases`` gives them) to the schema's id vocabularies (as the head's
    embeddings hold them), 0 for an id the tables lack. The two differ under a random
    split: a catalog title listed only in the held-out parts of lists is a table row but
    not in the vocabulary of ids seen in training."""
    mu, b_user, b_title = biases

    def reorder(values: np.ndarray, ids: pd.Series, vocab) -> np.ndarray:
        position = pd.Index(ids.to_numpy()).get_indexer(np.asarray(vocab))
        return np.where(position >= 0, values[np.maximum(position, 0)], 0.0)

    vocab = tables.schema["vocab"]
    return (mu, reorder(b_user, tables.users["user_id"], vocab["user_id"]),
            reorder(b_title, tables.anime["media_id"], vocab["media_id"]))


def _head(tables: FeatureTables, config: ScoreConfig, u, a, y, lambdas):
    """``(lambda, the compiled head from the ridge biases of lambda, the raw-feature
    constants, the training dataset)``: the biases' lambda the best of ``lambdas`` by
    validation RMSE (the only one, for a refit)."""
    lam, biases, _ = baselines.ridge_biases(tables, lambdas)
    constants = (fitting.constants(tables.user_raw), fitting.constants(tables.anime_raw))
    model = ScoreModel(tables.schema, config, vocabulary_order(tables, biases), bias_l2=lam / len(y),
                       factor_l2=config.factor_l2 / len(y))
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    inputs = held_out_inputs(tables, u, a, y) if config.held_out_features else None
    return lam, model, constants, dataset(constants, u, a, y, config.batch_size, config.seed,
                                          inputs)


def _refit(tables: FeatureTables, config: ScoreConfig, u, a, y, epochs: int,
           bias_lambda: float | None, progress: bool) -> tuple[ScoreModel, dict]:
    """``train``'s refit: fixed lambda and epochs, the last epoch's weights kept."""
    lam, model, _, ds = _head(tables, config, u, a, y, (bias_lambda,) if bias_lambda is not None
                              else config.bias_lambdas[:1])
    history, fit_seconds = [], 0.0
    for epoch in tqdm(range(1, epochs + 1), desc="score head (refit)", unit="epoch",
                      disable=not progress):
        tick = time.perf_counter()
        logs = model.fit(ds, epochs=1, verbose=0).history
        fit_seconds += time.perf_counter() - tick
        history.append({"epoch": epoch, "loss": float(logs["loss"][0])})
    return model, {"history": history, "best_epoch": epochs, "epochs": epochs, "refit": True,
                   "train_entries": int(len(y)), "bias_lambda": lam,
                   "fit_seconds": round(fit_seconds, 1),
                   "entries_per_second": round(len(y) * epochs / max(fit_seconds, 1e-9))}


def evaluate(tables: FeatureTables, model: ScoreModel, config: ScoreConfig) -> dict:
    """Validation and test RMSE/MAE of the head beside every score baseline on the same
    scored entries, and paired bootstrap CIs of the head against the best baseline (by
    validation RMSE: the choice is made where choices are made)."""
    constants = (fitting.constants(tables.user_raw), fitting.constants(tables.anime_raw))

    def head(user_rows, anime_rows):
        return predict(model, constants, user_rows, anime_rows)

    out = {}
    for split in ("validation", "test"):
        errors = {}
        m = baselines.score_metrics(tables, split, config.bias_lambdas, {HEAD: head}, errors)
        rated = {n: r["rmse"] for n, r in m["predictors"].items() if n != HEAD}
        m["best_baseline"] = (min(rated, key=lambda n: np.nan_to_num(rated[n], nan=np.inf))
                              if rated else None)
        out[split] = (m, errors)
    best = out["validation"][0]["best_baseline"]
    for split, (m, errors) in out.items():
        users = baselines.scored_entries(tables, split)[0]
        m["differences"] = {f"{HEAD} - {best}": baselines.score_differences(errors, HEAD, best, users)}
        m["best_baseline"] = best
    return {split: m for split, (m, _) in out.items()}


def export_scorer(model: ScoreModel, tables: FeatureTables, widths: dict, path: Path) -> None:
    """SavedModel, ``serving_default``: every user and title raw feature ``[b]`` (one
    (user, title) pair per row) -> ``{"predicted_score": [b]}`` (float32, [1, 100])."""
    schema = tables.schema
    sig = {**input_signature(feature_specs(schema, "user", history=False), schema, widths),
           **input_signature(feature_specs(schema, "anime"), schema, widths)}

    @tf.function(input_signature=[sig])
    def serve(features):
        return {"predicted_score": model.predict_scores(features)}

    # The same head in two halves, for serving: titles encoded once per catalog
    # ("encode_titles"), then pairs scored from the encodings ("score_encoded").
    title_sig = input_signature(feature_specs(schema, "anime"), schema, widths)

    @tf.function(input_signature=[title_sig])
    def encode(features):
        return {"encoded": model.encode_titles(features)}

    user_sig = input_signature(feature_specs(schema, "user", history=False), schema, widths)
    user_sig["title_encoded"] = tf.TensorSpec([None, None], tf.float32, name="title_encoded")

    @tf.function(input_signature=[user_sig])
    def score_encoded(features):
        return {"predicted_score": tf.clip_by_value(
            model.score_encoded(features, features["title_encoded"]), LOW, HIGH)}

    artifact.export_saved_model(model, path, {"serving_default": serve, "encode_titles": encode,
                                              "score_encoded": score_encoded})


def run(features: str | os.PathLike = "data/features", model: str | os.PathLike = "data/model",
        config: ScoreConfig = ScoreConfig(), *, progress: bool = True) -> dict:
    """Stage function behind ``python -m pipelines train-scores``: trains the head,
    measures it and adds ``scorer/``, ``metrics.json["scores"]`` and
    ``config.json["scores"]`` to the model directory in one atomic swap. Returns the
    score metrics."""
    start = time.perf_counter()
    model_dir = Path(model)
    tables = FeatureTables.load(features)
    artifact.check_complete(model_dir)
    model_config = artifact.read_json(model_dir, artifact.CONFIG)
    if model_config.get("data_fingerprint") != tables.schema["fingerprint"]:
        raise InputError(f"The model in {model_dir} was trained on other data (fingerprint "
                         f"{model_config.get('data_fingerprint')}, features have "
                         f"{tables.schema['fingerprint']}); train the score head on the "
                         "feature tables the model was trained on.")
    head, training = train(tables, config, progress=progress)
    metrics = {"config": config.to_dict(), "training": training, **evaluate(tables, head, config)}
    with artifact.update(model_dir) as tmp:
        export_scorer(head, tables, model_config["multi_widths"], tmp / "scorer")
        all_metrics = artifact.read_json(tmp, artifact.METRICS)
        all_metrics["scores"] = metrics
        artifact.write_json(tmp, artifact.METRICS, all_metrics)
        config_json = artifact.read_json(tmp, artifact.CONFIG)
        config_json["scores"] = config.to_dict()
        artifact.write_json(tmp, artifact.CONFIG, config_json)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    return metrics


def format_metrics(metrics: dict) -> str:
    """The head's RMSE/MAE beside the baselines (validation, then test) and its CI."""
    lines = []
    for split in ("validation", "test"):
        m = metrics[split]
        lines.append(table(list(m["predictors"].items()), [("RMSE", "rmse"), ("MAE", "mae")],
                           markdown=False, label=f"{split}: {m['entries']:,} scored entries"))
        for pair, d in m["differences"].items():
            lines.append(f"  {pair}, squared error: per user {interval(d['per_user'])} "
                         f"(users resampled), per entry {interval(d['per_entry'])}")
    t = metrics["training"]
    lines.append(f"training: {t['train_entries']:,} scores, {t['epochs']} epochs (best "
                 f"{t['best_epoch']} on validation RMSE; 0 = the ridge biases), "
                 f"{t['fit_seconds']} s, {t['entries_per_second']:,} scores/s")
    return "\n".join(lines)
