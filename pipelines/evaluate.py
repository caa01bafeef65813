"""Model directory + feature tables -> one self-contained evaluation report.

    python -m pipelines evaluate --model data/model --features data/features

Writes ``<model>/report/`` (report.md, tables generated from the metrics, and PNG plots)
and the numbers into ``<model>/metrics.json`` under ``evaluation`` (with the protocol,
data fingerprint, versions and configs), in one atomic swap of the model directory
(``pipelines/artifact.py``); ``--report DIR`` writes a standalone report directory
instead. Everything is recomputed from what the earlier stages saved (towers, index,
ranker) with the protocol those stages use (``pipelines/protocol.py``), so the numbers
agree with the training-time ones. On a synthetic world (``<db>.truth.npz`` beside the
store the features came from) every table also has the generator's own row (a reference):
retrieval by the true log-odds of adding a title (popularity bias + true affinity),
ranking by the true expected score.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from pipelines import artifact, atomic, baselines, protocol, synth
from pipelines import features as feature_tables
from pipelines.config import RankingConfig
from pipelines.errors import InputError
from pipelines.formatting import (BEYOND_COLUMNS, END_TO_END_COLUMNS, LIST_COLUMNS, ORDER_LABELS, interval,
                                  num, other_order_rows, table)
from pipelines.tables import FeatureTables
from ranking import blend as linear_blend
from towers.index import ann_benchmark

CURVE_KS = (1, 5, 10, 20, 50, 100, 200)
E2E_KS = (1, 2, 3, 5, 10, 20)
BUCKETS = ((1, 9), (10, 49), (50, 199), (200, None))
RECENT = f"most popular, last {baselines.RECENT_DAYS} days"
IALS = "iALS"
# The baselines every model row is compared with (paired CIs), strongest kind first.
BASELINES = ("EASE", IALS, RECENT, "most popular")
# The simpler orders of the ranker's own candidates it is weighed against (end to end).
REORDERERS = {"blend": "the linear blend of its signals", "ease_order": "EASE's order"}
HEAD = "score head"   # the score head's row in the score table (as the score stage names it)
GENERATOR = "generator's odds"   # the synthetic world's own odds of adding: a reference row
GENERATOR_SCORE = "generator's expected score"   # and its noise-free score


def _bucket_names():
    return [f"{lo}-{hi}" if hi else f"{lo}+" for lo, hi in BUCKETS]


def _load_truth(tables: FeatureTables, truth: str | os.PathLike | None):
    path = Path(truth) if truth else None
    if path is None and tables.schema.get("source_db"):
        candidate = synth.truth_path(tables.schema["source_db"])
        path = candidate if candidate.exists() else None
    if path is None:
        return None
    if not path.exists():
        raise InputError(f"No ground truth at {path}.")
    return synth.Truth.load(path)


def _generator_keys(truth, tables: FeatureTables):
    """fn(user_rows) -> [n, num_anime] and fn(user_rows, anime_rows [n, C]) -> [n, C]:
    the generator's log-odds of each user adding each title (``Truth.adding_log_odds``)."""
    media = tables.anime["media_id"].to_numpy()
    users = tables.users["user_id"].to_numpy()

    def all_titles(rows):
        return truth.adding_log_odds(users[rows], media)

    def within(rows, cand):
        return np.take_along_axis(all_titles(rows), np.maximum(cand, 0), axis=1)

    return all_titles, within


def _retrieval_section(tables: FeatureTables, retrieval: artifact.RetrievalArtifact, truth,
                       saved: dict) -> tuple[dict, dict]:
    """The retrieval tables, and the per-user values of every scorer (for pairing with
    the end-to-end orders: the same test users in the same order)."""
    queries, candidate_embeddings = retrieval.queries, retrieval.candidate_embeddings
    scorers = {"two-tower": lambda r: queries[r] @ candidate_embeddings.T,
               "most popular": baselines.popularity_scorer(tables)}
    # EASE as the training stage fitted and saved it (its lambda tuned on validation);
    # refitted with that lambda for a model saved before its weights were, and absent
    # where the training stage skipped it (the report says why).
    ease = (saved.get("retrieval", {}).get("ease") or {}).get("lambda")
    weights = retrieval.load_ease()
    if weights is None and ease is not None:
        weights = baselines.fit_ease(tables, lam=ease)["weights"]
    if weights is not None:
        scorers["EASE"] = baselines.ease_scorer(tables, weights)
    # iALS with the settings the training stage chose on validation, refit here on the
    # same training entries (seeded: the factors the training stage measured).
    ials = (saved.get("retrieval", {}).get("ials") or {}).get("settings")
    if ials is not None:
        scorers[IALS] = baselines.fit_ials(tables, settings=ials)["scorer"]
    recent = baselines.recent_popularity_scorer(tables)
    if recent is not None:
        scorers[RECENT] = recent
    if truth is not None:
        scorers[GENERATOR] = _generator_keys(truth, tables)[0]
    n_train = tables.users["n_train"].to_numpy()
    curves, by_activity, users = {}, {}, {}
    for name, fn in scorers.items():
        rows, per_user = protocol.rank_per_user(fn, tables, "test", ks=CURVE_KS)
        users[name] = per_user   # the same users, in the same order, for every scorer
        curves[name] = {k: float(np.nanmean(v)) for k, v in per_user.items()}
        curves[name]["ci"] = {k: protocol.mean_ci(v) for k, v in per_user.items()
                              if k.startswith("recall@")}
        curves[name]["users"] = int(np.isfinite(per_user["recall@100"]).sum())
        by_activity[name] = {}
        for (lo, hi), label in zip(BUCKETS, _bucket_names()):
            inside = (n_train[rows] >= lo) & ((n_train[rows] <= hi) if hi else True)
            ok = inside & np.isfinite(per_user["recall@100"])
            by_activity[name][label] = {
                "users": int(ok.sum()),
                "recall@100": float(np.nanmean(per_user["recall@100"][ok])) if ok.any() else None,
                "recall@100_ci": protocol.mean_ci(per_user["recall@100"][ok]),
                "ndcg@10": float(np.nanmean(per_user["ndcg@10"][ok])) if ok.any() else None}
    test_rows = np.unique(tables.pairs("test")["user_row"])
    new_titles = None
    if tables.new_anime is not None and len(tables.new_anime):
        new_titles = protocol.new_title_slice(queries, candidate_embeddings,
                                              retrieval.embed_titles(tables.new_anime),
                                              tables, "test")
        if new_titles is not None:
            new_titles = {k: v for k, v in new_titles.items() if not k.endswith("per_user")}
    ablated = {key: saved.get("retrieval", {}).get(key) for key in ("ids_only", "without_history")}
    return ({
        "curves": curves, "by_activity": by_activity,
        "differences": {
            **protocol.differences(users, "two-tower", [n for n in BASELINES if n in users],
                                   ("recall@100", "ndcg@10")),
            # the ablations are not saved: their paired differences come from training
            **(saved.get("retrieval", {}).get("differences") or {})},
        "ease": None if weights is None else {"lambda": ease},
        "ials": None if ials is None else {"settings": ials},
        "ease_skipped": saved.get("retrieval", {}).get("ease_skipped"),
        **{key: None if m is None else {
            k: m[k] for k in ("recall@10", "recall@50", "recall@100", "ndcg@10", "ndcg@100")}
           for key, m in ablated.items()},
        "new_titles": new_titles,
        "factorized": protocol.factorized_top_k(queries, candidate_embeddings, tables.pairs("test")),
        "index": ann_benchmark(candidate_embeddings, queries[test_rows],
                               tables.anime["media_id"].to_numpy()),
    }, users)


