"""Model directory + feature tables -> one self-contained evaluation report.

    python -m pipelines evaluate --model data/model --features data/features

Writes ``<model>/report/`` (into a temporary directory, renamed into place when whole):
``metrics.json`` (every number, with the protocol, data fingerprint, versions and
config), ``report.md`` (tables generated from that same dict, plots embedded) and PNG
plots. Everything is recomputed from what the earlier stages saved (towers, index,
ranker), with the metric code those stages use (``ranking/metrics.py`` through
``train_retrieval.rank_per_user`` and ``train_ranking.end_to_end``), so the numbers agree
with the training-time ones. On a synthetic world (``<db>.truth.npz`` beside the store
the features came from) every table also has the oracle that knows the generator:
retrieval by the true log-odds of adding a title (popularity bias + true affinity),
ranking by the true expected score.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipelines import atomic, baselines, synth
from pipelines import features as feature_tables
from pipelines.errors import InputError
from pipelines.formatting import num
from pipelines.train_ranking import (Retrieval, baseline_list_metrics, end_to_end,
                                     held_out_lists, list_metrics, predict_with)
from pipelines.train_retrieval import (Data, factorized_top_k, index_benchmark,
                                       rank_per_user)
from pipelines.config import RankingConfig

CURVE_KS = (1, 5, 10, 20, 50, 100, 200)
E2E_KS = (1, 2, 3, 5, 10, 20)
BUCKETS = ((1, 9), (10, 49), (50, 199), (200, None))


def _bucket_names():
    return [f"{lo}-{hi}" if hi else f"{lo}+" for lo, hi in BUCKETS]


def _load_truth(data: Data, truth: str | os.PathLike | None):
    path = Path(truth) if truth else None
    if path is None and data.schema.get("source_db"):
        candidate = synth.truth_path(data.schema["source_db"])
        path = candidate if candidate.exists() else None
    if path is None:
        return None
    if not path.exists():
        raise InputError(f"No ground truth at {path}.")
    return synth.Truth.load(path)


def _oracle_keys(truth, data: Data):
    """fn(user_rows, anime_rows [n, C] or None) -> the generator's log-odds of adding."""
    media = data.anime["media_id"].to_numpy()
    a_index = truth._index(truth.media_ids, media, "media")
    log_pop = np.log(np.maximum(data.anime["popularity"].fillna(1).to_numpy(), 1))
    u_index = truth._index(truth.user_ids, data.users["user_id"].to_numpy(), "user")

    def all_titles(rows):
        aff = truth.user_vectors[u_index[rows]] @ truth.anime_vectors[a_index].T
        return synth.POPULARITY_BIAS * log_pop[None, :] + synth.TASTE_BIAS * aff

    def within(rows, cand):
        return np.take_along_axis(all_titles(rows), np.maximum(cand, 0), axis=1)

    return all_titles, within


def _retrieval_section(data: Data, retrieval: Retrieval, truth, saved: dict) -> dict:
    queries, candidates = retrieval.queries, retrieval.candidates
    scorers = {"two-tower": lambda r: queries[r] @ candidates.T,
               "most popular": baselines.popularity_scorer(data)}
    # EASE with the lambda the training stage tuned on validation (tuned here if absent).
    tuned = (saved.get("retrieval", {}).get("ease") or {}).get("lambda")
    ease = baselines.fit_ease(data, lam=tuned)
    if ease is not None:
        scorers["EASE"] = ease["scorer"]
    if truth is not None:
        scorers["oracle"] = _oracle_keys(truth, data)[0]
    n_train = data.users["n_train"].to_numpy()
    curves, by_activity = {}, {}
    for name, fn in scorers.items():
        rows, per_user = rank_per_user(fn, data, "test", ks=CURVE_KS)
        curves[name] = {k: float(np.nanmean(v)) for k, v in per_user.items()}
        by_activity[name] = {}
        for (lo, hi), label in zip(BUCKETS, _bucket_names()):
            inside = (n_train[rows] >= lo) & ((n_train[rows] <= hi) if hi else True)
            ok = inside & np.isfinite(per_user["recall@100"])
            by_activity[name][label] = {
                "users": int(ok.sum()),
                "recall@100": float(np.nanmean(per_user["recall@100"][ok])) if ok.any() else None,
                "ndcg@10": float(np.nanmean(per_user["ndcg@10"][ok])) if ok.any() else None}
    test_rows = np.unique(data.pairs("test")["user_row"])
    ids_only = saved.get("retrieval", {}).get("ids_only")
    return {
        "curves": curves, "by_activity": by_activity,
        "ease": None if ease is None else {"lambda": ease["lambda"]},
        "ids_only": None if ids_only is None else {
            k: ids_only[k] for k in ("recall@10", "recall@50", "recall@100", "ndcg@10", "ndcg@100")},
        "factorized": factorized_top_k(queries, candidates, data.pairs("test")),
        "index": index_benchmark(candidates, queries[test_rows], data.anime["media_id"].to_numpy()),
    }


