"""Feature tables + the retrieval model -> a listwise ranker, its metrics, in the model dir.

    python -m pipelines train-ranking --features data/features --model data/model

Lists, built vectorised: for each user, up to ``max_lists_per_user`` lists of up to
``labelled_per_list`` retrieved titles they watched in the period (relevance = score /
``relevance_scale``) plus ``negatives_per_list`` titles the retrieval model puts in the
user's top-``num_candidates`` (training titles excluded) that the user has no entry for
in that period (relevance 0): the mix ranking sees at serving time; plus up to
``missed_per_list`` scored titles retrieval missed; in shuffled order.

The lists come from the *validation* period by default (``fit_split``): titles the
retrieval model never trained on, so the retrieval score the ranker takes as a feature
means at training what it means at serving. (Built from training titles, the positives
carry the inflated scores of titles retrieval memorised, and the ranker learns to
over-trust retrieval.) A seeded 20% of those users are held out (the same users whatever
the list settings), in two seeded halves (``stopping_and_selection``): the lists of one
stop training early on NDCG@10; the other is where every choice is made, so no user
both stops a ranker and judges it.

Validation (the selection half), where the loss, the served order and the list settings
are chosen:
  - end to end: each selection user's top-``num_candidates`` retrieved titles (training
    titles excluded, as serving would), in ranked, blend, EASE's, retrieval and
    popularity order, scored by NDCG@10 / Recall@10 / MRR against their validation
    interactions, with paired bootstrap 95% CIs; losses are compared there (``choose``;
    the saved ranker is still ``config.loss``: a different choice is reported, not
    applied), and the served order decided (``serving_decision``).
    ``bench/ranker_settings.py`` chooses negatives per list the same way.

Test, computed once after every choice and reported only:
  - list NDCG on each test user's held-out scored titles alone (the original system's
    0.73 protocol), for every loss, against the exact random-order floor, popularity
    order and mean-training-score order;
  - end to end: retrieve the top-``num_candidates`` (titles seen before the test period
    excluded), rank, and compare NDCG@10 / Recall@10 / MRR of the ranked order with the
    retrieval order, against the user's test interactions.
"""

from __future__ import annotations

import dataclasses
import os
import time
import weakref
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from pipelines import artifact, fitting, protocol
from pipelines.arrays import find_sorted
from pipelines.config import EASE_SIGNALS, LOSS_NAMES, RELATION_SIGNALS, RankingConfig
from pipelines.errors import InputError
from pipelines.features import covered
from pipelines.formatting import (END_TO_END_COLUMNS, LIST_COLUMNS, ORDER_LABELS, interval,
                                  other_order_rows, table)
from pipelines.candidates import Generator
from pipelines.protocol import Candidates, Lists
from pipelines.tables import FeatureTables
from ranking import blend as linear_blend
from ranking.metrics import list_ndcg
from ranking.model import RankingModel
from towers.features import feature_specs, input_signature, raw_names


def _relevance_lookup(tables: FeatureTables, split: str, config: RankingConfig):
    """(sorted keys user_row * n_anime + anime_row, graded relevance) of ``split``'s
    entries that count: scored labels grade by score; watched but unscored titles get
    the site's mean training score; every other entry (e.g. PLANNING), and an entry that
    was on the list before the split's period (``listed_before``: history), is 0."""
    inter = tables.interactions
    part = inter[(inter["split"] == split) & (inter["is_label"] | inter["is_interaction"])
                 & ~inter["listed_before"]]
    score = np.where(part["is_label"], part["score"], tables.schema["stats"]["global_mean_score"])
    keys = part["user_row"].to_numpy(np.int64) * len(tables.anime) + part["anime_row"].to_numpy()
    order = np.argsort(keys)
    return keys[order], (score[order] / config.relevance_scale).astype(np.float32)


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``values`` at ``query``'s keys (0 for keys not in the sorted ``keys``)."""
    pos, found = find_sorted(keys, query)
    return np.where(found, values[pos] if len(keys) else 0.0, 0.0).astype(np.float32)