def _ranking_section(tables: FeatureTables, retrieval: artifact.RetrievalArtifact, truth,
                     saved: dict, retrieval_per_user: dict):
    ranking = retrieval.config.get("ranking")
    saved_ranker, ranker = artifact.load_ranker(retrieval.directory)
    if ranking is None or ranker is None:
        return None, None
    config = RankingConfig.from_dict(ranking)
    generate = retrieval.ranker_generator(config)
    lists = protocol.held_out_lists(
        tables, config.relevance_scale,
        lambda users, rows: retrieval.signals_for(tables, "test", generate, users, rows))
    scores = _score(ranker, tables, lists)
    held = {f"ranker ({config.loss})": protocol.list_metrics(scores, lists),
            **protocol.baseline_list_metrics(tables, lists)}
    counts = tables.train_counts()
    extra = {"popularity order": lambda users, cand: counts[np.maximum(cand, 0)].astype(float)}
    expected = None
    if truth is not None:
        media = tables.anime["media_id"].to_numpy()
        uids = tables.users["user_id"].to_numpy()
        rows = np.maximum(lists.anime_rows, 0)
        expected = truth.expected_score(np.repeat(uids[lists.user_rows], rows.shape[1]),
                                        media[rows.reshape(-1)]).reshape(rows.shape)
        held[GENERATOR_SCORE] = protocol.list_metrics(expected, lists)
        extra[GENERATOR] = _generator_keys(truth, tables)[1]
    per_user = {}
    candidates = retrieval.candidates(tables, "test", generate)
    # The simpler reorderers the serve decision weighed the ranker against (the blend
    # fitted on the ranker's lists; EASE's order), on the same candidates.
    blend = retrieval.config.get("blend")
    simple = linear_blend.simple_orders(
        counts, linear_blend.Blend.from_dict(blend) if blend else None,
        with_ease="ease" in candidates.signals)
    e2e = protocol.end_to_end(tables, lambda t, l: _score(ranker, t, l), candidates,
                              extra_orders=extra, ks=E2E_KS, per_user=per_user,
                              list_orders=simple)
    e2e["candidates"] = config.candidate_label
    losses = {name: {"ndcg": m["ndcg"], "ndcg@5": m["ndcg@5"]}
              for name, m in saved.get("ranking", {}).get("losses", {}).items()}
    mask = lists.mask
    actual = lists.relevance * config.relevance_scale
    pairs = {"ranker": scores[mask], "score": actual[mask]}
    if expected is not None:
        pairs["true_expected"] = expected[mask]
    # Every order end to end and every scorer over the catalog, on the same test users.
    everyone = {**per_user, **retrieval_per_user}
    section = {"config": config.to_dict(), "held_out_lists": held, "losses_at_training": losses,
               # the numbers every ranker setting was chosen on (the training stage's)
               "validation": saved.get("ranking", {}).get("validation"),
               "ablations": saved.get("ranking", {}).get("ablations"),
               "serving": artifact.served_order(retrieval.config),
               "held_out_users": len(lists), "end_to_end": e2e,
               "differences": {
                   **protocol.differences(per_user, "ranked",
                                          [*simple, "retrieval_order", "popularity order"],
                                          ("ndcg@10", "recall@10", "mrr")),
                   # the baselines' own top 10 over the whole catalog, on the same test users
                   **protocol.differences(everyone, "ranked",
                                          [n for n in BASELINES if n in retrieval_per_user],
                                          ("ndcg@10", "recall@10"))},
               "score_correlation": {"ranker_vs_score": _correlation(pairs["ranker"], pairs["score"])}}
    # The order the model serves, when it is not the ranker, against the same baselines:
    # the headline is about what people get.
    served = artifact.ORDER_KEYS[section["serving"]["order"]]
    section["served"] = served
    if served != "ranked" and served in per_user:
        rivals = [n for n in (*BASELINES, "ranked", *REORDERERS, "retrieval_order")
                  if n != served and n in everyone]
        section["differences"].update(protocol.differences(
            everyone, served, rivals, ("ndcg@10", "recall@10")))
    if expected is not None:
        section["score_correlation"]["ranker_vs_true_expected"] = _correlation(
            pairs["ranker"], pairs["true_expected"])
    return section, pairs