def _ranking_section(model_dir: Path, data: Data, retrieval: Retrieval, truth, saved: dict):
    ranking = retrieval.config.get("ranking")
    if ranking is None or not (model_dir / "ranker").exists():
        return None, None
    config = RankingConfig.from_dict(ranking)
    try:
        ranker = tf.saved_model.load(str(model_dir / "ranker")).signatures["serving_default"]
    except (OSError, ValueError, tf.errors.OpError) as err:
        raise InputError(f"{model_dir / 'ranker'} is not a loadable SavedModel ({type(err).__name__}); "
                         "retrain it with `python -m pipelines train-ranking`.") from None
    lists = held_out_lists(data, retrieval, config)
    scores = predict_with(ranker, data, lists)
    held = {f"ranker ({config.loss})": list_metrics(scores, lists),
            **baseline_list_metrics(data, lists)}
    counts = data.train_counts()
    extra = {"popularity order": lambda users, cand: counts[np.maximum(cand, 0)].astype(float)}
    expected = None
    if truth is not None:
        media = data.anime["media_id"].to_numpy()
        uids = data.users["user_id"].to_numpy()
        rows = np.maximum(lists.anime_rows, 0)
        expected = truth.expected_score(np.repeat(uids[lists.user_rows], rows.shape[1]),
                                        media[rows.reshape(-1)]).reshape(rows.shape)
        held["oracle (true expected score)"] = list_metrics(expected, lists)
        extra["oracle"] = _oracle_keys(truth, data)[1]
    e2e = end_to_end(data, lambda d, l: predict_with(ranker, d, l), retrieval, config,
                     extra_orders=extra, ks=E2E_KS)
    losses = {name: {"ndcg": m["ndcg"], "ndcg@5": m["ndcg@5"]}
              for name, m in saved.get("ranking", {}).get("losses", {}).items()}
    mask = lists.mask
    actual = lists.relevance * config.relevance_scale
    pairs = {"ranker": scores[mask], "score": actual[mask]}
    if expected is not None:
        pairs["true_expected"] = expected[mask]
    section = {"config": config.to_dict(), "held_out_lists": held, "losses_at_training": losses,
               "held_out_users": len(lists), "end_to_end": e2e,
               "score_correlation": {"ranker_vs_score": _correlation(pairs["ranker"], pairs["score"])}}
    if expected is not None:
        section["score_correlation"]["ranker_vs_true_expected"] = _correlation(
            pairs["ranker"], pairs["true_expected"])
    return section, pairs


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation, None where it is undefined (under 2 pairs, a constant side)."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------------------------------
# Plots and the Markdown report.

