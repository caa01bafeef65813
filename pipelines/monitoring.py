"""Monitoring of the daily loop: input drift per day, and the report over all days.

``drift`` compares a day's outcomes with the model's training period by the population
stability index, ``PSI = sum_b (a_b - e_b) ln(a_b / e_b)`` over bins ``b`` (``e``: the
training period's shares, ``a``: the day's), of four inputs: the score given, the
title's popularity in training (deciles of the training entries; titles the model does
not know, i.e. new releases, in a bin of their own), the title's format and the user's
activity (training entries, deciles). By the usual reading, under 0.1 is stable, 0.1 to
0.25 a moderate shift and over 0.25 a large one.

``write`` turns the stored daily metrics of one model revision into
``<dir>/report.md``, ``<dir>/metrics.json`` and plots, and says in one plain line when
quality stayed below a threshold for several days (``Thresholds``), e.g.
``retrain: MAE 14.2 > 12.0 for 3 days``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import atomic
from pipelines.formatting import table

PSI_FLOOR = 1e-4  # a bin's share is at least this: an empty bin must not make PSI infinite
DRIFT_INPUTS = ("score", "title_popularity", "format", "user_activity")
# The report's quality table: (header, key in a day's metrics, number format).
QUALITY_COLUMNS = (
    ("outcomes", "outcomes", "d"), ("scored", "scored_known", "d"),
    ("unknown titles", "unknown_title_share", ".1%"),
    ("MAE model", "scores.model.mae", ".2f"), ("MAE user mean", "scores.user_mean.mae", ".2f"),
    ("MAE title mean", "scores.title_mean.mae", ".2f"),
    ("RMSE model", "scores.model.rmse", ".2f"), ("RMSE user mean", "scores.user_mean.rmse", ".2f"),
    ("Spearman model", "scores.model.spearman", ".3f"),
    ("Spearman user mean", "scores.user_mean.spearman", ".3f"),
    ("new titles", "new_titles", "d"),
    ("hit@10 model", "hits.model.hit@10", ".3f"),
    ("hit@10 popularity", "hits.recent_popularity.hit@10", ".3f"),
    ("hit@100 model", "hits.model.hit@100", ".3f"),
    ("hit@100 popularity", "hits.recent_popularity.hit@100", ".3f"))


def psi(expected: pd.Series, actual: pd.Series) -> float:
    """PSI of two categorical samples (bin labels); NaN when either is empty."""
    if not len(expected) or not len(actual):
        return math.nan
    bins = sorted(set(expected.unique()) | set(actual.unique()), key=str)
    e = expected.value_counts(normalize=True).reindex(bins, fill_value=0).to_numpy()
    a = actual.value_counts(normalize=True).reindex(bins, fill_value=0).to_numpy()
    e, a = np.maximum(e, PSI_FLOOR), np.maximum(a, PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def _deciles(reference: np.ndarray, values: np.ndarray) -> pd.Series:
    """Decile bin labels of ``values`` by the edges of ``reference`` (NaN: "new")."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, 11)[1:-1])) if len(reference) \
        else np.zeros(0)
    labels = np.searchsorted(edges, values, side="right").astype(object)
    labels[np.isnan(values)] = "new"
    return pd.Series(labels)


def training_cutoff(rec) -> int | None:
    """The end of the model's training period (Unix seconds), when its split was by time."""
    split = rec.config.get("feature_schema", {}).get("split", {})
    return split.get("as_of")