def _scores_section(tables: FeatureTables, model_dir: Path, saved: dict, truth) -> dict:
    """RMSE/MAE of the score baselines on the test period's scored entries and, for a
    model with a score head (``scorer/``), of the saved head on the same entries, with
    paired bootstrap CIs of its squared error against the baseline the score stage
    compared it with (the best by validation RMSE). On a synthetic world, also the
    generator's noise-free score (a reference, not a competitor: the score noise is all it
    leaves out, so for scores it is a ceiling)."""
    trained = saved.get("scores") or {}
    lambdas = (trained.get("config") or {}).get("bias_lambdas") or baselines.BIAS_LAMBDAS
    _, scorer = artifact.load_scorer(model_dir)
    extra = {}
    if scorer is not None:
        extra[HEAD] = lambda users, titles: artifact.predict_pairs(
            scorer, tables.user_raw, tables.anime_raw, users, titles)
    if truth is not None:
        users, media = tables.users["user_id"].to_numpy(), tables.anime["media_id"].to_numpy()
        extra[GENERATOR_SCORE] = lambda u, a: truth.expected_score(users[u], media[a])
    errors = {}
    section = baselines.score_metrics(tables, "test", lambdas, extra, errors)
    if scorer is not None:
        rated = {n: r["rmse"] for n, r in section["predictors"].items()
                 if n not in (HEAD, GENERATOR_SCORE)}
        best = (trained.get("validation") or {}).get("best_baseline")
        if best not in rated:   # chosen on validation by the score stage; else the biases
            best = next(n for n in rated if n.startswith("user + title biases"))
        users = baselines.scored_entries(tables, "test")[0]
        section["best_baseline"] = best
        section["differences"] = {f"{HEAD} - {best}": baselines.score_differences(
            errors, HEAD, best, users)}
        section["validation"] = {n: trained.get("validation", {}).get("predictors", {}).get(n)
                                 for n in (HEAD, best)}
        section["training"] = trained.get("training")
    return section


def _favourites_note(schema: dict) -> str | None:
    """What the favourites feature may still know of later times (issue 32, item 8), or
    None where it is not used or no cutoff is claimed."""
    used = any(f["name"] == "favourites" for f in schema.get("features", []))
    if not used or (schema.get("split") or {}).get("protocol") != "as_of":
        return None
    return ("Favourites count only entries listed before the cutoff, but a source does not "
            "date a favourite: one marked after the cutoff on an earlier entry still counts, "
            "the one title statistic that can carry later information.")


def _methods_data(tables: FeatureTables, metrics: dict, saved: dict) -> dict:
    """What each compared method was fitted on and what its test queries' histories
    cover (``features.covered``), and whether every method saw the same entries
    (``same_data``). The generator rows are the world's own: not compared, not listed. Stage one
    (two-tower, EASE) says what its training stage recorded; the popularity orders are
    counted here from the tables' training split; the ranked pipeline is fitted on its
    ranker's lists as well as on its stage one."""
    train = feature_tables.covered(tables.schema, "train")
    stage_one = (saved.get("retrieval") or {}).get("fitted_on") or train
    methods = {name: {"fitted_on": stage_one if name in ("two-tower", "EASE") else train,
                      "history": train}
               for name in metrics["retrieval"]["curves"] if name != GENERATOR}
    if metrics.get("ranking"):
        ranker = (saved.get("ranking") or {}).get("fitted_on") or "not recorded"
        methods["ranked"] = {"fitted_on": ranker if ranker == stage_one
                             else f"{stage_one} (stage one); {ranker} (ranker)",
                             "history": train}
    return {"methods": methods,
            "same_data": len({(m["fitted_on"], m["history"]) for m in methods.values()}) == 1}


def _score(ranker, tables: FeatureTables, lists: protocol.Lists) -> np.ndarray:
    return artifact.score_lists(ranker, tables.user_raw, tables.anime_raw, lists.user_rows,
                                lists.anime_rows, lists.signals)


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation, None where it is undefined (under 2 pairs, a constant side)."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------------------------------
# Plots and the Markdown report.

