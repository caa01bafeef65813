"""The evaluation protocol, in numpy (no TensorFlow): how every model, baseline and
reference row is scored, so the training stages, the baselines and the report measure alike.

Retrieval (``rank_per_user``, ``rank_metrics``): rank every title for each user with
something relevant in a split (their interactions there), leaving out every title the
user had before that split (``seen_before``); Recall@K and NDCG@K, overall and for users
with fewer than ``SHORT_HISTORY`` training entries. ``factorized_top_k`` is TFRS's
metric (all titles, nothing excluded).

Ranking: ``held_out_lists`` (each test user's scored test titles, the original system's
list-NDCG protocol) scored by ``list_metrics`` and against ``baseline_list_metrics``;
``end_to_end`` reorders each test user's retrieved candidates and scores the order
against their test interactions; ``end_to_end_on`` does the same on any split and subset
of users (the ranking stage's validation users held out from fitting, where settings are
chosen).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from pipelines.features import multi_hot
from pipelines.tables import FeatureTables
from ranking.metrics import (coverage, hits, list_ndcg, ndcg_at_k, novelty,
                             order_metrics_per_query, random_list_ndcg, recall_at_k, top_items,
                             variety)
from towers.topk import top_k

KS = (10, 50, 100)
FACTORIZED_KS = (1, 5, 10, 50, 100)
SHORT_HISTORY = 10  # users with fewer training entries than this: the cold-ish group
TEST_LIST_CAP = 50  # longest held-out list scored in the list-NDCG protocol
BEFORE = {"validation": ("train",), "test": ("train", "validation")}


def seen_before(tables: FeatureTables, split: str) -> pd.DataFrame:
    """``(user_row, anime_row)`` of every entry (any status) users have before ``split``,
    and of ``split``'s entries that were on the list before it began (``listed_before``):
    what a ranking for that split leaves out, as serving would."""
    inter = tables.interactions
    before = inter["split"].isin(BEFORE[split]) | (
        (inter["split"] == split) & inter["listed_before"])
    return inter.loc[before, ["user_row", "anime_row"]]


def mean(values: np.ndarray) -> float:
    """Mean over the finite values; NaN (shown as "-") when there are none."""
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


# ---------------------------------------------------------------------------------------
# Retrieval.

def rank_per_user(score_fn, tables: FeatureTables, split: str,
                  user_rows: np.ndarray | None = None, ks=KS,
                  batch_size: int = 1024) -> tuple[np.ndarray, dict]:
    """Per-user Recall@K / NDCG@K of ``score_fn(user_rows) -> [b, num_anime]`` on ``split``.

    Returns the user rows scored and ``{"recall@k": [users], "ndcg@k": [users]}`` (NaN
    for users with nothing relevant).
    """
    seen = tables.user_sets(seen_before(tables, split))
    relevant_pairs = tables.pairs(split)
    rows = np.unique(relevant_pairs["user_row"]) if user_rows is None else user_rows
    relevant_sets = tables.user_sets(relevant_pairs)
    kmax = max(ks)
    per_user = {f"{m}@{k}": [] for m in ("recall", "ndcg") for k in ks}
    for start in range(0, len(rows), batch_size):
        r = rows[start:start + batch_size]
        relevant = relevant_sets.matrix(r)
        exclude = seen.matrix(r)
        relevant &= ~exclude
        hit = hits(top_k(score_fn(r), kmax, exclude), relevant)
        n_rel = relevant.sum(1)
        for k in ks:
            per_user[f"recall@{k}"].append(recall_at_k(hit, n_rel, k))
            per_user[f"ndcg@{k}"].append(ndcg_at_k(hit, n_rel, k))
    return rows, {k: np.concatenate(v) if v else np.zeros(0) for k, v in per_user.items()}


def rank_metrics(score_fn, tables: FeatureTables, split: str,
                 user_rows: np.ndarray | None = None, batch_size: int = 1024,
                 per_user: dict | None = None) -> dict:
    """Mean Recall@K / NDCG@K (K in ``KS``) over users with at least one relevant title,
    overall and (``short_history``, None where there is no such user) for users with
    fewer than ``SHORT_HISTORY`` training entries. ``per_user``: a dict that receives
    the per-user values (``{metric: [users]}``, for paired comparisons)."""
    rows, values = rank_per_user(score_fn, tables, split, user_rows, KS, batch_size)
    if per_user is not None:
        per_user.update(values)
    per_user = values
    kmax = max(KS)
    short = tables.users["n_train"].to_numpy()[rows] < SHORT_HISTORY
    out = {k: mean(v) for k, v in per_user.items()}
    out["users"] = int(np.isfinite(per_user[f"recall@{kmax}"]).sum())
    out["short_history"] = {k: mean(v[short]) if short.any() else None
                            for k, v in per_user.items()}
    out["short_history"]["users"] = int(np.isfinite(per_user[f"recall@{kmax}"][short]).sum())
    return out


def factorized_top_k(queries: np.ndarray, candidate_embeddings: np.ndarray,
                     pairs: pd.DataFrame, batch_size: int = 1024) -> dict:
    """TFRS FactorizedTopK on (user, title) pairs: the share whose title is in the top K
    of all candidates (no exclusions), K in ``FACTORIZED_KS``. Ties count against it.

    Each user's scores are computed once for all their pairs (blocks of ``batch_size``
    users), and a pair's rank is counted among the user's ``max(FACTORIZED_KS)`` best
    scores only: exact below that cap, which is all the shares need."""
    u = pairs["user_row"].to_numpy(np.int64)
    a = pairs["anime_row"].to_numpy(np.int64)
    cap = min(max(FACTORIZED_KS), len(candidate_embeddings))
    users, inverse = np.unique(u, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(0, len(users) + batch_size, batch_size))
    ranks = np.empty(len(u), np.int64)   # 0 = best; ``cap`` = cap or worse
    for block, start in enumerate(range(0, len(users), batch_size)):
        index = order[bounds[block]:bounds[block + 1]]
        scores = queries[users[start:start + batch_size]] @ candidate_embeddings.T
        row = inverse[index] - start
        true = scores[row, a[index]]
        best = np.partition(scores, scores.shape[1] - cap, axis=1)[:, -cap:]
        ranks[index] = (best[row] > true[:, None]).sum(1)
    return {f"top_{k}": float((ranks < k).mean()) if len(ranks) else float("nan")
            for k in FACTORIZED_KS}


# ---------------------------------------------------------------------------------------
# Ranking.

@dataclasses.dataclass
class Candidates:
    """Per user, the titles a ranker may reorder: ``rows`` ``[n, C]`` (-1 = padding) and
    ``signals`` ``{name: [n, C] float32}``, what each title carries besides its features
    (``pipelines.candidates.SIGNALS``; ``similarity``, the retrieval score, always)."""

    rows: np.ndarray
    signals: dict

    def take(self, keep) -> "Candidates":
        return Candidates(self.rows[keep], {k: v[keep] for k, v in self.signals.items()})


@dataclasses.dataclass
class Lists:
    """Padded lists: ``anime_rows`` ``[n, size]`` (-1 = padding), ``relevance`` and the
    candidate ``signals`` (``{name: [n, size]}``, same shape), and each list's
    ``user_rows`` ``[n]``."""

    user_rows: np.ndarray
    anime_rows: np.ndarray
    relevance: np.ndarray
    signals: dict

    @property
    def mask(self) -> np.ndarray:
        return self.anime_rows >= 0

    @property
    def similarity(self) -> np.ndarray:
        """The retrieval score of each title."""
        return self.signals["similarity"]

    def __len__(self) -> int:
        return len(self.user_rows)

    def take(self, keep: np.ndarray) -> "Lists":
        return Lists(self.user_rows[keep], self.anime_rows[keep], self.relevance[keep],
                     {k: v[keep] for k, v in self.signals.items()})


def similarity(queries: np.ndarray, candidate_embeddings: np.ndarray, user_rows: np.ndarray,
               anime_rows: np.ndarray) -> np.ndarray:
    """Retrieval scores ``[n, size]`` of padded title rows (0 at padding)."""
    sim = np.einsum("nd,nld->nl", queries[user_rows],
                    candidate_embeddings[np.maximum(anime_rows, 0)]).astype(np.float32)
    return np.where(anime_rows >= 0, sim, 0.0).astype(np.float32)


def held_out_lists(tables: FeatureTables, relevance_scale: float, signals=None) -> Lists:
    """Each test user's scored test titles as one list (users with at least 2).
    ``signals(user_rows, anime_rows) -> {name: [n, size]}``: what each title carries
    (a model's candidate signals; none without it)."""
    inter = tables.interactions
    labelled = inter[(inter["split"] == "test") & inter["is_label"]]
    labelled = labelled.sort_values(["user_row", "anime_row"])
    user = labelled["user_row"].to_numpy()
    start = np.searchsorted(user, user, side="left")
    position = np.arange(len(user)) - start
    counts = np.bincount(user, minlength=len(tables.users))
    keep = (counts[user] >= 2) & (position < TEST_LIST_CAP)
    users = np.flatnonzero(counts >= 2)
    index = np.searchsorted(users, user[keep])
    size = int(min(TEST_LIST_CAP, counts.max(initial=0)))
    rows = np.full((len(users), max(size, 1)), -1, np.int64)
    rel = np.zeros(rows.shape, np.float32)
    rows[index, position[keep]] = labelled["anime_row"].to_numpy()[keep]
    rel[index, position[keep]] = labelled["score"].to_numpy()[keep] / relevance_scale
    return Lists(users, rows, rel, {} if signals is None else signals(users, rows))


def list_metrics(scores: np.ndarray, lists: Lists) -> dict:
    """List NDCG and NDCG@5 of ordering each list by ``scores``."""
    return {"ndcg": mean(list_ndcg(scores, lists.relevance, lists.mask)),
            "ndcg@5": mean(list_ndcg(scores, lists.relevance, lists.mask, k=5))}


def baseline_list_metrics(tables: FeatureTables, lists: Lists) -> dict:
    """Random (exact expectation), popularity order and mean-training-score order."""
    counts = tables.train_counts()
    mean_score = tables.anime["average_score"].fillna(
        tables.schema["stats"]["global_mean_score"]).to_numpy()
    safe = np.maximum(lists.anime_rows, 0)
    return {
        "random": {"ndcg": mean(random_list_ndcg(lists.relevance, lists.mask)),
                   "ndcg@5": mean(random_list_ndcg(lists.relevance, lists.mask, k=5))},
        "popularity": list_metrics(counts[safe].astype(np.float64), lists),
        "mean_training_score": list_metrics(mean_score[safe], lists),
    }


def end_to_end(tables: FeatureTables, score_lists, candidates: Candidates,
               extra_orders: dict | None = None, ks=(10,), per_user: dict | None = None,
               list_orders: dict | None = None) -> dict:
    """Reorder each test user's ``candidates`` (one row per user row; titles seen before
    the test period already left out; -1 = padding; the first columns in retrieval order)
    with ``score_lists(tables, lists) -> [n, C]``, and score the ranked order and the
    retrieval order (the candidates' own order) against the user's test interactions.

    ``extra_orders``: ``{name: fn(users, candidate_rows) -> scores}`` compared alike
    (the report adds popularity and the generator's odds); ``list_orders``: ``{name:
    fn(tables, lists) -> [n, C]}``, orders that read the candidates' signals as the
    ranker does (the blend, EASE's order). ``per_user``: a dict that receives
    ``{order name: {metric: [users]}}`` (for paired comparisons)."""
    return end_to_end_on(tables, "test", score_lists, candidates, extra_orders=extra_orders,
                         ks=ks, per_user=per_user, list_orders=list_orders)


def end_to_end_users(tables: FeatureTables, split: str,
                     user_rows: np.ndarray | None = None) -> np.ndarray:
    """The users an end-to-end evaluation on ``split`` scores, sorted: those with an
    interaction in ``split`` (and, given ``user_rows``, among them)."""
    users = np.unique(tables.pairs(split)["user_row"])
    return users if user_rows is None else np.intersect1d(users, user_rows)


def end_to_end_on(tables: FeatureTables, split: str, score_lists, candidates: Candidates,
                  user_rows: np.ndarray | None = None,
                  extra_orders: dict | None = None, ks=(10,),
                  per_user: dict | None = None, list_orders: dict | None = None) -> dict:
    """:func:`end_to_end` on any ``split`` and, given ``user_rows``, only those users
    (e.g. the validation users held out from fitting a ranker): ``candidates`` must
    leave out what each user had before ``split``; the orders are scored against the
    user's ``split`` interactions. ``end_to_end`` is this on ``"test"``, every user."""
    relevant_pairs = tables.pairs(split)
    users = end_to_end_users(tables, split, user_rows)
    chosen = candidates.take(users)
    cand = chosen.rows
    lists = Lists(users, cand, np.zeros(cand.shape, np.float32), chosen.signals)
    relevant = tables.matrix(users, relevant_pairs)
    n_relevant = relevant.sum(1)
    num_candidates = cand.shape[1]
    ks = sorted(set(ks) | {10, num_candidates})
    orders = {"ranked": score_lists(tables, lists),
              "retrieval_order": -np.arange(num_candidates)[None, :].repeat(len(users), 0)}
    for name, fn in (list_orders or {}).items():
        orders[name] = fn(tables, lists)
    for name, fn in (extra_orders or {}).items():
        orders[name] = fn(users, cand)
    out = {"users": int(len(users)), "candidates": num_candidates}
    genres, share = beyond_accuracy_inputs(tables)
    for name, order_scores in orders.items():
        values = order_metrics_per_query(cand, order_scores, relevant, n_relevant, ks)
        # What each top 10 is, whatever the user did: its variety of genres, novelty.
        top = top_items(cand, order_scores, 10)
        values["variety@10"] = variety(top, genres)
        values["novelty@10"] = novelty(top, share)
        out[name] = {k: float(np.mean(v)) if k == "mrr" else mean(v) for k, v in values.items()}
        out[name]["coverage@10"] = coverage(top, len(tables.anime))
        if per_user is not None:
            per_user[name] = values
    return out


def genre_matrix(anime: pd.DataFrame) -> np.ndarray:
    """``[titles, genres]`` bool over every genre of ``anime`` (sorted): each title's
    genres; no column where the table has no genres."""
    if "genres" not in anime:
        return np.zeros((len(anime), 0), bool)
    vocab = sorted({g for gs in anime["genres"] if gs is not None for g in gs})
    return multi_hot(anime["genres"], vocab)


def beyond_accuracy_inputs(tables: FeatureTables) -> tuple[np.ndarray, np.ndarray]:
    """``[titles, genres]`` bool (each title's genres; no column where the source has
    no genres) and ``[titles]`` the share of training users who have each title (at
    least one user's worth; NaN without ``train_count``): what :func:`ranking.metrics.variety` and
    :func:`ranking.metrics.novelty` read."""
    genres = genre_matrix(tables.anime)
    if "train_count" in tables.anime:
        share = np.maximum(tables.train_counts(), 1) / max(len(tables.users), 1)
    else:    # tables without the counts: novelty not measured
        share = np.full(len(tables.anime), np.nan)
    return genres, share


# ---------------------------------------------------------------------------------------
# New titles: those first listed after the cutoff, met only through the candidate tower.

NEW_TITLE_K = 10       # the shelf's K: a "new this season" row on a page
CATALOG_K = 100        # retrieval's K: does a new title reach the candidates at all?


def _any_in_top(scores: np.ndarray, relevant: np.ndarray, k: int,
                exclude: np.ndarray | None = None) -> np.ndarray:
    """Per row, 1.0 if one of its relevant columns is among its ``k`` best scores."""
    return hits(top_k(scores, min(k, scores.shape[1]), exclude), relevant).any(1).astype(float)


def expected_random_hit(num_titles: int, num_relevant: np.ndarray, k: int) -> np.ndarray:
    """The chance that ``k`` titles drawn at random from ``num_titles`` hold one of a
    user's ``num_relevant``: 1 - C(n - m, k) / C(n, k), per user."""
    m = np.asarray(num_relevant, np.int64)
    k = min(k, num_titles)
    # C(n - m, k) / C(n, k) = prod_{i < k} (n - m - i) / (n - i), 0 once n - m - i <= 0.
    i = np.arange(k)
    miss = np.clip(num_titles - m[:, None] - i, 0, None) / (num_titles - i)
    return 1.0 - miss.prod(1)


def new_title_slice(queries: np.ndarray, candidate_embeddings: np.ndarray,
                    new_embeddings: np.ndarray, tables: FeatureTables, split: str) -> dict | None:
    """How the two-tower serves titles no one had listed before the cutoff, from their
    candidate-tower embeddings (``new_embeddings``, one row per ``tables.new_anime``
    row), on ``split``'s new-title interactions of known users. None without any.

    - The shelf (a "new this season" row): each user's ordering of the period's new
      titles (those with an interaction in it, the same for every method), hit@
      ``NEW_TITLE_K``: one of the user's own new titles in it. Against the period's
      popularity (each title's interactions there by the *other* users: it counts the
      period itself, which no model at the query time can, an upper reference) and
      random order (its expectation, exactly).
    - The catalog: the same users' rankings of every title, known and new, leaving out
      what they had before ``split``; hit@``CATALOG_K``: one of their new titles among
      the candidates at all, and the share of those candidates that are new titles.

    Returns the numbers, the per-user values (``per_user``) and paired bootstrap CIs of
    the two-tower's shelf hit against each reference.
    """
    entries = tables.new_entries
    if entries is None or tables.new_anime is None:
        return None
    entries = entries[(entries["split"] == split) & entries["is_interaction"]
                      & (entries["user_row"] >= 0)]
    if entries.empty:
        return None
    shelf = np.unique(entries["media_id"].to_numpy())
    rows, user_index = np.unique(entries["user_row"].to_numpy(), return_inverse=True)
    relevant = np.zeros((len(rows), len(shelf)), bool)
    relevant[user_index, np.searchsorted(shelf, entries["media_id"].to_numpy())] = True
    embeddings = new_embeddings[pd.Index(tables.new_anime["media_id"]).get_indexer(shelf)]
    others = relevant.sum(0)[None, :] - relevant          # the period's counts, user left out
    per_user = {
        "two-tower": _any_in_top(queries[rows] @ embeddings.T, relevant, NEW_TITLE_K),
        "period popularity": _any_in_top(others.astype(float), relevant, NEW_TITLE_K),
        "random": expected_random_hit(len(shelf), relevant.sum(1), NEW_TITLE_K)}
    catalog, catalog_users = _with_new_titles(queries, candidate_embeddings, embeddings, shelf,
                                              tables, split, entries)
    return {
        "split": split, "titles": int(len(shelf)), "users": int(len(rows)),
        "interactions": int(len(entries)), "k": NEW_TITLE_K,
        f"hit@{NEW_TITLE_K}": {name: float(v.mean()) for name, v in per_user.items()},
        "differences": {f"two-tower - {name}": paired_bootstrap(per_user["two-tower"], v)
                        for name, v in per_user.items() if name != "two-tower"},
        "catalog": catalog,
        "per_user": per_user, "catalog_per_user": catalog_users,
    }


def _with_new_titles(queries, candidate_embeddings, shelf_embeddings, shelf, tables,
                     split: str, entries: pd.DataFrame) -> tuple[dict, dict]:
    """Every user with an interaction in ``split``, on known titles or the shelf's,
    ranking both together (what they had before the split left out): Recall@
    ``CATALOG_K`` and NDCG@10 of all those interactions, hit@``CATALOG_K`` of a new
    title (users with one) and the share of the candidates that are new titles."""
    known_pairs = tables.pairs(split)
    rows = np.union1d(np.unique(known_pairs["user_row"]), entries["user_row"].to_numpy())
    n_known = len(candidate_embeddings)
    known_sets, seen = tables.user_sets(known_pairs), tables.user_sets(seen_before(tables, split))
    user_index = np.searchsorted(rows, entries["user_row"].to_numpy())
    title_index = np.searchsorted(shelf, entries["media_id"].to_numpy())
    titles = np.concatenate([candidate_embeddings, shelf_embeddings])
    per_user = {f"recall@{CATALOG_K}": [], "ndcg@10": [], f"new_hit@{CATALOG_K}": [],
                "new_share": []}
    for start in range(0, len(rows), 1024):
        r = rows[start:start + 1024]
        exclude = np.zeros((len(r), len(titles)), bool)
        exclude[:, :n_known] = seen.matrix(r)
        relevant = np.zeros_like(exclude)
        relevant[:, :n_known] = known_sets.matrix(r) & ~exclude[:, :n_known]
        inside = (user_index >= start) & (user_index < start + len(r))
        relevant[user_index[inside] - start, n_known + title_index[inside]] = True
        top = top_k(queries[r] @ titles.T, max(CATALOG_K, 10), exclude)
        hit = hits(top, relevant)
        n_rel = relevant.sum(1)
        per_user[f"recall@{CATALOG_K}"].append(recall_at_k(hit, n_rel, CATALOG_K))
        per_user["ndcg@10"].append(ndcg_at_k(hit, n_rel, 10))
        has_new = relevant[:, n_known:].any(1)
        new = top[:, :CATALOG_K] >= n_known
        new_hit = (hit[:, :CATALOG_K] & new).any(1).astype(float)
        per_user[f"new_hit@{CATALOG_K}"].append(np.where(has_new, new_hit, np.nan))
        per_user["new_share"].append(new.mean(1))
    per_user = {k: np.concatenate(v) for k, v in per_user.items()}
    return ({"k": CATALOG_K, "users": int(len(rows)),
             **{k: mean(v) for k, v in per_user.items()}}, per_user)


# ---------------------------------------------------------------------------------------
# Uncertainty.

def _resampled_means(d: np.ndarray, draws: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([d[rng.integers(0, len(d), (min(100, draws - i), len(d)))].mean(1)
                           for i in range(0, draws, 100)])   # 100 draws at a time: bounded memory


def mean_ci(values, draws: int = 1000, seed: int = 0, level: float = 0.95) -> list:
    """``[low, high]``: the bootstrap confidence interval of the mean of ``values`` over
    users (NaN left out; ``[None, None]`` under 2 values). For error bars."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return [None, None]
    lo, hi = np.quantile(_resampled_means(v, draws, seed), [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def paired_bootstrap(a, b, draws: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """The mean per-user difference ``a - b`` of two systems scored on the same users
    (users where either is NaN left out) and its bootstrap confidence interval: users
    resampled with replacement ``draws`` times (seeded). ``significant``: the interval
    excludes 0. Differences inside it are noise and are reported as such."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    d = a[both] - b[both]
    if len(d) < 2:
        return {"difference": None, "ci": [None, None], "level": level, "users": int(len(d)),
                "draws": draws, "significant": False}
    means = _resampled_means(d, draws, seed)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"difference": float(d.mean()), "ci": [float(lo), float(hi)], "level": level,
            "users": int(len(d)), "draws": draws, "significant": bool(lo > 0 or hi < 0)}


def differences(per_user: dict, system: str, others, metrics) -> dict:
    """``{"<system> - <other>": {metric: paired bootstrap}}`` from per-user values
    ``{name: {metric: [users]}}`` (as :func:`end_to_end_on` fills ``per_user``): how
    much ``system`` beats each of ``others`` on the same users, with a 95% CI."""
    return {f"{system} - {other}": {m: paired_bootstrap(per_user[system][m], per_user[other][m])
                                    for m in metrics}
            for other in others}
