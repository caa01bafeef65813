"""Feature tables + the retrieval model -> a listwise ranker, its metrics, in the model dir.

    python -m pipelines train-ranking --features data/features --model data/model

Lists, built vectorised: for each user, up to ``max_lists_per_user`` lists of
``labelled_per_list`` of their scored titles (relevance = score / ``relevance_scale``)
plus ``negatives_per_list`` titles the retrieval model puts in the user's
top-``candidates`` (training titles excluded) that the user has no entry for in that
period (relevance 0), in shuffled order: the mix ranking sees at serving time.

The lists come from the *validation* period by default (``fit_split``): titles the
retrieval model never trained on, so the retrieval score the ranker takes as a feature
means at training what it means at serving. (Built from training titles, the positives
carry the inflated scores of titles retrieval memorised, and the ranker learns to
over-trust retrieval.) A seeded 20% of those users' lists are held out for early
stopping on NDCG@10; the test split is never touched before evaluation.

Evaluation on the test split:
  - list NDCG on each test user's held-out scored titles alone (the original system's
    0.73 protocol), for every loss, against the exact random-order floor, popularity
    order and mean-training-score order;
  - end to end: retrieve the top-``candidates`` (titles seen before the test period
    excluded), rank, and compare NDCG@10 / Recall@10 / MRR of the ranked order with the
    retrieval order, against the user's test interactions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from pipelines import atomic
from pipelines.config import RankingConfig
from pipelines.errors import InputError
from pipelines.formatting import num
from pipelines.train_retrieval import Data, load_tower
from ranking.losses import LOSSES
from ranking.metrics import list_ndcg, order_metrics, random_list_ndcg
from ranking.model import RankingModel
from towers.features import apply_in_blocks, feature_specs, input_signature
from towers.index import CandidateIndex

TEST_LIST_CAP = 50  # longest held-out list scored in the list-NDCG protocol


@dataclasses.dataclass
class Lists:
    """Padded lists: ``anime_rows`` ``[n, size]`` (-1 = padding), ``relevance``,
    ``similarity`` (same shape) and the list's ``user_rows`` ``[n]``."""

    user_rows: np.ndarray
    anime_rows: np.ndarray
    relevance: np.ndarray
    similarity: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.anime_rows >= 0

    def __len__(self) -> int:
        return len(self.user_rows)