def _plots(metrics: dict, pairs, out: Path) -> list[str]:
    """The report's figures: every curve and bar with its user count and a 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        names.append(name)

    def integer_k_axis(ax, ks):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(k) for k in ks])

    names = []
    r = metrics["retrieval"]
    # The generator's odds get a panel of their own: on one axis they flatten the models'
    # curves.
    models = {n: c for n, c in r["curves"].items() if n != GENERATOR}
    panels = [("Retrieval", models)] + ([("Against the generator's odds", {
        n: r["curves"][n] for n in ("two-tower", GENERATOR)})] if GENERATOR in r["curves"] else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels):
        for name, curve in curves.items():
            values = [curve[f"recall@{k}"] for k in CURVE_KS]
            ax.plot(CURVE_KS, values, marker="o", label=f"{name} ({curve.get('users', 0):,} users)")
            ci = curve.get("ci", {})
            if all(ci.get(f"recall@{k}", [None])[0] is not None for k in CURVE_KS):
                ax.fill_between(CURVE_KS, [ci[f"recall@{k}"][0] for k in CURVE_KS],
                                [ci[f"recall@{k}"][1] for k in CURVE_KS], alpha=0.2)
        if title == "Retrieval" and r["ids_only"]:
            ks = (10, 50, 100)
            ax.plot(ks, [r["ids_only"][f"recall@{k}"] for k in ks], "s--", label="two-tower, ids only")
        integer_k_axis(ax, CURVE_KS)
        ax.set(xlabel="K", ylabel="Recall@K (test, seen excluded; 95% CI band)", title=title)
        ax.legend(fontsize=8)
    save(fig, "recall_at_k.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = _bucket_names()
    width = 0.8 / len(r["by_activity"])
    for i, (name, buckets) in enumerate(r["by_activity"].items()):
        x = np.arange(len(labels)) + i * width
        heights = [buckets[b]["recall@100"] or 0 for b in labels]
        ci = [buckets[b].get("recall@100_ci") or [None, None] for b in labels]
        errors = np.array([[h - (c[0] if c[0] is not None else h), (c[1] if c[1] is not None else h) - h]
                           for h, c in zip(heights, ci)]).T
        ax.bar(x, heights, width, yerr=errors, capsize=2, label=name)
    users = r["by_activity"].get("two-tower") or next(iter(r["by_activity"].values()))
    ax.set_xticks(np.arange(len(labels)) + width * (len(r["by_activity"]) - 1) / 2,
                  [f"{b}\n({users[b]['users']:,} users)" for b in labels])
    ax.set(xlabel="training entries of the user", ylabel="Recall@100 (95% CI)",
           title="By user activity")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, "by_activity.png")

    if metrics.get("ranking"):
        e2e = metrics["ranking"]["end_to_end"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, m in e2e.items():
            if isinstance(m, dict):
                ax.plot(E2E_KS, [m[f"ndcg@{k}"] for k in E2E_KS], marker="o", label=name.replace("_", " "))
        integer_k_axis(ax, E2E_KS)
        ax.set(xlabel="K", ylabel="NDCG@K (test interactions)",
               title=f"End to end over {e2e['candidates']}, {e2e['users']:,} users")
        ax.legend(fontsize=8)
        save(fig, "ndcg_end_to_end.png")

    if metrics.get("ranking") and len(pairs["ranker"]):
        target = "true_expected" if "true_expected" in pairs else "score"
        corr = metrics["ranking"]["score_correlation"][
            "ranker_vs_true_expected" if target == "true_expected" else "ranker_vs_score"]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        x, y = pairs[target], pairs["ranker"]
        hb = ax.hexbin(x, y, gridsize=35, mincnt=1, cmap="viridis")
        fig.colorbar(hb, ax=ax, label="titles")
        if np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            grid = np.array([x.min(), x.max()])
            ax.plot(grid, slope * grid + intercept, "r-", lw=1, label="least-squares line")
            ax.legend(fontsize=8, loc="lower right")
        ax.set(xlabel="true expected score" if target == "true_expected" else "user's score",
               ylabel="ranker score",
               title=f"Held-out scored titles ({len(x):,}), correlation {num(corr, '.3f')}")
        save(fig, "scores.png")
    return names


def _dropped_lines(dropped: dict) -> list[str]:
    if not dropped:
        return []
    return ["Left out of the model, for lack of data: " + "; ".join(
        f"`{name}` ({reason})" for name, reason in dropped.items()) + ".", ""]


def _ranker_warnings(ranking: dict) -> list[str]:
    """Plain warnings where the saved ranker is not the best order on held-out lists."""
    held = ranking["held_out_lists"]
    saved = next((m for name, m in held.items() if name.startswith("ranker")), None)
    if saved is None or saved["ndcg"] is None or saved["ndcg"] != saved["ndcg"]:
        return []
    out = []
    for name in ("popularity", "mean_training_score"):
        other = held.get(name, {}).get("ndcg")
        if other is not None and other > saved["ndcg"]:
            out.append(f"**Note:** on held-out lists the saved ranker ({num(saved['ndcg'])}) "
                       f"orders worse than {name.replace('_', ' ')} order ({num(other)}).")
    loss = ranking["config"]["loss"]
    validation = ranking.get("validation") or {}
    choice = validation.get("loss_choice") or {}
    if choice.get("chosen") not in (None, loss):
        d = choice.get("differences", {}).get(f"{choice['chosen']} - {loss}") or {}
        out.append(f"**Note:** on validation (end to end, held-out users) a ranker trained with "
                   f"{choice['chosen']} scored higher than the saved {loss} ranker"
                   + ("" if d.get("significant") else " (not significant)")
                   + f"; retrain with `--loss {choice['chosen']}` to use it.")
    versus = (validation.get("losses", {}).get(loss, {}).get("differences", {})
              .get("ranked - retrieval_order", {}).get("ndcg@10"))
    if versus and versus["difference"] is not None and not (
            versus["significant"] and versus["difference"] > 0):
        out.append(f"**Note:** on validation the saved ranker does not beat the retrieval order "
                   f"it reorders (NDCG@10 {interval(versus, ', 95% CI ')}): "
                   "retrieval order alone serves at least as well.")
    return out + ([""] if out else [])


def _validation_lines(validation: dict | None) -> list[str]:
    """The table every ranker setting was chosen on: end to end on the validation period
    of the users held out from fitting, per loss, beside the blend, EASE's, retrieval and
    popularity order."""
    if not validation or not validation.get("losses"):
        return []
    losses = validation["losses"]
    first = next(iter(losses.values()))
    rows = [(f"ranked, {name.replace('_', ' ')}", m["ranked"]) for name, m in losses.items()]
    rows += other_order_rows(first)
    lines = ["", f"### Chosen on validation: retrieve {validation['candidates']}, rank "
                 f"({validation['users']:,} validation users not used to fit the ranker)", "",
             table(rows, END_TO_END_COLUMNS, label="order"), ""]
    choice = validation.get("loss_choice")
    if choice and choice.get("differences"):
        lines.append(f"Loss chosen by validation {choice['metric']}: {choice['chosen']} ("
                     + "; ".join(f"{name.replace('_', ' ')} {interval(d)}"
                                 f"{'' if d['significant'] else ', not significant'}"
                                 for name, d in choice["differences"].items()) + "). "
                     "Test below is computed once, after every choice.")
        lines.append("")
    return lines


def _difference_lines(differences: dict | None) -> list[str]:
    """The paired-bootstrap table: each difference with its CI, noise called noise."""
    if not differences:
        return []
    first = next(iter(next(iter(differences.values())).values()))
    lines = [f"Differences on the same test users (paired bootstrap, users resampled "
             f"{first['draws']:,} times, {first['level']:.0%} CI; a difference whose interval "
             "holds 0 is noise):", "", "| comparison | metric | difference | CI | verdict |",
             "|---|---|---|---|---|"]
    for name, by_metric in differences.items():
        for metric, d in by_metric.items():
            lines.append(f"| {name.replace('_', ' ')} | {metric} | {interval(d, ' | ')} | "
                         f"{'significant' if d['significant'] else 'not significant'} |")
    return lines + [""]


def _ablation_lines(ablations: dict | None, full: str) -> list[str]:
    """What each part of the ranker adds: the full ranker's NDCG@10 minus each variant's,
    end to end, on validation (held-out users) and test, each with its paired CI."""
    if not ablations:
        return []
    lines = ["", "### Ablations: the ranker with each part changed", "",
             f"Each variant is trained and chosen exactly as the full ranker ({full}), on the "
             "same users; NDCG@10 end to end, full minus variant with its paired 95% CI (a "
             "positive difference: the full ranker's choice is better). Reported, never "
             "chosen from.", "",
             "| variant | candidates | validation NDCG@10 | full - variant | test NDCG@10 "
             "| full - variant |", "|---|---|---|---|---|---|"]
    for name, row in ablations.items():
        cells = []
        for split in ("validation", "test"):
            d = row[split]["full - variant"]
            cells += [num(row[split]["ndcg@10"]),
                      interval(d) + ("" if d["significant"] else " (noise)")]
        lines.append(f"| {name} | {row['candidates']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _score_lines(sc: dict | None) -> list[str]:
    """The "Predicting a user's score" section: the baselines, and the score head with
    its paired CI against the best of them when the model has one."""
    if not sc:
        return []
    head = sc["predictors"].get(HEAD)
    lines = ["## Predicting a user's score", "",
             f"RMSE and MAE (POINT_100) on the {sc['entries']:,} scored entries of the "
             f"{sc['split']} period, from training entries only (biases: ridge lambda "
             f"{sc['lambda']:g}, picked by validation RMSE). "
             + ("The score head (`predicted_score` in served recommendations) starts from "
                "the biases and adds an interaction MLP over user and title features, "
                "fitted on the training scores and early-stopped on validation RMSE."
                if head else "This model has no score head (`python -m pipelines "
                "train-scores` adds one); these are the baselines it has to beat."), "",
             table(list(sc["predictors"].items()), [("RMSE", "rmse"), ("MAE", "mae")],
                   label="predictor"), ""]
    for pair, d in (sc.get("differences") or {}).items():
        # Per user first: one user's entries are not independent draws, so the interval
        # that resamples users is the honest one; per entry (narrower) is for the record.
        per_entry, per_user = d["per_entry"], d["per_user"]
        verdict = ("within noise" if not per_user["significant"] else
                   "the head is better" if per_user["difference"] < 0 else "the head is WORSE")
        lines += [f"{pair}, squared error on the same test entries (paired bootstrap, "
                  f"{per_user['draws']:,} draws, {per_user['level']:.0%} CI; negative = the "
                  f"head is better): per user {interval(per_user)} ({per_user['users']:,} "
                  f"users resampled, each user's mean difference: {verdict}); per entry "
                  f"{interval(per_entry)} ({per_entry['users']:,} entries resampled as if "
                  "independent, which they are not: narrower"
                  + ("" if per_entry["significant"] else ", not significant") + ").", ""]
    validation, training = sc.get("validation"), sc.get("training")
    if head and validation and all(validation.values()):
        (a, ma), (b, mb) = validation.items()
        lines += [f"Validation RMSE (where the epochs were chosen): {a} {num(ma['rmse'])}, "
                  f"{b} {num(mb['rmse'])}"
                  + (f"; {training['epochs']} epochs, best {training['best_epoch']}, "
                     f"{training['fit_seconds']} s of fitting." if training else "."), ""]
    return lines


def _comparison_lines(metrics: dict) -> list[str]:
    """Which comparisons this run trained and which it left out, so that a missing row
    reads as not asked for, not as lost (they are off unless ``--evidence`` or their own
    flag asks)."""
    r, k = metrics["retrieval"], metrics.get("ranking") or {}
    missing = []
    if r.get("ids_only") is None and r.get("without_history") is None:
        missing.append("the two-tower's ablations (ids only, without the history: "
                       "`--ablations`)")
    if k and len((k.get("validation") or {}).get("losses") or {}) < 2:
        missing.append("one ranker per loss (`--compare-losses`)")
    if k and not k.get("ablations"):
        missing.append("the ranking ablations (`--ranking-ablations`)")
    if not missing:
        return []
    return ["Comparisons not trained in this run: " + "; ".join(missing) + ". `python -m "
            "pipelines run --evidence` (`make evidence`) trains them all, with their paired "
            "CIs, for about three times the time.", ""]


def _data_lines(metrics: dict) -> list[str]:
    """The data each compared method saw (``_methods_data``), and what follows from it."""
    data = metrics["data"]
    if not data.get("methods"):   # a report from before the data table
        return []
    lines = ["## What each method saw", "", "| method | fitted on | test queries' history |",
             "|---|---|---|"]
    lines += [f"| {name} | {m['fitted_on']} | {m['history']} |"
              for name, m in data["methods"].items()]
    if data["same_data"]:
        lines += ["", "Every compared method is fitted on, and queried with, the same entries."]
    else:
        lines += ["", "**Not a same-data comparison:** the rows above saw different entries, "
                  "so a method that saw more can win by it. The walk-forward report (`python "
                  "-m pipelines walk-forward`; `run` makes it) refits them all on the same "
                  "entries; its numbers are the headline."]
    wf = metrics.get("walk_forward")
    if wf:
        lines += ["", *walk_forward_lines(wf)]
    served = metrics.get("release")
    if served:
        lines += ["", f"The served model is refit with these settings on every entry, the "
                  f"newest at {served['trained_through']} (`metrics.json` `release`): the "
                  "numbers in this report are those of the same recipe on earlier cuts."]
    return lines + [""]


def new_title_lines(n: dict | None) -> list[str]:
    """The new-title slice (``protocol.new_title_slice``): titles no one had listed before
    the model's cutoff, served through the candidate tower from their metadata."""
    if not n:
        return []
    k, c = n["k"], n["catalog"]
    hit, d, top = n[f"hit@{k}"], n["differences"], c["k"]
    return ["### New titles (first listed after the cutoff)", "",
            f"{n['titles']:,} titles no one had listed before the cutoff, with "
            f"{n['interactions']:,} test interactions of {n['users']:,} known users; the model "
            "knows them only by their metadata, through its candidate tower (their ids are "
            "out of its vocabulary), and they are not in the tables above.", "",
            f"- The shelf (each user's order of these {n['titles']:,} titles), hit@{k}: "
            f"two-tower {num(hit['two-tower'])}, the period's popularity {num(hit['period popularity'])} "
            f"(it counts the test period itself: a reference no model at the query time "
            f"has), random {num(hit['random'])}. Two-tower - period popularity "
            f"{interval(d['two-tower - period popularity'], ', 95% CI ')}; two-tower - random "
            f"{interval(d['two-tower - random'], ', 95% CI ')}.",
            f"- Known and new titles ranked together ({c['users']:,} test users): "
            f"Recall@{top} {num(c[f'recall@{top}'])}, NDCG@10 {num(c['ndcg@10'])} of all "
            f"their test interactions; a new title of theirs among the {top} candidates "
            f"for {num(c[f'new_hit@{top}'])} of those with one; new titles are "
            f"{num(c['new_share'])} of the candidates.", ""]