def drift(rec, outcomes: pd.DataFrame, entries: pd.DataFrame, start: int,
          formats: pd.Series) -> dict:
    """PSI of each of ``DRIFT_INPUTS`` between the training period (the tracked users'
    entries updated before the model's cutoff, or before ``start`` for a model split
    per user) and the day's ``outcomes``. ``formats``: media id -> format, of every
    title the store knows (new releases too)."""
    cutoff = training_cutoff(rec) or start
    updated = entries["updated_at"].astype("Float64").to_numpy(dtype=float, na_value=-np.inf)
    reference = entries[updated < cutoff]
    popularity = rec.anime.set_index("media_id")["train_count"].astype(float)
    formats = formats.astype(str)
    activity = rec.users.set_index("user_id")["n_train"].astype(float) \
        if "n_train" in rec.users else None

    def score_bins(frame):
        s = frame["score"].to_numpy()
        return pd.Series((s[s > 0] - 1) // 10)

    ref_pop = popularity.reindex(reference["media_id"]).to_numpy()
    out = {
        "score": psi(score_bins(reference), score_bins(outcomes)),
        "title_popularity": psi(
            _deciles(ref_pop[~np.isnan(ref_pop)], ref_pop),
            _deciles(ref_pop[~np.isnan(ref_pop)],
                     popularity.reindex(outcomes["media_id"]).to_numpy())),
        "format": psi(formats.reindex(reference["media_id"]).fillna("unknown").reset_index(drop=True),
                      formats.reindex(outcomes["media_id"]).fillna("unknown").reset_index(drop=True)),
    }
    if activity is not None:
        ref_act = activity.reindex(reference["user_id"]).to_numpy()
        known = ref_act[~np.isnan(ref_act)]
        out["user_activity"] = psi(_deciles(known, ref_act),
                                   _deciles(known, activity.reindex(outcomes["user_id"]).to_numpy()))
    return out


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """When the report says to retrain: the model's MAE above ``mae`` for ``days``
    consecutive days (the days that have scored outcomes), or any input's PSI above
    ``psi`` for as long."""

    mae: float
    days: int = 3
    psi: float = 0.25

    @classmethod
    def for_model(cls, rec, mae: float | None = None, days: int = 3,
                  factor: float = 1.25) -> "Thresholds":
        """``mae``, or by default ``factor`` times the model's own test MAE (its
        ``metrics.json``; 15 points when the model has no score head)."""
        if mae is None:
            path = Path(rec.directory) / "metrics.json"
            test = (json.loads(path.read_text()).get("scores", {}).get("test", {})
                    if path.exists() else {})
            own = test.get("predictors", {}).get("score head", {}).get("mae")
            mae = round(factor * own, 1) if own else 15.0
        return cls(mae=float(mae), days=days)


def degraded(days: pd.DataFrame, thresholds: Thresholds) -> bool:
    """Has quality fallen: the model's MAE above ``thresholds.mae`` on each of the last
    ``thresholds.days`` days? (What ``daily --retrain-if-degraded`` retrains on; drift
    alone only warns.)"""
    recent = days.tail(thresholds.days)
    if len(recent) < thresholds.days:
        return False
    maes = [m["scores"]["model"]["mae"] for m in recent["metrics"]]
    return all(not math.isnan(x) and x > thresholds.mae for x in maes)


def alerts(days: pd.DataFrame, thresholds: Thresholds) -> list[str]:
    """The plain lines that ask for a retrain, from the last ``thresholds.days`` days
    (``days``: one row per day with a ``metrics`` dict, in day order)."""
    recent = days.tail(thresholds.days)
    if len(recent) < thresholds.days:
        return []
    out = []
    if degraded(days, thresholds):
        mae = recent["metrics"].iloc[-1]["scores"]["model"]["mae"]
        out.append(f"retrain: MAE {mae:.1f} > {thresholds.mae:.1f} for "
                   f"{thresholds.days} days")
    for name in DRIFT_INPUTS:
        values = [m.get("drift", {}).get(name, math.nan) for m in recent["metrics"]]
        if all(not math.isnan(v) and v > thresholds.psi for v in values):
            out.append(f"retrain: {name} drifted (PSI {values[-1]:.2f} > {thresholds.psi:.2f} "
                       f"for {thresholds.days} days)")
    return out


def write(days: pd.DataFrame, out: str | Path, revision: str, thresholds: Thresholds) -> dict:
    """Rewrites the monitoring report of ``revision`` from its stored daily metrics
    (``store.read_daily(conn, "metrics", revision)``): report.md, metrics.json, and
    scores.png / hits.png. Returns the paths and the alert lines."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found = alerts(days, thresholds)
    rows = list(zip(days["day"], days["metrics"]))
    lines = [
        f"# Daily monitoring: model {revision}", "",
        "Each day: the tracked users' outcomes (entries completed, dropped or scored that "
        "day, and titles added), the model's predicted scores for them beside the score "
        "baselines as of the day before, and whether the day's new titles were in the "
        "lists served the day before (hit@10 / @100) beside the recent-popularity lists "
        "(most added in the 30 days before, without each user's titles). Written by "
        "`python -m pipelines daily`.", "",
        "## Quality", "",
        table(rows, QUALITY_COLUMNS, label="day"), "",
        "## Input drift (PSI against the training period)", "",
        "Under 0.1: stable; 0.1-0.25: a moderate shift; over 0.25: a large one.", "",
        table(rows, [(name, f"drift.{name}", ".3f") for name in DRIFT_INPUTS], label="day"), "",
        "## Retraining", "",
        (f"Threshold: MAE above {thresholds.mae:.1f}, or an input's PSI above "
         f"{thresholds.psi:.2f}, for {thresholds.days} days in a row."), "",
        *(found or ["No alert: quality and inputs within the thresholds."]), "",
        "![scores](scores.png)", "", "![hits](hits.png)", ""]
    atomic.write_text(out / "report.md", "\n".join(lines))
    atomic.write_text(out / "metrics.json", json.dumps(
        {"revision": revision, "thresholds": dataclasses.asdict(thresholds), "alerts": found,
         "days": dict(zip(days["day"], days["metrics"]))}, indent=2, sort_keys=True))
    _plots(days, out)
    return {"report": str(out / "report.md"), "alerts": found, "days": int(len(days)),
            "degraded": degraded(days, thresholds)}


def _plots(days: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(days["day"])
    for name, series, ylabel in (
            ("scores.png", {"model": ("scores", "model", "mae"),
                            "user mean": ("scores", "user_mean", "mae"),
                            "title mean": ("scores", "title_mean", "mae")}, "MAE (POINT_100)"),
            ("hits.png", {"model @10": ("hits", "model", "hit@10"),
                          "recent popularity @10": ("hits", "recent_popularity", "hit@10"),
                          "model @100": ("hits", "model", "hit@100"),
                          "recent popularity @100": ("hits", "recent_popularity", "hit@100")},
             "hit rate of the day's new titles")):
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for label, (a, b, c) in series.items():
            ax.plot(x, [m[a][b][c] for m in days["metrics"]], marker="o", label=label)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        fig.tight_layout()
        with atomic.file(out / name) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