def build_lists(tables: FeatureTables, retrieval: artifact.RetrievalArtifact,
                candidates: Candidates, split: str, config: RankingConfig,
                rng: np.random.Generator, generator: Generator | None = None) -> Lists:
    """Training lists for ``split``, vectorised. Per user with something relevant in the
    split, ``max_lists_per_user`` lists, each:

      - the user's retrieved titles (``candidate_rows``) that are relevant in the split
        (up to ``labelled_per_list``), and ``negatives_per_list`` retrieved titles that
        are not (sampled): exactly what the ranker reorders at serving time;
      - plus up to ``missed_per_list`` of the user's scored titles in the split that
        retrieval missed, so there is graded signal beyond the retrieved few;

    in shuffled order, padded with -1, each title with its candidate signals (a missed
    title's computed by ``generator``, needed when ``missed_per_list``).
    """
    n_anime = len(tables.anime)
    keys, values = _relevance_lookup(tables, split, config)
    users = np.unique(keys // n_anime)
    users = np.repeat(users, config.max_lists_per_user)
    n = len(users)
    pool = candidates.rows[users]                                          # [n, C]
    rel = _lookup(keys, values, users[:, None] * n_anime + pool)
    rel = np.where(pool >= 0, rel, 0.0)
    # Relevant retrieved titles first (random among them), then random others.
    order = np.argsort((rel <= 0) + rng.random(pool.shape), axis=1)
    take = order[:, : config.labelled_per_list + config.negatives_per_list]
    retrieved = np.take_along_axis(pool, take, axis=1)
    signals = {name: np.take_along_axis(v[users], take, axis=1)
               for name, v in candidates.signals.items()}
    retrieved_rel = np.take_along_axis(rel, take, axis=1)
    positives = np.cumsum(retrieved_rel > 0, axis=1)
    # Cap the retrieved positives; beyond the cap, slots go to negatives only.
    keep = (retrieved_rel <= 0) | (positives <= config.labelled_per_list)
    retrieved = np.where(keep, retrieved, -1)

    # Scored titles of the split that retrieval did not return, up to labelled_per_list.
    inter = tables.interactions
    labelled = inter[(inter["split"] == split) & inter["is_label"] & ~inter["listed_before"]]
    l_user = labelled["user_row"].to_numpy(np.int64)
    l_anime = labelled["anime_row"].to_numpy(np.int64)
    extra = np.full((n, config.missed_per_list), -1, np.int64)
    for copy in range(config.max_lists_per_user):
        # A fresh random choice of missed titles for each copy of a user's list.
        order = np.lexsort((rng.random(len(l_user)), l_user))
        u, a = l_user[order], l_anime[order]
        start = np.searchsorted(u, u, side="left")
        slot = np.arange(len(u)) - start
        row = np.searchsorted(users, u) + copy
        in_pool = (pool[row] == a[:, None]).any(1)
        ok = (slot < config.missed_per_list) & ~in_pool
        extra[row[ok], slot[ok]] = a[ok]
    if config.missed_per_list:
        missed = retrieval.signals_for(tables, split, generator, users, extra)
        signals = {name: np.concatenate([v, missed[name]], axis=1) for name, v in signals.items()}
    rows = np.concatenate([retrieved, extra], axis=1)
    relevance = _lookup(keys, values, users[:, None] * n_anime + np.maximum(rows, 0))
    relevance = np.where(rows >= 0, relevance, 0.0)
    shuffle = np.argsort(rng.random(rows.shape), axis=1)
    signals = {name: np.where(rows >= 0, v, 0.0).astype(np.float32)
               for name, v in signals.items()}
    return Lists(users, *(np.take_along_axis(a, shuffle, axis=1) for a in (rows, relevance)),
                 {name: np.take_along_axis(v, shuffle, axis=1) for name, v in signals.items()})


def split_users(lists: Lists, fraction: float, rng: np.random.Generator) -> tuple[Lists, Lists]:
    """Lists of a random ``fraction`` of the users apart (early stopping), the rest to fit."""
    users = np.unique(lists.user_rows)
    if len(users) < 2:
        raise InputError(f"Ranking lists come from {len(users)} user(s); the ranker needs at "
                         "least 2 (some to fit, some to stop early on): import more users.")
    held = rng.choice(users, max(1, int(round(fraction * len(users)))), replace=False)
    mask = np.isin(lists.user_rows, held)
    return lists.take(~mask), lists.take(mask)


def stopping_and_selection(held_lists: Lists, seed: int) -> tuple[Lists, np.ndarray]:
    """The held-out users in two seeded halves: the lists of the stopping half stop every
    ranker early; the selection half (returned as user rows) is where every choice is
    made (the loss, the served order), so no user both stops a ranker and judges it.
    The halves depend on the held-out users and ``seed`` alone, as the held-out users do."""
    users = np.unique(held_lists.user_rows)
    if len(users) < 2:
        raise InputError(f"{len(users)} user(s) held out from fitting the ranker; it needs at "
                         "least 2 (one to stop early on, one to choose on): import more users "
                         "or raise `holdout_users`.")
    stopping = np.random.default_rng([seed, 2]).choice(users, len(users) // 2, replace=False)
    return held_lists.take(np.isin(held_lists.user_rows, stopping)), np.setdiff1d(users, stopping)


def dataset(tables: FeatureTables, lists: Lists, batch_size: int, shuffle_seed: int | None = None,
            constants=None) -> tf.data.Dataset:
    """Batches of ranker inputs (features and candidate signals) + ``relevance`` and
    ``mask``, gathered in graph mode."""
    users, anime = constants or _constants(tables)

    def to_batch(u, rows, rel, signals):
        return {**fitting.gather(users, u), **fitting.gather(anime, tf.maximum(rows, 0)),
                **signals, "relevance": rel, "mask": rows >= 0}

    slices = (lists.user_rows.astype(np.int32), lists.anime_rows.astype(np.int32),
              lists.relevance, {k: v.astype(np.float32) for k, v in lists.signals.items()})
    return fitting.index_dataset(slices, to_batch, batch_size, shuffle_seed)


def _constants(tables: FeatureTables) -> tuple[dict, dict]:
    # The ranker's inputs only: the user's history is not one (ranking/model.py).
    names = raw_names(feature_specs(tables.schema, "user", history=False))
    return (fitting.constants({k: tables.user_raw[k] for k in names}),
            fitting.constants(tables.anime_raw))


_SCORE_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def predict(ranker, tables: FeatureTables, lists: Lists, constants=None,
            batch_size: int = 256) -> np.ndarray:
    """Scores ``[n, size]`` of padded lists by a Keras ranker (padding scored: mask it)."""
    # One graph function per ranker, reused across calls (a new tf.function per call
    # would retrace every time); list lengths vary, hence reduce_retracing.
    if ranker not in _SCORE_FUNCTIONS:
        _SCORE_FUNCTIONS[ranker] = tf.function(ranker.call, reduce_retracing=True)
    return _predict(_SCORE_FUNCTIONS[ranker], tables, lists, constants, batch_size)


def _predict(score, tables: FeatureTables, lists: Lists, constants, batch_size: int) -> np.ndarray:
    if len(lists) == 0:
        return np.zeros(lists.anime_rows.shape, np.float32)
    return np.concatenate([score(batch).numpy() for batch in
                           dataset(tables, lists, batch_size, None, constants)])


def train(tables: FeatureTables, train_lists: Lists, validation_lists: Lists,
          config: RankingConfig, *, progress: bool = True) -> tuple[RankingModel, dict]:
    """Fits one ranker with early stopping on validation NDCG@10."""
    tf.keras.utils.set_random_seed(config.seed)
    constants = _constants(tables)
    ds = dataset(tables, train_lists, config.batch_size, config.seed, constants)
    model = RankingModel(tables.schema, config)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    stopping, history, fit_seconds = fitting.EarlyStopping(config.patience), [], 0.0
    bar = tqdm(total=config.max_epochs, desc=f"ranking ({config.loss})", unit="epoch",
               disable=not progress)
    for epoch in range(1, config.max_epochs + 1):
        tick = time.perf_counter()
        logs = model.fit(ds, epochs=1, verbose=0).history
        fit_seconds += time.perf_counter() - tick
        scores = predict(model.ranker, tables, validation_lists, constants)
        value = float(np.nanmean(list_ndcg(scores, validation_lists.relevance,
                                           validation_lists.mask, k=10)))
        history.append({"epoch": epoch, "loss": float(logs["loss"][0]),
                        "validation_ndcg@10": value})
        bar.update()
        bar.set_postfix(loss=f"{logs['loss'][0]:.4f}", val_ndcg10=f"{value:.4f}")
        if stopping.update(epoch, value, model.get_weights):
            break
    bar.close()
    stopping.restore(model)
    return model, {"history": history, "best_epoch": stopping.best_epoch, "epochs": len(history),
                   "train_lists": len(train_lists),
                   "lists_per_second": round(len(train_lists) * len(history) / fit_seconds, 1)}


def export_ranker(ranker, tables: FeatureTables, widths: dict, path: Path) -> None:
    """SavedModel, ``serving_default``: user features ``[b]`` + title features with a list
    dimension ``[b, l]`` + the ranker's candidate signals, each ``[b, l]`` ->
    ``{"scores": [b, l]}``."""
    schema = tables.schema
    signals = {name: tf.TensorSpec([None, None], tf.float32, name=name) for name in ranker.signals}
    # The ranker does not read the history (ranking/model.py): not one of its inputs.
    user_specs = feature_specs(schema, "user", history=False)
    sig = input_signature(user_specs, schema, widths)
    for name, spec in input_signature(feature_specs(schema, "anime"), schema, widths).items():
        sig[name] = tf.TensorSpec([None, None, *spec.shape[1:]], spec.dtype, name=name)
    sig.update(signals)

    @tf.function(input_signature=[sig])
    def serve(features):
        return {"scores": ranker(features)}

    # The same model in two halves, for batch serving: titles are encoded once per
    # catalog ("encode_anime"), lists are then scored from the encodings ("score_encoded").
    anime_sig = input_signature(feature_specs(schema, "anime"), schema, widths)

    @tf.function(input_signature=[anime_sig])
    def encode(features):
        return {"encoded": ranker.project_anime(features)}

    score_sig = input_signature(user_specs, schema, widths)
    score_sig.update(signals)
    score_sig["anime_encoded"] = tf.TensorSpec([None, None, None], tf.float32, name="anime_encoded")

    @tf.function(input_signature=[score_sig])
    def score_encoded(features):
        return {"scores": ranker.score_projected(features, features["anime_encoded"])}

    artifact.export_saved_model(ranker, path, {
        "serving_default": serve, "encode_anime": encode, "score_encoded": score_encoded})


# The number every ranker setting (loss, negatives per list, ...) is chosen by: NDCG@10 of
# the ranked order, end to end on the validation period of the held-out users.
CHOICE_METRIC = "ndcg@10"
E2E_METRICS = ("ndcg@10", "recall@10", "mrr")


def fit_lists(tables: FeatureTables, retrieval: artifact.RetrievalArtifact,
              config: RankingConfig, split: str | None = None) -> tuple[Lists, Lists, Candidates]:
    """The lists the ranker fits on, the lists of the held-out users (early stopping) and
    the candidates per user for the validation period (training titles excluded).

    The held-out users are drawn from the users of the fit split by a generator of their
    own (from ``config.seed``), so they are the same users whatever the list settings
    (negatives per list, lists per user, loss), and settings trained in separate runs
    compare paired, on the same users (``bench/ranker_settings.py``).

    ``split``: lists and candidates of another split (``refit``: the newest period)."""
    # Negatives come from what serving would show: the candidates outside the user's
    # training entries (entries of the fit split itself are dropped in build_lists).
    generate = retrieval.ranker_generator(config)
    candidates = retrieval.candidates(tables, split or "validation", generate)
    rng = np.random.default_rng(config.seed)
    lists = build_lists(tables, retrieval, candidates, split or config.fit_split, config, rng,
                        generate)
    train_lists, held_lists = split_users(lists, config.holdout_users,
                                          np.random.default_rng([config.seed, 1]))
    # A list with nothing relevant teaches nothing (a user whose only watched titles in
    # the split were neither retrieved nor scored): not fitted on. Its user still counts
    # as fitting or held out, so the held-out users are all the others.
    train_lists = train_lists.take(train_lists.relevance.max(axis=1, initial=0.0) > 0)
    return train_lists, held_lists, candidates


def refit(tables: FeatureTables, retrieval: artifact.RetrievalArtifact, config: RankingConfig,
          epochs: int, *, split: str = "test", progress: bool = True) -> tuple[RankingModel, dict]:
    """The served model's ranker (``walk_forward.release``): ``config``, chosen on validation
    by the selection run, fitted on the lists of ``split`` (the newest period of
    ``tables``) over the candidates of ``retrieval``, a stage one fitted before that
    period, so its inputs look like serving's; at most ``epochs`` epochs (the selection
    ranker's best), stopped early on its held-out users' lists as the selection ranker was.
    The blend is refit on the same lists (``training["blend"]``)."""
    train_lists, held_lists, _ = fit_lists(tables, retrieval, config, split)
    if not len(train_lists) or not len(held_lists):
        raise InputError(f"The {split} period has no lists to fit the served model's ranker "
                         "on (no scored or watched entry there that retrieval could rank).")
    model, training = train(tables, train_lists, held_lists,
                            dataclasses.replace(config, max_epochs=max(1, epochs)),
                            progress=progress)
    return model, {**training, "split": split, "fitted_on": covered(tables.schema, split),
                   "blend": fit_blend(tables, train_lists, config).to_dict()}


def fit_blend(tables: FeatureTables, lists: Lists, config: RankingConfig) -> linear_blend.Blend:
    """The linear blend (``ranking/blend.py``) of the candidate signals the ranker reads
    and the title's training count, fitted on ``lists`` (the ranker's own)."""
    counts = tables.train_counts()
    names = tuple(s for s in config.signals if s in lists.signals) + (linear_blend.POPULARITY,)
    return linear_blend.fit(lists.signals, counts[np.maximum(lists.anime_rows, 0)],
                            lists.relevance, lists.mask, names)


def validation_end_to_end(tables: FeatureTables, score_lists, candidates: Candidates,
                          held_users: np.ndarray, per_user: dict | None = None,
                          blend: linear_blend.Blend | None = None) -> dict:
    """End to end on the validation period of ``held_users`` only (the users held out
    from fitting the ranker): their retrieved top titles (training titles excluded, as
    serving would), in ranked, retrieval and popularity order and, given ``blend`` (or
    candidates with EASE's score), the blend's and EASE's order, scored against their
    validation interactions, with paired bootstrap 95% CIs of ranked against every
    other order and of the blend against the fixed ones. ``per_user`` receives the
    per-user values of each order."""
    counts = tables.train_counts()
    per_user = {} if per_user is None else per_user
    orders = linear_blend.simple_orders(counts, blend, with_ease="ease" in candidates.signals)
    out = protocol.end_to_end_on(
        tables, "validation", score_lists, candidates, user_rows=held_users,
        extra_orders={"popularity_order": lambda users, cand:
                      counts[np.maximum(cand, 0)].astype(np.float64)},
        per_user=per_user, list_orders=orders)
    fixed = [o for o in FIXED_ORDERS if o in per_user]
    out["differences"] = protocol.differences(
        per_user, "ranked", [o for o in ("blend", *fixed, "popularity_order") if o in per_user],
        E2E_METRICS)
    if "blend" in per_user:
        out["differences"].update(protocol.differences(per_user, "blend", fixed, E2E_METRICS))
    return out


def choose(records: dict, metric: str = CHOICE_METRIC) -> dict:
    """The setting to use, from validation only.

    ``records``: ``{setting: {"validation": {order: {metric: [users]}}, ...}}`` (other
    keys, e.g. test numbers kept for reporting, are never read); every setting scored
    on the same validation users. Picks the best mean validation ``metric`` of the
    ranked order (the first setting on ties) and compares it with every other setting
    by a paired bootstrap 95% CI: ``significant`` only when the chosen setting beats
    every other one outside the noise; a gain inside the CI is not significant."""
    values = {name: np.asarray(r["validation"]["ranked"][metric], np.float64)
              for name, r in records.items()}
    means = {name: protocol.mean(v) for name, v in values.items()}
    best = max(means, key=lambda n: -np.inf if np.isnan(means[n]) else means[n])
    diffs = {f"{best} - {other}": protocol.paired_bootstrap(values[best], values[other])
             for other in values if other != best}
    return {"chosen": best, "split": "validation", "metric": metric, "means": means,
            "differences": diffs,
            "significant": bool(diffs) and all(d["significant"] for d in diffs.values())}


def end_to_end_on_test(tables: FeatureTables, retrieval: artifact.RetrievalArtifact, ranker,
                       config: RankingConfig, per_user: dict | None = None) -> dict:
    """End to end on the test split (every test user): reporting only. ``per_user``
    receives the per-user values of each order."""
    out = protocol.end_to_end(tables, lambda t, lists: predict(ranker, t, lists),
                              retrieval.candidates(tables, "test", retrieval.ranker_generator(config)),
                              per_user=per_user)
    return {**out, "candidates": config.candidate_label}


def fit_and_evaluate(tables: FeatureTables, retrieval: artifact.RetrievalArtifact,
                     config: RankingConfig, losses, *, test: bool = True,
                     progress: bool = True) -> tuple[dict, dict, dict]:
    """One ranker per loss in ``losses`` on the same lists, each scored end to end on the
    validation period of the held-out users; the loss is compared there (``choose``).
    With ``test``, then (once, after every choice) the test split: held-out list NDCG of
    every loss and end to end for ``config.loss``, reported and never chosen from.

    Returns ``(metrics, rankers {loss: RankingModel}, records)``; ``records`` holds the
    per-user values ``{loss: {"validation": {order: {metric: [users]}}, "test_lists":
    [lists]}}`` for paired comparisons across calls (the same held-out users every time)."""
    train_lists, held_lists, candidates = fit_lists(tables, retrieval, config)
    validation_lists, selection_users = stopping_and_selection(held_lists, config.seed)
    fit_users, held_users = np.unique(train_lists.user_rows), np.unique(held_lists.user_rows)
    metrics = {"config": config.to_dict(),
               "lists": {"train": len(train_lists), "validation": len(validation_lists)},
               "losses": {}}
    validation = {"note": "end to end on the validation period of the selection half of the "
                          "users held out from fitting the ranker (the other half stops it "
                          "early): every choice (loss, served order, list settings) is made here",
                  "fit_users": int(len(fit_users)), "held_out_users": int(len(held_users)),
                  "stopping_users": int(len(np.unique(validation_lists.user_rows))),
                  "selection_users": int(len(selection_users)),
                  "users": int(len(protocol.end_to_end_users(tables, "validation",
                                                             selection_users))),
                  "candidates": config.candidate_label, "choice_metric": CHOICE_METRIC,
                  "losses": {}}
    # The linear blend of the same signals on the same lists: what the ranker must beat.
    blend = fit_blend(tables, train_lists, config)
    metrics["blend"] = blend.to_dict()
    rankers, records = {}, {}
    for loss in losses:
        cfg = dataclasses.replace(config, loss=loss)
        trained, training = train(tables, train_lists, validation_lists, cfg, progress=progress)
        rankers[loss] = trained
        records[loss] = {"validation": {}}
        validation["losses"][loss] = validation_end_to_end(
            tables, lambda t, lists, r=trained.ranker: predict(r, t, lists), candidates,
            selection_users, records[loss]["validation"], blend)
        metrics["losses"][loss] = {"training": training}
    validation["loss_choice"] = choose(records)
    validation["serving"] = serving_decision(validation, config.loss)
    metrics["validation"] = validation
    if test:
        generate = retrieval.ranker_generator(config)
        test_lists = protocol.held_out_lists(
            tables, config.relevance_scale,
            lambda users, rows: retrieval.signals_for(tables, "test", generate, users, rows))
        metrics["lists"]["test"] = len(test_lists)
        metrics["held_out_lists"] = protocol.baseline_list_metrics(tables, test_lists)
        for loss in losses:
            scores = predict(rankers[loss].ranker, tables, test_lists)
            records[loss]["test_lists"] = list_ndcg(scores, test_lists.relevance, test_lists.mask)
            metrics["losses"][loss] = {**protocol.list_metrics(scores, test_lists),
                                       **metrics["losses"][loss]}
        chosen = validation["loss_choice"]["chosen"]
        metrics["test_loss_differences"] = {
            "reporting_only": True, "metric": "held-out list NDCG (test)",
            "note": "the same pairs as the validation loss choice, on test: reported, "
                    "never chosen from",
            "differences": {f"{chosen} - {other}": protocol.paired_bootstrap(
                records[chosen]["test_lists"], records[other]["test_lists"])
                for other in losses if other != chosen}}
        records[config.loss]["test"] = {}
        metrics["end_to_end"] = end_to_end_on_test(tables, retrieval, rankers[config.loss].ranker,
                                                   config, records[config.loss]["test"])
    return metrics, rankers, records


# What each part of the ranker adds: the same stage with it changed, every variant on the
# same held-out validation users and test users as the full ranker.
EASE_CANDIDATES_VARIANT = 50


def ablation_variants(config: RankingConfig) -> dict[str, RankingConfig]:
    """``{name: config}``: ``config`` with EASE's candidates switched (off, or 50 on), without
    EASE's signals, without EASE at all, without the franchise signal, and without the
    residual form; variants equal to ``config`` or to an earlier one are left out (a
    model without EASE has no EASE variant; one without relations, no franchise one)."""
    no_ease = tuple(s for s in config.signals if s not in EASE_SIGNALS)
    candidates = ("without EASE candidates", 0) if config.ease_candidates else (
        f"with {EASE_CANDIDATES_VARIANT} EASE candidates", EASE_CANDIDATES_VARIANT)
    variants = {
        candidates[0]: dataclasses.replace(config, ease_candidates=candidates[1]),
        "without EASE signals": dataclasses.replace(config, signals=no_ease),
        "without EASE (candidates or signals)": dataclasses.replace(
            config, ease_candidates=0, signals=no_ease),
        "without the franchise signal": dataclasses.replace(config, signals=tuple(
            s for s in config.signals if s not in RELATION_SIGNALS)),
        "without the residual form": dataclasses.replace(config, residual=False)}
    out = {}
    for name, variant in variants.items():
        if variant != config and variant not in out.values():
            out[name] = variant
    return out


def ablations(tables: FeatureTables, retrieval: artifact.RetrievalArtifact, config: RankingConfig,
              full: dict, *, progress: bool = True) -> dict:
    """The full ranker (``config``, its per-user values ``full``: ``{"validation":
    {order: {metric: [users]}}, "test": {...}}``) against each of ``ablation_variants``:
    one ranker per variant, trained and chosen exactly as the full one
    (same held-out users), end to end NDCG@10 on validation (held-out users) and on test,
    each with the paired bootstrap CI of full - variant. Reported, never chosen from."""
    out = {}
    for name, variant in ablation_variants(config).items():
        _, rankers, records = fit_and_evaluate(tables, retrieval, variant, [variant.loss],
                                               test=False, progress=progress)
        test = {}
        end_to_end_on_test(tables, retrieval, rankers[variant.loss].ranker, variant, test)
        changed = {k: v for k, v in variant.to_dict().items() if config.to_dict()[k] != v}
        row = {"changes": changed, "candidates": variant.candidate_label}
        for split, values in (("validation", records[variant.loss]["validation"]), ("test", test)):
            ours = values["ranked"][CHOICE_METRIC]
            row[split] = {CHOICE_METRIC: protocol.mean(ours),
                          "full - variant": protocol.paired_bootstrap(
                              full[split]["ranked"][CHOICE_METRIC], ours)}
        out[name] = row
    return out


def feasible(config: RankingConfig, retrieval: artifact.RetrievalArtifact) -> RankingConfig:
    """``config`` without what this model cannot feed, recorded as such in the config: no
    EASE candidates or signals without EASE's weights (a catalog above
    ``baselines.MAX_EASE_TITLES``), no franchise signal without relations between titles
    (a source without them: ``schema.json`` -> ``dropped_features``)."""
    if retrieval.load_ease() is None:
        config = dataclasses.replace(config, ease_candidates=0, signals=tuple(
            s for s in config.signals if s not in EASE_SIGNALS))
    if retrieval.relations() is None:
        config = dataclasses.replace(config, signals=tuple(
            s for s in config.signals if s not in RELATION_SIGNALS))
    return config


# What a model may serve (``config.json["serving"]["order"]``), by its name in the
# validation tables: the orders a learned reorderer is weighed against first.
SERVED = {key: order for order, key in artifact.ORDER_KEYS.items()}
LEARNED_ORDERS = ("ranked", "blend")
FIXED_ORDERS = ("ease_order", "retrieval_order")


def serving_decision(validation: dict, loss: str) -> dict:
    """``{"order": "ranked" | "blend" | "ease" | "retrieval", "why"}`` from the validation
    end to end of the held-out users (NDCG@10, the saved ``loss`` ranker's table): the
    best learned order (the ranker or the blend, by mean) is served only where it beats
    the best fixed order (EASE's or retrieval's, by mean) with a 95% CI above 0;
    otherwise that fixed order, which is at least as good there. Validation tables from
    before the blend hold the ranker and retrieval order alone, and decide alike."""
    table = validation["losses"][loss]

    def best(names):
        present = [n for n in names if isinstance(table.get(n), dict)]
        return max(present, key=lambda n: np.nan_to_num(table[n][CHOICE_METRIC], nan=-np.inf))

    learned, fixed = best(LEARNED_ORDERS), best(FIXED_ORDERS)
    d = table["differences"][f"{learned} - {fixed}"][CHOICE_METRIC]
    shown = (f"validation {CHOICE_METRIC} {ORDER_LABELS[learned]} - {ORDER_LABELS[fixed]} "
             + (interval(d) if d["difference"] is not None
                else "unmeasured (fewer than 2 users)"))
    if d["difference"] is not None and d["significant"] and d["difference"] > 0:
        return {"order": SERVED[learned], "why": shown}
    return {"order": SERVED[fixed],
            "why": f"the {'ranker' if learned == 'ranked' else 'blend'} does not beat "
                   f"{ORDER_LABELS[fixed]}: {shown}"}


def run(features: str | os.PathLike = "data/features", model: str | os.PathLike = "data/model",
        config: RankingConfig = RankingConfig(), *, compare_losses: bool = False,
        with_ablations: bool = False, progress: bool = True) -> dict:
    """Stage function behind ``python -m pipelines train-ranking``.

    Trains the ranker with ``config.loss`` and, with ``compare_losses``, one ranker per
    other loss on the same lists for the comparison (made on validation, end to end on
    the held-out users; test numbers are reported only) and, with ``with_ablations``, the
    ablation rankers (``ablation_variants``), each paired with it on the same users. Adds
    ``ranker/`` (the ``config.loss`` ranker), the metrics (``metrics.json`` ->
    ``ranking``) and the config to the model directory in one atomic swap. Returns the
    ranking metrics.
    """
    model_dir = Path(model)
    tables = FeatureTables.load(features)
    inter = tables.interactions
    if not inter.loc[inter["split"] == config.fit_split, "is_label"].any():
        raise InputError(
            f"The {config.fit_split} split has no scored entries (statuses "
            f"{', '.join(tables.schema['config']['label_statuses'])} with a score): the ranker "
            "learns graded relevance from scores, and this source has none there. The "
            f"retrieval model in {model_dir} is complete without a ranker: serve it as it is "
            "(recommendations then follow the retrieval score) and evaluate it with "
            "`python -m pipelines evaluate`.")
    retrieval = artifact.RetrievalArtifact(model_dir).for_tables(tables)
    config = feasible(config, retrieval)
    losses = [config.loss] + ([l for l in LOSS_NAMES if l != config.loss] if compare_losses else [])
    metrics, rankers, records = fit_and_evaluate(tables, retrieval, config, losses,
                                                 progress=progress)
    # What the ranker learned from (the report sets it beside the other methods' data).
    metrics["fitted_on"] = covered(tables.schema, config.fit_split)
    if with_ablations:
        metrics["ablations"] = ablations(tables, retrieval, config, records[config.loss],
                                         progress=progress)
    with artifact.update(model_dir) as tmp:
        export_ranker(rankers[config.loss].ranker, tables, retrieval.widths, tmp / "ranker")
        all_metrics = artifact.read_json(tmp, artifact.METRICS)
        all_metrics["ranking"] = metrics
        artifact.write_json(tmp, artifact.METRICS, all_metrics)
        config_json = artifact.read_json(tmp, artifact.CONFIG)
        config_json["ranking"] = config.to_dict()
        config_json["serving"] = metrics["validation"]["serving"]
        config_json["blend"] = metrics["blend"]
        artifact.write_json(tmp, artifact.CONFIG, config_json)
    return metrics


def _difference(d: dict) -> str:
    """``+0.0065 [-0.0017, +0.0140] (not significant)``."""
    if d["difference"] is None:
        return "- (fewer than 2 users)"
    return interval(d) + ("" if d["significant"] else " (not significant)")


def format_validation(validation: dict) -> str:
    """The validation table (held-out users, end to end), the ranked order's CIs against
    retrieval and popularity order, and the loss choice."""
    losses = validation["losses"]
    first = next(iter(losses.values()))
    rows = [(f"ranked, {name}", m["ranked"]) for name, m in losses.items()]
    rows += other_order_rows(first)
    lines = [table(rows, END_TO_END_COLUMNS, markdown=False,
                   label=f"validation (held-out users): end to end over {validation['candidates']} "
                         f"({first['users']:,} users neither fitted on nor stopped on)")]
    for name, m in losses.items():
        for pair, d in m["differences"].items():
            lines.append(f"  {pair.replace('_', ' ')} ({name}), NDCG@10: {_difference(d['ndcg@10'])}")
    choice = validation["loss_choice"]
    if choice["differences"]:
        lines.append(f"loss chosen on validation {choice['metric']}: {choice['chosen']}"
                     + "".join(f"; {pair} {_difference(d)}"
                               for pair, d in choice["differences"].items()))
    return "\n".join(lines)


def format_metrics(metrics: dict) -> str:
    """The headline numbers, for the command line: validation first (where choices are
    made), then test (reporting only)."""
    lines = [format_validation(metrics["validation"])]
    serving = metrics["validation"]["serving"]
    lines.append(f"serves: {artifact.ORDER_NAMES[serving['order']]} ({serving['why']})")
    saved = metrics["config"]["loss"]
    chosen = metrics["validation"]["loss_choice"]["chosen"]
    if chosen != saved:
        lines.append(f"  (the saved ranker is {saved}, as configured; validation prefers "
                     f"{chosen}: retrain with --loss {chosen} to use it)")
    rows = [(f"ranker, {name}", m) for name, m in metrics["losses"].items()]
    rows += [(name.replace("_", " "), m) for name, m in metrics["held_out_lists"].items()]
    e = metrics["end_to_end"]
    lines.append(table(rows, LIST_COLUMNS, markdown=False,
                       label="test, reporting only: held-out lists (each test user's scored titles)"))
    if not metrics["lists"]["test"]:
        lines.append("  (none: no test user has two or more scored titles in the test split)")
    for pair, d in metrics["test_loss_differences"]["differences"].items():
        lines.append(f"  {pair}, held-out list NDCG (test, not chosen from): {_difference(d)}")
    lines.append(table([(name.replace("_", " "), e[name]) for name in ("ranked", "retrieval_order")],
                       END_TO_END_COLUMNS, markdown=False,
                       label=f"test, reporting only: end to end over {e['candidates']} "
                             f"({e['users']:,} test users, ranker {saved})"))
    t = metrics["losses"][saved]["training"]
    lines.append(f"training ({saved}): {t['train_lists']:,} lists, "
                 f"{t['epochs']} epochs (best {t['best_epoch']} on held-out NDCG@10), "
                 f"{t['lists_per_second']:,.0f} lists/s")
    return "\n".join(lines)