def beyond_accuracy_lines(e: dict, level: str = "###") -> list[str]:
    """What each order's top 10 is, whatever the user did with it (an end-to-end
    section's ``variety@10``, ``novelty@10``, ``coverage@10``)."""
    rows = [(name.replace("_", " "), m) for name, m in e.items()
            if isinstance(m, dict) and "novelty@10" in m]
    if not rows:
        return []
    return [f"{level} Beyond accuracy: what each top 10 is", "",
            table(rows, BEYOND_COLUMNS, label="order"), "",
            "The same test users and candidates. Genre variety: one minus the mean Jaccard "
            "similarity of the genres of each pair of titles in a top 10 (0: all alike; 1: "
            "no two share a genre; - where the source has no genres). Novelty: the mean "
            "-log2 of the share of training users who have each title (higher: less "
            "known). Coverage: the share of the catalog in some test user's top 10.", ""]


def walk_forward_lines(wf: dict) -> list[str]:
    """The walk-forward headline (``walk_forward``'s evaluation): NDCG@10 of every order
    on the same test users, ranked - EASE with its paired CI."""
    lines = ["### Walk-forward test (the headline)", "",
             f"Test split: {wf['protocol']['test_split']}.", ""]
    k = wf.get("ranking")
    r = wf["retrieval"]["curves"]
    rows = [(name, {"recall@100": c["recall@100"], "ndcg@10": c["ndcg@10"]})
            for name, c in r.items()]
    lines.append(table(rows, [("Recall@100", "recall@100"), ("NDCG@10", "ndcg@10")],
                       label="over the whole catalog"))
    if k:
        e = k["end_to_end"]
        lines += ["", table([(n.replace("_", " "), m) for n, m in e.items() if isinstance(m, dict)],
                            [("NDCG@10", "ndcg@10"), ("Recall@10", "recall@10")],
                            label=f"end to end over {e['candidates']}, {e['users']:,} users")]
        lines += ["", *baseline_verdicts(k.get("differences") or {}, k.get("served", "ranked"))]
        lines += ["", *beyond_accuracy_lines(e, "####")]
    if wf["retrieval"].get("new_titles"):
        lines += ["", *new_title_lines(wf["retrieval"]["new_titles"])]
    return lines


