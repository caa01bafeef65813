"""The walk-forward test: every compared method fitted on, and queried with, the same
entries.

    python -m pipelines walk-forward --db data/anirank.db --features data/features \
        --model data/model

The selection run (``features``, ``train-retrieval``, ``train-ranking``) chooses every
setting on validation: the two-tower's epochs, EASE's lambda, the ranker and its
settings, what is served. Its own test numbers compare methods on unequal data: the
ranker learned from the validation period ``[T, T+h)``, while stage one (two-tower,
EASE, popularity) was fitted before ``T`` and every test query's history ends at ``T``.

Here, for the test, stage one is refit with the chosen settings on every entry before
``T+h`` (feature tables with ``FeatureConfig.fold_validation``: the same test period
``[T+h, T+2h)``, the validation period in training; the selection model's vocabularies,
so its ranker reads them): the two-tower (warm from the selection model for
``WARM_EPOCHS`` epochs, which ``bench/warm_refit.py`` shows matches a cold refit on
validation, or cold for the chosen epoch count), EASE with the chosen lambda,
popularity, title statistics, user features and histories. The ranker
keeps its fit on the ``[T, T+h)`` lists of the stage one fitted before ``T`` (so its
inputs look like serving's) and reorders the refit stage one's candidates. Every row of
the report is then fitted on, and queried with, the entries before ``T+h``; the report's
data table says so per row (``evaluate``: ``data.methods``). Lists without times: the
same with each list's training and validation parts.

    <work>/features/       the walk-forward feature tables
    <work>/model/          the refit stage one and score head with the selection run's
                           ranker, and its full report (report/report.md, metrics.json["evaluation"])
    <model>/metrics.json   ["walk_forward"]: the walk-forward evaluation (the headline)

The score head is refit too (the chosen epochs and biases' lambda, on the scores
before ``T+h``), so it meets the score baselines, fitted on the same scores, on the same
test entries.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from pipelines import artifact, atomic, evaluate, features, train_retrieval
from pipelines.config import FeatureConfig, RankingConfig, RetrievalConfig, ScoreConfig
from pipelines.errors import InputError
from pipelines.formatting import interval
from pipelines.tables import FeatureTables, load_schema

WORK = "walk_forward"   # the work directory's name, beside the model directory by default
# A refit of the two-tower starts from the model fitted one period earlier and trains this
# many epochs: on validation it matches a cold refit for the chosen epoch count
# (``bench/warm_refit.py``; docs/benchmarks.md), at a fraction of its time. None: cold.
WARM_EPOCHS = 6


def feature_config(schema: dict) -> FeatureConfig:
    """The walk-forward tables' config: the selection tables' (``schema``), their cutoff
    and period pinned (so the test period is theirs), the validation period folded in."""
    config = FeatureConfig.from_dict(schema["config"])
    split = schema.get("split") or {}
    if split.get("fold_validation"):
        raise InputError("These feature tables are walk-forward tables already; pass the "
                         "selection run's tables (`python -m pipelines features`).")
    pinned = {}
    if split.get("protocol") == "as_of":
        pinned = {"as_of": pd.Timestamp(int(split["as_of"]), unit="s").isoformat(),
                  "horizon_days": split["horizon_days"]}
    return dataclasses.replace(config, fold_validation=True, **pinned)


def _selection(model, features_dir, work) -> tuple[Path, Path, dict, dict, dict]:
    """``(model dir, work dir, config.json, metrics.json, the tables' schema)`` of the
    selection run, checked to belong together."""
    model_dir = Path(model)
    work = Path(work) if work is not None else model_dir.parent / WORK
    config = artifact.read_json(model_dir, artifact.CONFIG)
    saved = artifact.read_json(model_dir, artifact.METRICS)
    schema = load_schema(features_dir)
    if config.get("data_fingerprint") != schema["fingerprint"]:
        raise InputError(f"The model in {model_dir} was trained on other data than "
                         f"{features_dir}; pass the feature tables it was trained on.")
    return model_dir, work, config, saved, schema


def _refit_stage_one(features_dir: Path, out: Path, config: dict, retrieval: dict,
                     warm_epochs: int | None, earlier: Path, progress: bool) -> dict:
    """Stage one refit into ``out`` on ``features_dir`` with the selection run's settings
    (``config.json``, ``retrieval`` its metrics): the two-tower warm from the model in
    ``earlier`` for ``warm_epochs`` epochs, or (None) cold for the selection run's best
    epoch count; EASE with its lambda, or none where the selection run had none; the iALS
    baseline's settings for the evaluation stage. Returns the refit's retrieval metrics."""
    ease = retrieval.get("ease")
    return train_retrieval.run(
        features_dir, out, RetrievalConfig.from_dict(config["retrieval"]),
        epochs=retrieval["training"]["best_epoch"] if warm_epochs is None else warm_epochs,
        warm_from=None if warm_epochs is None else earlier,
        ease_lambda=ease["lambda"] if ease else None, with_ease=ease is not None,
        ials=(retrieval.get("ials") or {}).get("settings"), progress=progress, input="memory")


def run(db: str | os.PathLike = "data/anirank.db",
        features_dir: str | os.PathLike = "data/features",
        model: str | os.PathLike = "data/model", work: str | os.PathLike | None = None, *,
        warm_epochs: int | None = WARM_EPOCHS, progress: bool = True) -> dict:
    """Stage function behind ``python -m pipelines walk-forward``: the walk-forward
    tables and refit into ``work``, the evaluation of every method on them, and its
    summary into ``<model>/metrics.json["walk_forward"]`` (one atomic swap). Returns
    the walk-forward evaluation metrics (``report``: its report directory).

    ``warm_epochs``: the two-tower refit starts from ``model``'s towers and trains this
    many epochs (``WARM_EPOCHS``); None: from scratch, for the selection run's best
    epoch count."""
    start = time.perf_counter()
    model_dir, work, config, saved, schema = _selection(model, features_dir, work)
    retrieval = saved.get("retrieval") or {}
    if "training" not in retrieval:
        raise InputError(f"{model_dir}/metrics.json has no retrieval training record; "
                         "retrain the model (`python -m pipelines train-retrieval`).")
    features.run(db, work / "features", feature_config(schema), progress=progress,
                 inputs=features.model_inputs(config))
    refit = work / "model"
    _refit_stage_one(work / "features", refit, config, retrieval, warm_epochs, model_dir,
                     progress)
    if config.get("ranking") and (model_dir / "ranker").exists():
        # The ranker as the selection run fitted and chose it, over the refit stage one.
        with artifact.update(refit) as tmp:
            shutil.copytree(model_dir / "ranker", tmp / "ranker")
            _copy_keys(config, tmp, ("ranking", "serving", "blend"))
            refit_metrics = artifact.read_json(tmp, artifact.METRICS)
            refit_metrics["ranking"] = saved.get("ranking") or {}
            artifact.write_json(tmp, artifact.METRICS, refit_metrics)
    scores = _refit_scores(config, saved, model_dir, work / "features", refit, progress)
    if scores:
        with artifact.update(refit) as tmp:   # what the selection run chose, and the refit
            refit_metrics = artifact.read_json(tmp, artifact.METRICS)
            refit_metrics["scores"] = {**saved["scores"], "refit": scores}
            artifact.write_json(tmp, artifact.METRICS, refit_metrics)
    metrics = evaluate.run(refit, work / "features", progress=progress)
    with artifact.update(model_dir) as tmp:
        all_metrics = artifact.read_json(tmp, artifact.METRICS)
        summary = {k: v for k, v in metrics.items() if k != "report"}
        summary["seconds"] = round(time.perf_counter() - start, 1)
        all_metrics["walk_forward"] = summary
        artifact.write_json(tmp, artifact.METRICS, all_metrics)
        if "evaluation" in all_metrics and (tmp / "report" / "report.md").exists():
            # The selection report, with the walk-forward headline beside its data table.
            (tmp / "report" / "report.md").write_text(
                evaluate.render({**all_metrics["evaluation"], "walk_forward": summary}))
    return metrics


def release(db: str | os.PathLike = "data/anirank.db",
            features_dir: str | os.PathLike = "data/features",
            model: str | os.PathLike = "data/model", work: str | os.PathLike | None = None, *,
            warm_epochs: int | None = WARM_EPOCHS, progress: bool = True) -> dict:
    """Stage function behind ``python -m pipelines release`` (the last step of ``run``,
    after ``run`` above): the served model refit on every entry with the settings the
    selection run chose, so it knows today.

    - stage one on every entry (feature tables with ``FeatureConfig.final``, the selection
      model's vocabularies): the two-tower warm from the walk-forward one
      (``WARM_EPOCHS``) or cold for the chosen epoch count, EASE with its lambda;
    - the ranker on the newest period ``[T+h, T+2h)``: its lists come from the
      walk-forward stage one (fitted before that period, so the inputs look like
      serving's), its settings and epochs the selection run's; the blend of its signals
      refit on the same lists;
    - the score head on every score, for the chosen epochs and biases' lambda.

    ``model`` is replaced in one swap by the refit model, which carries the selection
    run's metrics and report (its numbers are those of the walk-forward test) and
    ``metrics.json["release"]``; ``config.json["trained_through"]`` is the newest entry
    time it learned from, ``config.json["selection"]`` the selection tables' split (the
    daily loop's retrain moves it forward). The model it replaces is kept as
    ``<work>/selection``. ``warm_epochs``: as in ``run``; the two-tower starts from the
    walk-forward one. Returns the release summary."""
    from pipelines import train_ranking

    start = time.perf_counter()
    model_dir, work, config, saved, schema = _selection(model, features_dir, work)
    if "walk_forward" not in saved or not (work / "model" / artifact.CONFIG).exists():
        raise InputError(f"{model_dir} has no walk-forward run in {work}: run `python -m "
                         "pipelines walk-forward` first (its stage one makes the lists the "
                         "served ranker learns from).")
    final_features, refit = work / "final" / "features", work / "final" / "model"
    features.run(db, final_features,
                 dataclasses.replace(feature_config(schema), fold_validation=False, final=True),
                 progress=progress, inputs=features.model_inputs(config))
    summary = {"retrieval": _refit_stage_one(final_features, refit, config, saved["retrieval"],
                                             warm_epochs, work / "model", progress)}
    if config.get("ranking") and (model_dir / "ranker").exists():
        ranking_config = RankingConfig.from_dict(config["ranking"])
        chosen = saved["ranking"]["losses"][ranking_config.loss]["training"]
        newest = FeatureTables.load(work / "features")
        stage_one = artifact.RetrievalArtifact(work / "model").for_tables(newest)
        ranker, summary["ranking"] = train_ranking.refit(newest, stage_one, ranking_config,
                                                         chosen["best_epoch"], progress=progress)
        with artifact.update(refit) as tmp:
            train_ranking.export_ranker(ranker.ranker, newest, stage_one.widths, tmp / "ranker")
            # The selection run's choices; the blend refit on the same lists as the ranker.
            _copy_keys({**config, "blend": summary["ranking"]["blend"]}, tmp,
                       ("ranking", "serving", "blend"))
    scores = _refit_scores(config, saved, model_dir, final_features, refit, progress)
    if scores:
        summary["scores"] = scores
    with artifact.update(refit) as tmp:
        served = artifact.read_json(tmp, artifact.CONFIG)
        served["selection"] = {"config": schema["config"], "split": schema["split"]}
        artifact.write_json(tmp, artifact.CONFIG, served)
        summary.update(trained_through=served["trained_through"],
                       seconds=round(time.perf_counter() - start, 1))
        artifact.write_json(tmp, artifact.METRICS, {**saved, "release": summary})
        if (model_dir / "report").exists():
            shutil.copytree(model_dir / "report", tmp / "report", dirs_exist_ok=True)
            if "evaluation" in saved:
                (tmp / "report" / "report.md").write_text(evaluate.render({
                    **saved["evaluation"], "walk_forward": saved["walk_forward"],
                    "release": summary}))
    with atomic.directory(work / "selection") as tmp:   # the model it replaces, kept
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
    with atomic.directory(model_dir) as tmp:
        shutil.copytree(refit, tmp, dirs_exist_ok=True)
    shutil.rmtree(refit)
    return summary


def _refit_scores(config: dict, saved: dict, model_dir: Path, features_dir: Path, refit: Path,
                  progress: bool) -> dict | None:
    """The score head refit into ``refit`` on ``features_dir``'s training scores with the
    selection run's choices (its best epoch count and biases' lambda; no validation
    read), where the selection model has one. Returns the refit's summary, else None."""
    from pipelines import train_scores

    if not config.get("scores") or not (model_dir / "scorer").exists():
        return None
    chosen = saved["scores"]["training"]
    tables = FeatureTables.load(features_dir)
    head, summary = train_scores.train(
        tables, ScoreConfig.from_dict(config["scores"]), epochs=chosen["best_epoch"],
        bias_lambda=chosen["bias_lambda"], progress=progress)
    with artifact.update(refit) as tmp:
        train_scores.export_scorer(head, tables, tables.widths, tmp / "scorer")
        _copy_keys(config, tmp, ("scores",))
    return summary


def _copy_keys(config: dict, directory: Path, keys) -> None:
    """The selection model's ``config.json`` entries ``keys`` into ``directory``'s."""
    target = artifact.read_json(directory, artifact.CONFIG)
    target.update({k: config[k] for k in keys if k in config})
    artifact.write_json(directory, artifact.CONFIG, target)


def format_release(summary: dict) -> str:
    """The release's lines for the command line."""
    parts = [f"two-tower {summary['retrieval']['training']['epochs']} epochs"]
    if "ranking" in summary:
        r = summary["ranking"]
        parts.append(f"ranker {r['epochs']} epochs on {r['train_lists']:,} lists of the newest "
                     "period")
    if "scores" in summary:
        parts.append(f"score head {summary['scores']['epochs']} epochs on "
                     f"{summary['scores']['train_entries']:,} scores")
    return (f"served model refit on every entry through {summary['trained_through']}: "
            + ", ".join(parts) + f" ({summary['seconds']} s)")


def format_summary(metrics: dict) -> str:
    """The walk-forward headline for the command line."""
    data = metrics["data"]
    lines = [f"walk-forward test: {metrics['protocol']['test_split']}",
             "every compared method " + ("fitted on and queried with the same entries: "
                                         + next(iter(data["methods"].values()))["fitted_on"]
                                         if data["same_data"] else
                                         "NOT on the same entries (the report's data table)")]
    ranking = metrics.get("ranking") or {}
    differences, served = ranking.get("differences") or {}, ranking.get("served", "ranked")
    for name in ("EASE", evaluate.IALS):
        d = differences.get(f"{served} - {name}")
        if d:
            lines.append(f"{served.replace('_', ' ')} - {name} (refit), NDCG@10: "
                         f"{interval(d['ndcg@10'])}")
    for pair, d in ((metrics.get("scores") or {}).get("differences") or {}).items():
        lines.append(f"{pair} (refit), squared error per user: {interval(d['per_user'])}")
    lines.append(evaluate.format_summary(metrics))
    return "\n".join(lines)