class Retrieval:
    """What the retrieval stage wrote, read back from the model directory: user and
    title embeddings (from the saved towers) and the candidate index."""

    def __init__(self, model_dir: Path, data: Data):
        config_path = model_dir / "config.json"
        if not config_path.exists():
            raise InputError(f"{model_dir} has no config.json: train the retrieval model "
                             "first (`python -m pipelines train-retrieval`).")
        self.config = json.loads(config_path.read_text())
        if self.config["data_fingerprint"] != data.schema["fingerprint"]:
            raise InputError(
                f"The retrieval model in {model_dir} was trained on other data (fingerprint "
                f"{self.config['data_fingerprint']}, features have {data.schema['fingerprint']}); "
                "retrain it on these feature tables.")
        self.index = CandidateIndex.load(model_dir / "index")
        if not np.array_equal(self.index.ids, data.anime["media_id"].to_numpy()):
            raise InputError("The candidate index does not cover the feature tables' titles.")
        query = load_tower(model_dir / "query_tower")
        specs = feature_specs(data.schema, "user", self.config["retrieval"]["features"])
        self.queries = apply_in_blocks(lambda batch: query(**batch)["embedding"],
                                       data.user_raw, [s["name"] for s in specs])
        self.candidates = self.index.embeddings

    def top(self, data: Data, exclude_splits: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per user: top-``k`` title rows (-1 padding) and scores, excluding every entry of
        the user in ``exclude_splits``."""
        inter = data.interactions
        seen = inter[inter["split"].isin(exclude_splits)]
        media = data.anime["media_id"].to_numpy()
        by_user = seen.groupby("user_row")["anime_row"].agg(list)
        exclude = [media[by_user.get(u, [])] for u in range(len(data.users))]
        ids, scores = self.index.search(self.queries, k, exclude=exclude)
        rows = pd.Index(media).get_indexer(ids.reshape(-1)).reshape(ids.shape)
        return np.where(ids >= 0, rows, -1), scores


def _entry_keys(data: Data, splits: list[str]) -> np.ndarray:
    inter = data.interactions[data.interactions["split"].isin(splits)]
    return np.sort(inter["user_row"].to_numpy(np.int64) * len(data.anime)
                   + inter["anime_row"].to_numpy(np.int64))


def _relevance_lookup(data: Data, split: str, config: RankingConfig):
    """(sorted keys user_row * n_anime + anime_row, graded relevance) of ``split``'s
    entries that count: scored labels grade by score; watched but unscored titles get
    the site's mean training score; every other entry (e.g. PLANNING) is 0."""
    inter = data.interactions
    part = inter[(inter["split"] == split) & (inter["is_label"] | inter["is_interaction"])]
    score = np.where(part["is_label"], part["score"], data.schema["stats"]["global_mean_score"])
    keys = part["user_row"].to_numpy(np.int64) * len(data.anime) + part["anime_row"].to_numpy()
    order = np.argsort(keys)
    return keys[order], (score[order] / config.relevance_scale).astype(np.float32)


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(keys, query).clip(0, max(len(keys) - 1, 0))
    found = (keys[pos] == query) if len(keys) else np.zeros(query.shape, bool)
    return np.where(found, values[pos] if len(keys) else 0.0, 0.0).astype(np.float32)


def build_lists(data: Data, retrieval: Retrieval, candidates: np.ndarray, split: str,
                config: RankingConfig, rng: np.random.Generator) -> Lists:
    """Training lists for ``split``, vectorised. Per user with something relevant in the
    split, ``max_lists_per_user`` lists, each:

      - the user's retrieved titles (``candidates`` rows) that are relevant in the split
        (up to ``labelled_per_list``), and ``negatives_per_list`` retrieved titles that
        are not (sampled): exactly what the ranker reorders at serving time;
      - plus up to ``labelled_per_list`` of the user's scored titles in the split that
        retrieval missed, so there is graded signal beyond the retrieved few;

    in shuffled order, padded with -1.
    """
    n_anime = len(data.anime)
    keys, values = _relevance_lookup(data, split, config)
    users = np.unique(keys // n_anime)
    users = np.repeat(users, config.max_lists_per_user)
    n = len(users)
    pool = candidates[users]                                               # [n, C]
    rel = _lookup(keys, values, users[:, None] * n_anime + pool)
    rel = np.where(pool >= 0, rel, 0.0)
    # Relevant retrieved titles first (random among them), then random others.
    order = np.argsort((rel <= 0) + rng.random(pool.shape), axis=1)
    take = order[:, : config.labelled_per_list + config.negatives_per_list]
    retrieved = np.take_along_axis(pool, take, axis=1)
    retrieved_rel = np.take_along_axis(rel, take, axis=1)
    positives = np.cumsum(retrieved_rel > 0, axis=1)
    # Cap the retrieved positives; beyond the cap, slots go to negatives only.
    keep = (retrieved_rel <= 0) | (positives <= config.labelled_per_list)
    retrieved = np.where(keep, retrieved, -1)

    # Scored titles of the split that retrieval did not return, up to labelled_per_list.
    inter = data.interactions
    labelled = inter[(inter["split"] == split) & inter["is_label"]]
    l_user = labelled["user_row"].to_numpy(np.int64)
    l_anime = labelled["anime_row"].to_numpy(np.int64)
    extra = np.full((n, config.labelled_per_list), -1, np.int64)
    for copy in range(config.max_lists_per_user):
        # A fresh random choice of missed titles for each copy of a user's list.
        order = np.lexsort((rng.random(len(l_user)), l_user))
        u, a = l_user[order], l_anime[order]
        start = np.searchsorted(u, u, side="left")
        slot = np.arange(len(u)) - start
        row = np.searchsorted(users, u) + copy
        in_pool = (pool[row] == a[:, None]).any(1)
        ok = (slot < config.labelled_per_list) & ~in_pool
        extra[row[ok], slot[ok]] = a[ok]
    rows = np.concatenate([retrieved, extra], axis=1)
    relevance = _lookup(keys, values, users[:, None] * n_anime + np.maximum(rows, 0))
    relevance = np.where(rows >= 0, relevance, 0.0)
    shuffle = np.argsort(rng.random(rows.shape), axis=1)
    rows = np.take_along_axis(rows, shuffle, axis=1)
    relevance = np.take_along_axis(relevance, shuffle, axis=1)
    sim = np.einsum("nd,nld->nl", retrieval.queries[users],
                    retrieval.candidates[np.maximum(rows, 0)]).astype(np.float32)
    return Lists(users, rows, relevance, np.where(rows >= 0, sim, 0.0).astype(np.float32))


def split_users(lists: Lists, fraction: float, rng: np.random.Generator) -> tuple[Lists, Lists]:
    """Lists of a random ``fraction`` of the users apart (early stopping), the rest to fit."""
    users = np.unique(lists.user_rows)
    if len(users) < 2:
        raise InputError(f"Ranking lists come from {len(users)} user(s); the ranker needs at "
                         "least 2 (some to fit, some to stop early on): import more users.")
    held = rng.choice(users, max(1, int(round(fraction * len(users)))), replace=False)
    mask = np.isin(lists.user_rows, held)

    def take(m):
        return Lists(lists.user_rows[m], lists.anime_rows[m], lists.relevance[m],
                     lists.similarity[m])

    return take(~mask), take(mask)


def held_out_lists(data: Data, retrieval: Retrieval, config: RankingConfig) -> Lists:
    """Each test user's scored test titles as one list (users with at least 2)."""
    inter = data.interactions
    labelled = inter[(inter["split"] == "test") & inter["is_label"]]
    labelled = labelled.sort_values(["user_row", "anime_row"])
    user = labelled["user_row"].to_numpy()
    start = np.searchsorted(user, user, side="left")
    position = np.arange(len(user)) - start
    counts = np.bincount(user, minlength=len(data.users))
    keep = (counts[user] >= 2) & (position < TEST_LIST_CAP)
    users = np.flatnonzero(counts >= 2)
    index = np.searchsorted(users, user[keep])
    size = int(min(TEST_LIST_CAP, counts.max(initial=0)))
    rows = np.full((len(users), max(size, 1)), -1, np.int64)
    rel = np.zeros(rows.shape, np.float32)
    rows[index, position[keep]] = labelled["anime_row"].to_numpy()[keep]
    rel[index, position[keep]] = labelled["score"].to_numpy()[keep] / config.relevance_scale
    sim = np.einsum("nd,nld->nl", retrieval.queries[users],
                    retrieval.candidates[np.maximum(rows, 0)]).astype(np.float32)
    return Lists(users, rows, rel, np.where(rows >= 0, sim, 0.0))


def _constants(data: Data) -> tuple[dict, dict]:
    return ({k: tf.constant(v) for k, v in data.user_raw.items()},
            {k: tf.constant(v) for k, v in data.anime_raw.items()})


def dataset(data: Data, lists: Lists, batch_size: int, shuffle_seed: int | None = None,
            constants=None) -> tf.data.Dataset:
    """Batches of ranker inputs + ``relevance`` and ``mask``, gathered in graph mode."""
    users, anime = constants or _constants(data)

    def gather(u, rows, rel, sim):
        batch = {k: tf.gather(v, u) for k, v in users.items()}
        safe = tf.maximum(rows, 0)
        batch.update({k: tf.gather(v, safe) for k, v in anime.items()})
        batch.update(similarity=sim, relevance=rel, mask=rows >= 0)
        return batch

    ds = tf.data.Dataset.from_tensor_slices(
        (lists.user_rows.astype(np.int32), lists.anime_rows.astype(np.int32),
         lists.relevance, lists.similarity.astype(np.float32)))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(lists), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


_SCORE_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def predict(ranker, data: Data, lists: Lists, constants=None, batch_size: int = 256) -> np.ndarray:
    """Scores ``[n, size]`` of padded lists by a Keras ranker (padding scored: mask it)."""
    # One graph function per ranker, reused across calls (a new tf.function per call
    # would retrace every time); list lengths vary, hence reduce_retracing.
    if ranker not in _SCORE_FUNCTIONS:
        _SCORE_FUNCTIONS[ranker] = tf.function(ranker.call, reduce_retracing=True)
    return _predict(_SCORE_FUNCTIONS[ranker], data, lists, constants, batch_size)


def predict_with(signature, data: Data, lists: Lists, batch_size: int = 256) -> np.ndarray:
    """The same with a saved ranker's ``serving_default`` signature."""
    inputs = {spec.name for spec in signature.structured_input_signature[1].values()}
    return _predict(lambda batch: signature(**{k: v for k, v in batch.items() if k in inputs})["scores"],
                    data, lists, None, batch_size)


def _predict(score, data: Data, lists: Lists, constants, batch_size: int) -> np.ndarray:
    if len(lists) == 0:
        return np.zeros(lists.anime_rows.shape, np.float32)
    return np.concatenate([score(batch).numpy() for batch in
                           dataset(data, lists, batch_size, None, constants)])


def train(data: Data, retrieval: Retrieval, train_lists: Lists, validation_lists: Lists,
          config: RankingConfig, *, progress: bool = True) -> tuple[RankingModel, dict]:
    """Fits one ranker with early stopping on validation NDCG@10."""
    if len(train_lists) == 0:
        raise InputError("No training lists: the training split has no scored titles.")
    tf.keras.utils.set_random_seed(config.seed)
    constants = _constants(data)
    ds = dataset(data, train_lists, config.batch_size, config.seed, constants)
    model = RankingModel(data.schema, config)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    best, best_epoch, best_weights, history = -1.0, 0, None, []
    fit_seconds = 0.0
    bar = tqdm(total=config.max_epochs, desc=f"ranking ({config.loss})", unit="epoch",
               disable=not progress)
    for epoch in range(1, config.max_epochs + 1):
        tick = time.perf_counter()
        logs = model.fit(ds, epochs=1, verbose=0).history
        fit_seconds += time.perf_counter() - tick
        scores = predict(model.ranker, data, validation_lists, constants)
        value = float(np.nanmean(list_ndcg(scores, validation_lists.relevance,
                                           validation_lists.mask, k=10)))
        history.append({"epoch": epoch, "loss": float(logs["loss"][0]),
                        "validation_ndcg@10": value})
        bar.update()
        bar.set_postfix(loss=f"{logs['loss'][0]:.4f}", val_ndcg10=f"{value:.4f}")
        if value > best:  # NaN (no held-out list with a relevant title) never is
            best, best_epoch, best_weights = value, epoch, model.get_weights()
        elif epoch - best_epoch >= config.patience:
            break
    bar.close()
    if best_weights is not None:
        model.set_weights(best_weights)
    return model, {"history": history, "best_epoch": best_epoch, "epochs": len(history),
                   "train_lists": len(train_lists),
                   "lists_per_second": round(len(train_lists) * len(history) / fit_seconds, 1)}


def _mean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def list_metrics(scores: np.ndarray, lists: Lists) -> dict:
    return {"ndcg": _mean(list_ndcg(scores, lists.relevance, lists.mask)),
            "ndcg@5": _mean(list_ndcg(scores, lists.relevance, lists.mask, k=5))}


def baseline_list_metrics(data: Data, lists: Lists) -> dict:
    """Random (exact expectation), popularity order and mean-training-score order."""
    counts = data.train_counts()
    mean_score = data.anime["train_mean_score"].fillna(
        data.schema["stats"]["global_mean_score"]).to_numpy()
    safe = np.maximum(lists.anime_rows, 0)
    return {
        "random": {"ndcg": _mean(random_list_ndcg(lists.relevance, lists.mask)),
                   "ndcg@5": _mean(random_list_ndcg(lists.relevance, lists.mask, k=5))},
        "popularity": list_metrics(counts[safe].astype(np.float64), lists),
        "mean_training_score": list_metrics(mean_score[safe], lists),
    }


def end_to_end(data: Data, score_lists, retrieval: Retrieval, config: RankingConfig,
               extra_orders: dict | None = None, ks=(10,)) -> dict:
    """Retrieve top-``candidates`` (titles seen before the test period excluded), rank
    with ``score_lists(data, lists) -> [n, C]``, and score ranked vs retrieval order
    against each user's test interactions.

    ``extra_orders``: ``{name: fn(users, candidate_rows) -> scores}`` compared alike
    (the evaluation report adds popularity and the oracle)."""
    candidates, scores = retrieval.top(data, ["train", "validation"], config.candidates)
    test = data.pairs("test")
    users = np.unique(test["user_row"])
    cand = candidates[users]
    sim = np.where(cand >= 0, scores[users], 0.0).astype(np.float32)
    lists = Lists(users, cand, np.zeros(cand.shape, np.float32), sim)
    ranked = score_lists(data, lists)
    relevant = data.matrix(users, test)
    n_relevant = relevant.sum(1)
    ks = sorted(set(ks) | {10, config.candidates})
    orders = {"ranked": ranked, "retrieval_order": -np.arange(cand.shape[1])[None, :].repeat(len(users), 0)}
    for name, fn in (extra_orders or {}).items():
        orders[name] = fn(users, cand)
    out = {"users": int(len(users)), "candidates": config.candidates}
    for name, order_scores in orders.items():
        out[name] = order_metrics(cand, order_scores, relevant, n_relevant, ks)
    return out


def export_ranker(ranker, data: Data, widths: dict, path: Path) -> None:
    """SavedModel, ``serving_default``: user features ``[b]`` + title features with a list
    dimension ``[b, l]`` + ``similarity`` ``[b, l]`` -> ``{"scores": [b, l]}``."""
    schema = data.schema
    sig = input_signature(feature_specs(schema, "user"), schema, widths)
    for name, spec in input_signature(feature_specs(schema, "anime"), schema, widths).items():
        sig[name] = tf.TensorSpec([None, None, *spec.shape[1:]], spec.dtype, name=name)
    sig["similarity"] = tf.TensorSpec([None, None], tf.float32, name="similarity")

    @tf.function(input_signature=[sig])
    def serve(features):
        return {"scores": ranker(features)}

    # The same model in two halves, for batch serving: titles are encoded once per
    # catalog ("encode_anime"), lists are then scored from the encodings ("score_encoded").
    anime_sig = input_signature(feature_specs(schema, "anime"), schema, widths)

    @tf.function(input_signature=[anime_sig])
    def encode(features):
        return {"encoded": ranker.project_anime(features)}

    score_sig = input_signature(feature_specs(schema, "user"), schema, widths)
    score_sig["similarity"] = tf.TensorSpec([None, None], tf.float32, name="similarity")
    score_sig["anime_encoded"] = tf.TensorSpec([None, None, None], tf.float32, name="anime_encoded")

    @tf.function(input_signature=[score_sig])
    def score_encoded(features):
        return {"scores": ranker.score_projected(features, features["anime_encoded"])}

    level = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")  # no get_config on purpose: restored as a function
    try:
        tf.saved_model.save(ranker, str(path), signatures={
            "serving_default": serve, "encode_anime": encode, "score_encoded": score_encoded})
    finally:
        tf.get_logger().setLevel(level)


def save(model_dir: Path, ranker, data: Data, widths: dict, metrics: dict,
         config: RankingConfig) -> None:
    """Adds ``ranker/`` to the model directory; metrics.json and then config.json are
    replaced atomically last, so a crash leaves the previous complete artifact."""
    tmp = model_dir / f".ranker.{uuid.uuid4().hex[:8]}.tmp"
    try:
        export_ranker(ranker, data, widths, tmp)
        old = model_dir / f".ranker.{uuid.uuid4().hex[:8]}.old"
        if (model_dir / "ranker").exists():
            os.replace(model_dir / "ranker", old)
        os.replace(tmp, model_dir / "ranker")
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    all_metrics = json.loads((model_dir / "metrics.json").read_text())
    all_metrics["ranking"] = metrics
    atomic.write_text(model_dir / "metrics.json", json.dumps(all_metrics, indent=2, sort_keys=True))
    config_json = json.loads((model_dir / "config.json").read_text())
    config_json["ranking"] = config.to_dict()
    atomic.write_text(model_dir / "config.json", json.dumps(config_json, indent=2, sort_keys=True))


def run(features: str | os.PathLike = "data/features", model: str | os.PathLike = "data/model",
        config: RankingConfig = RankingConfig(), *, compare_losses: bool = True,
        progress: bool = True) -> dict:
    """Stage function behind ``python -m pipelines train-ranking``.

    Trains the ranker with ``config.loss`` (saved into ``model/ranker``) and, with
    ``compare_losses``, one ranker per other loss on the same lists for the comparison.
    Returns the metrics written under ``ranking`` in ``model/metrics.json``.
    """
    model_dir = Path(model)
    data = Data.load(features)
    inter = data.interactions
    if not inter.loc[inter["split"] == config.fit_split, "is_label"].any():
        raise InputError(
            f"The {config.fit_split} split has no scored entries (statuses "
            f"{', '.join(data.schema['config']['label_statuses'])} with a score): the ranker "
            "learns graded relevance from scores, and this source has none there. The "
            f"retrieval model in {model_dir} is complete without a ranker: serve it as it is "
            "(recommendations then follow the retrieval score) and evaluate it with "
            "`python -m pipelines evaluate`.")
    retrieval = Retrieval(model_dir, data)
    rng = np.random.default_rng(config.seed)
    # Negatives come from what retrieval would show: its top titles outside the user's
    # training entries (entries of the fit split itself are dropped in build_lists).
    candidates, _ = retrieval.top(data, ["train"], config.candidates)
    lists = build_lists(data, retrieval, candidates, config.fit_split, config, rng)
    train_lists, validation_lists = split_users(lists, config.holdout_users, rng)
    test_lists = held_out_lists(data, retrieval, config)

    losses = [config.loss] + ([l for l in LOSSES if l != config.loss] if compare_losses else [])
    metrics = {"config": config.to_dict(),
               "lists": {"train": len(train_lists), "validation": len(validation_lists),
                         "test": len(test_lists)},
               "held_out_lists": baseline_list_metrics(data, test_lists), "losses": {}}
    chosen = None
    for loss in losses:
        cfg = dataclasses.replace(config, loss=loss)
        trained, training = train(data, retrieval, train_lists, validation_lists, cfg,
                                  progress=progress)
        scores = predict(trained.ranker, data, test_lists)
        metrics["losses"][loss] = {**list_metrics(scores, test_lists), "training": training}
        if loss == config.loss:
            chosen = trained
            metrics["end_to_end"] = end_to_end(
                data, lambda d, lists: predict(trained.ranker, d, lists), retrieval, config)
    save(model_dir, chosen.ranker, data, retrieval.config["multi_widths"], metrics, config)
    return metrics


def format_metrics(metrics: dict) -> str:
    lines = ["held-out lists (each test user's scored titles)   NDCG    NDCG@5"]
    if not metrics["lists"]["test"]:
        lines.append("  (none: no test user has two or more scored titles in the test split)")
    for name, m in metrics["losses"].items():
        lines.append(f"  ranker, {name:<36}{num(m['ndcg'], width=8)}{num(m['ndcg@5'], width=10)}")
    for name, m in metrics["held_out_lists"].items():
        lines.append(f"  {name.replace('_', ' '):<44}{num(m['ndcg'], width=8)}"
                     f"{num(m['ndcg@5'], width=10)}")
    e = metrics["end_to_end"]
    lines.append(f"end to end over top-{e['candidates']} retrieved ({e['users']:,} test users)"
                 "   NDCG@10  Recall@10   MRR")
    for name in ("ranked", "retrieval_order"):
        m = e[name]
        lines.append(f"  {name.replace('_', ' '):<44}{num(m['ndcg@10'], width=8)}"
                     f"{num(m['recall@10'], width=10)}{num(m['mrr'], width=8)}")
    t = metrics["losses"][metrics["config"]["loss"]]["training"]
    lines.append(f"training ({metrics['config']['loss']}): {t['train_lists']:,} lists, "
                 f"{t['epochs']} epochs (best {t['best_epoch']}), {t['lists_per_second']:,.0f} lists/s")
    return "\n".join(lines)