def baseline_verdicts(differences: dict, served: str = "ranked") -> list[str]:
    """One line per baseline of ``BASELINES`` and per other order of the same candidates
    (``REORDERERS``, the ranker) the served order (``served``, its end-to-end name) was
    paired with (``ranking.differences``): ahead of, within noise of or BEHIND it,
    NDCG@10 with its paired CI."""
    lines = []
    rivals = {**{name: f"{name} on the same entries" for name in BASELINES},
              **{order: f"{label} of the same candidates"
                 for order, label in {**REORDERERS, "ranked": "the ranker's order"}.items()}}
    who = ("The ranked pipeline" if served == "ranked" else
           f"The served order ({ORDER_LABELS.get(served, served)})")
    for name, label in rivals.items():
        d = differences.get(f"{served} - {name}")
        if not d:
            continue
        n = d["ndcg@10"]
        verdict = ("within noise of" if not n["significant"] else
                   "ahead of" if n["difference"] > 0 else "BEHIND")
        lines.append(f"- {who} is {verdict} {label}: NDCG@10 {interval(n, ', 95% CI ')} "
                     f"(paired bootstrap over {n['users']:,} users).")
    return lines


def render(metrics: dict) -> str:
    """report.md, from the metrics dict alone (so its numbers are metrics.json's)."""
    r = metrics["retrieval"]
    lines = ["# anirank evaluation report", "",
             f"Model `{metrics['model']}`, data fingerprint `{metrics['data']['fingerprint']}`, "
             f"{metrics['data']['counts']['users']:,} users, {metrics['data']['counts']['anime']:,} "
             f"titles. Test split: {metrics['protocol']['test_split']}; titles the user had "
             "before the test period are excluded from every ranking. "
             + ("Title popularity, favourites and mean score are counted from the training "
                "entries, never read from the source's snapshot columns."
                if metrics["protocol"].get("title_statistics") == "training entries" else
                "Title popularity, favourites and mean score are the source's snapshot "
                "columns (feature tables from before anirank counted them): optimistic.")
             + (f" {metrics['protocol']['favourites']}"
                if metrics["protocol"].get("favourites") else ""), "",
             f"Data: {(metrics['data'].get('source') or {}).get('description', 'not recorded')}."
             + (" The generator rows are the synthetic world's own: for retrieval, each "
                "user's true odds of adding each title (its exposure, the user's true taste, "
                "cohort and seasonal pull; not the franchise steps); for ranking, the score "
                "the user would give each title without noise. They are a reference, not a "
                "competitor, and not a ceiling: the odds know neither the franchise steps "
                "nor when a user adds a title, which the models learn from the lists, so a "
                "model can pass them (on equal data the ranked pipeline comes close)."
                if metrics["data"].get("generator") else ""), "",
             *_dropped_lines(metrics["data"].get("dropped_features") or {}),
             *_comparison_lines(metrics), *_data_lines(metrics), "## Retrieval", "",
             table([*r["curves"].items(), ("two-tower, ids only (training stage)", r["ids_only"]),
                    ("two-tower, without history (training stage)", r.get("without_history"))],
                   [(f"R@{k}", f"recall@{k}") for k in CURVE_KS]
                   + [("N@10", "ndcg@10"), ("N@100", "ndcg@100")], label="model")]
    if r.get("ease"):
        tt, ease = r["curves"]["two-tower"]["recall@100"], r["curves"]["EASE"]["recall@100"]
        d = r["differences"]["two-tower - EASE"]["recall@100"]
        verdict = ("is within noise of" if not d["significant"] else
                   "beats" if d["difference"] > 0 else "does NOT beat")
        lines += ["", f"EASE: closed-form item-item weights from the training split, lambda "
                  f"{r['ease']['lambda']:g} (picked by validation Recall@100). The two-tower "
                  f"{verdict} it at Recall@100 ({num(tt)} vs {num(ease)}, difference "
                  f"{interval(d, ', 95% CI ')})."]
    else:
        lines += ["", "EASE: skipped: " + (r.get("ease_skipped") or baselines.skip_reason(
            metrics["data"]["counts"]["anime"])) + "."]
    if r.get("ials"):
        lines += ["", "iALS: implicit-feedback matrix factorisation (the `implicit` library) "
                  "on the training split, " + ", ".join(
                      f"{k} {v:g}" for k, v in r["ials"]["settings"].items())
                  + " (picked by validation Recall@100)."]
    f = r["factorized"]
    lines += ["", "Factorized top-K accuracy (TFRS's metric: all titles, nothing excluded): "
              + ", ".join(f"@{k[4:]} {num(v)}" for k, v in f.items()) + ".", "",
              "![Recall@K](recall_at_k.png)", "", "### By user activity (training entries)", "",
              "| model | " + " | ".join(_bucket_names()) + " |", "|---|" + "---|" * len(BUCKETS)]
    for name, buckets in r["by_activity"].items():
        lines.append(f"| {name} Recall@100 | " + " | ".join(
            f"{num(buckets[b]['recall@100'])} ({buckets[b]['users']})" for b in _bucket_names()) + " |")
    x = r["index"]
    lines += ["", "![By activity](by_activity.png)", "", *_difference_lines(r.get("differences")),
              *new_title_lines(r.get("new_titles")),
              "### ScaNN against brute force", "",
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
                  table([(name.replace("_", " "), m) for name, m in k["held_out_lists"].items()]
                        + [(f"ranker trained with {name} (training stage)", m)
                           for name, m in k["losses_at_training"].items()],
                        LIST_COLUMNS, label="order")]
        lines += ["", *_ranker_warnings(k)]
        lines += _validation_lines(k.get("validation"))
        serving = k.get("serving") or {"order": "ranked", "why": "not recorded"}
        lines += ["", f"**Served order: {artifact.ORDER_NAMES[serving['order']]}** "
                      f"({serving['why']})."
                  + ("" if serving["order"] == "ranked" else
                     f" `Recommender` and the batch job serve {artifact.ORDER_NAMES[serving['order']]}; "
                     "the ranker is kept in the model directory and scored below for the "
                     "record (`Recommender.from_pretrained(..., use_ranker=True)` serves it).")]
        e = k["end_to_end"]
        lines += ["", f"### End to end: retrieve {e['candidates']}, rank ({e['users']:,} test users)", "",
                  table([(name.replace("_", " "), m) for name, m in e.items() if isinstance(m, dict)],
                        END_TO_END_COLUMNS, label="order"), "",
                  *_difference_lines(k.get("differences")),
                  *beyond_accuracy_lines(e),
                  *_ablation_lines(k.get("ablations"), RankingConfig.from_dict(k["config"]).candidate_label)]
        corr = k["score_correlation"]
        lines += ["", "![NDCG@K end to end](ndcg_end_to_end.png)", "",
                  "Correlation of ranker scores with users' scores on held-out titles: "
                  + num(corr["ranker_vs_score"])
                  + (f"; with the true expected score: {num(corr['ranker_vs_true_expected'])}"
                     if "ranker_vs_true_expected" in corr else "") + ".", "",
                  *(["![Scores](scores.png)", ""] if held_out else [])]
    lines += _score_lines(metrics.get("scores"))
    lines += ["## Provenance", "", "```json", json.dumps(
        {"versions": metrics["versions"], "protocol": metrics["protocol"]}, indent=2,
        sort_keys=True), "```", ""]
    return "\n".join(lines)