def _plots(metrics: dict, pairs, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    r = metrics["retrieval"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in r["curves"].items():
        ax.plot(CURVE_KS, [curve[f"recall@{k}"] for k in CURVE_KS], marker="o", label=name)
    if r["ids_only"]:
        ks = (10, 50, 100)
        ax.plot(ks, [r["ids_only"][f"recall@{k}"] for k in ks], "s--", label="two-tower, ids only")
    ax.set(xscale="log", xlabel="K", ylabel="Recall@K (test, seen excluded)", title="Retrieval")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "recall_at_k.png", dpi=110)
    names.append("recall_at_k.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = _bucket_names()
    width = 0.8 / len(r["by_activity"])
    for i, (name, buckets) in enumerate(r["by_activity"].items()):
        ax.bar(np.arange(len(labels)) + i * width, [buckets[b]["recall@100"] or 0 for b in labels],
               width, label=name)
    ax.set_xticks(np.arange(len(labels)) + width * (len(r["by_activity"]) - 1) / 2, labels)
    ax.set(xlabel="training entries of the user", ylabel="Recall@100", title="By user activity")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "by_activity.png", dpi=110)
    names.append("by_activity.png")
    plt.close(fig)

    if metrics.get("ranking"):
        e2e = metrics["ranking"]["end_to_end"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, m in e2e.items():
            if isinstance(m, dict):
                ax.plot(E2E_KS, [m[f"ndcg@{k}"] for k in E2E_KS], marker="o", label=name.replace("_", " "))
        ax.set(xlabel="K", ylabel="NDCG@K (test interactions)",
               title=f"End to end over the top {e2e['candidates']} retrieved")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "ndcg_end_to_end.png", dpi=110)
        names.append("ndcg_end_to_end.png")
        plt.close(fig)

    if metrics.get("ranking") and len(pairs["ranker"]):
        target = "true_expected" if "true_expected" in pairs else "score"
        fig, ax = plt.subplots(figsize=(5, 4))
        hb = ax.hexbin(pairs[target], pairs["ranker"], gridsize=35, mincnt=1, cmap="viridis")
        fig.colorbar(hb, ax=ax, label="titles")
        ax.set(xlabel="true expected score" if target == "true_expected" else "user's score",
               ylabel="ranker score", title="Held-out scored titles")
        fig.tight_layout()
        fig.savefig(out / "scores.png", dpi=110)
        names.append("scores.png")
        plt.close(fig)
    return names




def _dropped_lines(dropped: dict) -> list[str]:
    if not dropped:
        return []
    return ["Left out of the model, for lack of data: " + "; ".join(
        f"`{name}` ({reason})" for name, reason in dropped.items()) + ".", ""]


def render(metrics: dict) -> str:
    """report.md, from the metrics dict alone (so its numbers are metrics.json's)."""
    r = metrics["retrieval"]
    lines = ["# anirank evaluation report", "",
             f"Model `{metrics['model']}`, data fingerprint `{metrics['data']['fingerprint']}`, "
             f"{metrics['data']['counts']['users']:,} users, {metrics['data']['counts']['anime']:,} "
             f"titles. Test split: {metrics['protocol']['test_split']}; titles the user had "
             "before the test period are excluded from every ranking.", "",
             *_dropped_lines(metrics["data"].get("dropped_features") or {}), "## Retrieval", "",
             "| model | " + " | ".join(f"R@{k}" for k in CURVE_KS) + " | N@10 | N@100 |",
             "|---|" + "---|" * (len(CURVE_KS) + 2)]
    for name, c in r["curves"].items():
        lines.append(f"| {name} | " + " | ".join(num(c[f"recall@{k}"]) for k in CURVE_KS)
                     + f" | {num(c['ndcg@10'])} | {num(c['ndcg@100'])} |")
    if r["ids_only"]:
        i = r["ids_only"]
        lines.append("| two-tower, ids only (training stage) | | | " + num(i["recall@10"]) + " | | "
                     + num(i["recall@50"]) + " | " + num(i["recall@100"]) + " | | "
                     + num(i["ndcg@10"]) + " | " + num(i["ndcg@100"]) + " |")
    if r.get("ease"):
        tt, ease = r["curves"]["two-tower"]["recall@100"], r["curves"]["EASE"]["recall@100"]
        verdict = "beats" if tt > ease else "does NOT beat"
        lines += ["", f"EASE: closed-form item-item weights from the training split, lambda "
                  f"{r['ease']['lambda']:g} (picked by validation Recall@100). The two-tower "
                  f"{verdict} it at Recall@100 ({num(tt)} vs {num(ease)})."]
    else:
        lines += ["", f"EASE: skipped: {metrics['data']['counts']['anime']:,} titles is more "
                  f"than the {baselines.MAX_EASE_TITLES:,} its dense title x title inverse allows."]
    f = r["factorized"]
    lines += ["", "Factorized top-K accuracy (TFRS's metric: all titles, nothing excluded): "
              + ", ".join(f"@{k[4:]} {num(v)}" for k, v in f.items()) + ".", "",
              "![Recall@K](recall_at_k.png)", "", "### By user activity (training entries)", "",
              "| model | " + " | ".join(_bucket_names()) + " |", "|---|" + "---|" * len(BUCKETS)]
    for name, buckets in r["by_activity"].items():
        lines.append(f"| {name} Recall@100 | " + " | ".join(
            f"{num(buckets[b]['recall@100'])} ({buckets[b]['users']})" for b in _bucket_names()) + " |")
    x = r["index"]
    lines += ["", "![By activity](by_activity.png)", "", "### ScaNN against brute force", "",
              f"Tree + asymmetric hashing over {x['candidates']:,} candidates, "
              f"{x['queries']:,} test-user queries, k = {x['k']}: recall {num(x['scann_recall'])}; "
              f"{x['scann_queries_per_second']:,.0f} queries/s vs "
              f"{x['brute_force_queries_per_second']:,.0f} for exact batched matmul.", ""]
    k = metrics.get("ranking")
    if k:
        held_out = k.get("held_out_users", 1)
        lines += ["## Ranking", "", "### Held-out lists (each test user's scored titles)", "",
                  *(["No test user has two or more scored titles in the test split, so there "
                     "are no held-out lists to order: the table is empty (-).", ""]
                    if not held_out else []),
                  "| order | NDCG | NDCG@5 |", "|---|---|---|"]
        for name, m in k["held_out_lists"].items():
            lines.append(f"| {name.replace('_', ' ')} | {num(m['ndcg'])} | {num(m['ndcg@5'])} |")
        for name, m in k["losses_at_training"].items():
            lines.append(f"| ranker trained with {name} (training stage) | {num(m['ndcg'])} | {num(m['ndcg@5'])} |")
        e = k["end_to_end"]
        lines += ["", f"### End to end: retrieve {e['candidates']}, rank ({e['users']:,} test users)", "",
                  "| order | NDCG@10 | Recall@10 | MRR |", "|---|---|---|---|"]
        for name, m in e.items():
            if isinstance(m, dict):
                lines.append(f"| {name.replace('_', ' ')} | {num(m['ndcg@10'])} | "
                             f"{num(m['recall@10'])} | {num(m['mrr'])} |")
        corr = k["score_correlation"]
        lines += ["", "![NDCG@K end to end](ndcg_end_to_end.png)", "",
                  "Correlation of ranker scores with users' scores on held-out titles: "
                  + num(corr["ranker_vs_score"])
                  + (f"; with the true expected score: {num(corr['ranker_vs_true_expected'])}"
                     if "ranker_vs_true_expected" in corr else "") + ".", "",
                  *(["![Scores](scores.png)", ""] if held_out else [])]
    lines += ["## Provenance", "", "```json", json.dumps(
        {"versions": metrics["versions"], "protocol": metrics["protocol"]}, indent=2,
        sort_keys=True), "```", ""]
    return "\n".join(lines)


def run(model: str | os.PathLike = "data/model", features: str | os.PathLike = "data/features",
        out: str | os.PathLike | None = None, truth: str | os.PathLike | None = None, *,
        progress: bool = True) -> dict:
    """Stage function behind ``python -m pipelines evaluate``. Returns the metrics, with
    ``report`` set to the report directory."""
    start = time.perf_counter()
    model_dir = Path(model)
    out = Path(out) if out else model_dir / "report"
    data = Data.load(features)
    retrieval = Retrieval(model_dir, data)
    saved = json.loads((model_dir / "metrics.json").read_text())
    truth_data = _load_truth(data, truth)
    metrics = {
        "model": str(model_dir),
        "data": {"fingerprint": data.schema["fingerprint"], "counts": data.schema["counts"],
                 "source_db": data.schema.get("source_db"), "oracle": truth_data is not None,
                 "dropped_features": data.schema.get("dropped_features", {})},
        "protocol": {"split": "test", "test_fraction": data.schema["config"]["test_fraction"],
                     "test_split": feature_tables.describe_split(data.schema),
                     "excluded": "every entry of the user before the test period",
                     "relevant": "the user's test interactions ("
                                 + ", ".join(data.schema["config"]["interaction_statuses"]) + ")",
                     "retrieval_oracle": "popularity bias x log popularity + taste bias x true affinity",
                     "ranking_oracle": "true expected score"},
        "versions": retrieval.config["versions"],
        "config": {k: retrieval.config.get(k) for k in ("retrieval", "ranking", "index")},
    }
    metrics["retrieval"] = _retrieval_section(data, retrieval, truth_data, saved)
    metrics["ranking"], pairs = _ranking_section(model_dir, data, retrieval, truth_data, saved)
    metrics["seconds"] = round(time.perf_counter() - start, 1)

    with atomic.directory(out) as tmp:
        _plots(metrics, pairs, tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        (tmp / "report.md").write_text(render(metrics))  # last: a report.md means complete
    metrics["report"] = str(out)
    return metrics


def format_summary(metrics: dict) -> str:
    c = metrics["retrieval"]["curves"]
    lines = ["retrieval Recall@100: " + ", ".join(f"{n} {num(m['recall@100'])}" for n, m in c.items())]
    if metrics.get("ranking"):
        e = metrics["ranking"]["end_to_end"]
        lines.append("end-to-end NDCG@10: " + ", ".join(
            f"{n.replace('_', ' ')} {num(m['ndcg@10'])}" for n, m in e.items() if isinstance(m, dict)))
    lines.append(f"report: {metrics['report']}/report.md")
    return "\n".join(lines)