def run(model: str | os.PathLike = "data/model", features: str | os.PathLike = "data/features",
        out: str | os.PathLike | None = None, truth: str | os.PathLike | None = None, *,
        progress: bool = True) -> dict:
    """Stage function behind ``python -m pipelines evaluate``. Returns the metrics, with
    ``report`` set to the report directory.

    By default the report goes into the model directory in one atomic swap: report.md
    and plots in ``<model>/report/``, the numbers in ``<model>/metrics.json`` under
    ``evaluation`` (one metrics.json per model). With ``out``, a standalone report
    directory (report.md, plots and its own metrics.json) is written there instead and
    the model is left as it is."""
    start = time.perf_counter()
    model_dir = Path(model)
    tables = FeatureTables.load(features)
    retrieval = artifact.RetrievalArtifact(model_dir).for_tables(tables)
    saved = artifact.read_json(model_dir, artifact.METRICS)
    truth_data = _load_truth(tables, truth)
    config = tables.schema["config"]
    metrics = {
        "model": model_dir.name,
        "data": {"fingerprint": tables.schema["fingerprint"], "counts": tables.schema["counts"],
                 "source": tables.schema.get("source"), "generator": truth_data is not None,
                 "dropped_features": tables.schema.get("dropped_features", {})},
        "protocol": {"split": "test", "test_fraction": config["test_fraction"],
                     "test_split": feature_tables.describe_split(tables.schema),
                     "excluded": "every entry of the user before the test period",
                     "title_statistics": ("training entries" if "protocol" in (
                         tables.schema.get("split") or {}) else "source snapshot"),
                     "favourites": _favourites_note(tables.schema),
                     "relevant": "the user's test interactions ("
                                 + ", ".join(config["interaction_statuses"]) + ")",
                     "retrieval_generator": "the generator's log-odds of adding: exposure, true taste, cohort and seasonal terms",
                     "ranking_generator": "the noise-free expected score"},
        "versions": retrieval.config["versions"],
        "config": {k: retrieval.config.get(k) for k in ("retrieval", "ranking", "index")},
    }
    metrics["retrieval"], per_user = _retrieval_section(tables, retrieval, truth_data, saved)
    metrics["ranking"], pairs = _ranking_section(tables, retrieval, truth_data, saved, per_user)
    metrics["scores"] = _scores_section(tables, model_dir, saved, truth_data)
    metrics["data"].update(_methods_data(tables, metrics, saved))
    metrics["seconds"] = round(time.perf_counter() - start, 1)

    def write_report(directory: Path) -> None:
        _plots(metrics, pairs, directory)
        # last: a report.md means complete (with the model's walk-forward headline, if any)
        (directory / "report.md").write_text(
            render({**metrics, "walk_forward": saved.get("walk_forward")}))

    if out is None:
        with artifact.update(model_dir) as tmp:
            shutil.rmtree(tmp / "report", ignore_errors=True)
            (tmp / "report").mkdir()
            write_report(tmp / "report")
            artifact.write_json(tmp, artifact.METRICS, {**saved, "evaluation": metrics})
        out = model_dir / "report"
    else:
        with atomic.directory(out) as tmp:
            artifact.write_json(tmp, artifact.METRICS, metrics)
            write_report(tmp)
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
