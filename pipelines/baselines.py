"""Baselines the models are reported against, under the same protocol: retrieval
(popularity, recent popularity, EASE) and score prediction (means and biases).

- Most popular: every user gets the titles with the most training interactions.
- Most popular recently: the same, counting only the ``RECENT_DAYS`` before the as-of
  cutoff (on time splits, what is being watched now is the strongest trivial baseline).
- EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): an
  item-item weight matrix in closed form, ``B = I - P diag(1 / diag(P))`` with
  ``P = (X'X + lambda I)^-1`` (equivalently ``B_ij = -P_ij / P_jj``, zero diagonal), and a
  user's scores ``x_u B`` from their binary training row ``x_u``. It was the strongest
  baseline in the project's planning runs, so the report sets it beside the two-tower.
- iALS (Hu, Koren & Volinsky, "Collaborative Filtering for Implicit Feedback Datasets",
  ICDM 2008), the matrix factorisation a reviewer expects, from the ``implicit`` library
  (its conjugate-gradient ALS): confidence ``alpha`` on each binary training entry and 1
  on every other user-title pair, settings chosen on validation Recall@100 from ``IALS_GRID``.

- Score baselines (``score_metrics``): the global mean, the user's and the title's mean
  training score, and user + title biases (ridge, ``lambda`` by validation RMSE): what a
  score head has to beat.

Both see the same information as the two-tower: the training split only (the query
tower's user features are computed from training entries alone), so a test ranking
uses no validation-period entry of the user. EASE's one knob, ``lambda``, is picked by
validation Recall@100 from ``LAMBDAS``; iALS's settings the same way from ``IALS_GRID``.
"""

from __future__ import annotations

import itertools

import numpy as np

from pipelines import protocol
from pipelines.tables import FeatureTables

RECENT_DAYS = 30
MAX_EASE_TITLES = 20_000   # a dense float64 title x title inverse: 3.2 GB at this size
LAMBDAS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


def skip_reason(num_titles: int) -> str:
    """Why EASE is not fitted on a catalog of ``num_titles`` (``fit_ease`` returns None)."""
    return (f"{num_titles:,} titles is more than the {MAX_EASE_TITLES:,} its dense title x "
            "title inverse allows")


def popularity_scorer(tables: FeatureTables):
    """``score_fn(user_rows) -> [b, num_anime]``: training interaction counts for every user."""
    counts = tables.train_counts()
    scores = counts.astype(np.float32)
    return lambda rows: np.broadcast_to(scores, (len(rows), len(scores)))


def recent_popularity_scorer(tables: FeatureTables, days: int = RECENT_DAYS):
    """``score_fn(user_rows)``: training interactions per title in the ``days`` before
    the as-of cutoff, ties broken by all training interactions; None when the feature
    tables have no cutoff (a source without entry times)."""
    as_of = (tables.schema.get("split") or {}).get("as_of")
    if as_of is None:
        return None
    inter = tables.interactions
    recent = ((inter["split"] == "train") & inter["is_interaction"]
              & (inter["time"] >= as_of - days * 86_400)).to_numpy()
    counts = np.bincount(inter["anime_row"].to_numpy()[recent], minlength=len(tables.anime))
    overall = tables.train_counts()
    scores = (counts + overall / (overall.max(initial=0) + 1.0)).astype(np.float32)
    return lambda rows: np.broadcast_to(scores, (len(rows), len(scores)))


def gram(tables: FeatureTables, batch_size: int = 4096) -> np.ndarray:
    """``X'X`` (float64 ``[num_anime, num_anime]``) of the binary user x title training
    matrix, accumulated over blocks of users so ``X`` is never dense whole."""
    train = tables.pairs("train")
    rows = np.unique(train["user_row"])
    sets = tables.user_sets(train)
    out = np.zeros((len(tables.anime), len(tables.anime)), np.float64)
    for start in range(0, len(rows), batch_size):
        x = sets.matrix(rows[start:start + batch_size]).astype(np.float32)
        out += x.T @ x
    return out


def ease_weights(gram_matrix: np.ndarray, lam: float) -> np.ndarray:
    """EASE's closed form: ``B`` ``[n, n]`` float32 with a zero diagonal.

    ``lam`` is added to ``gram_matrix``'s diagonal in place for the inversion and the
    diagonal put back after it: at 17.5k titles each float64 copy is 2.4 GB."""
    if lam <= 0:
        raise ValueError(f"EASE's `lam` must be positive. Received: {lam}.")
    diagonal = np.diag_indices_from(gram_matrix)
    kept = gram_matrix[diagonal].copy()
    gram_matrix[diagonal] += lam
    try:
        p = np.linalg.inv(gram_matrix)
    finally:
        gram_matrix[diagonal] = kept
    p /= -p[diagonal][None, :]
    p[diagonal] = 0.0
    return p.astype(np.float32)


def ease_scorer(tables: FeatureTables, weights: np.ndarray):
    """``score_fn(user_rows)``: each user's training row times ``weights``."""
    train = tables.user_sets(tables.pairs("train"))
    return lambda rows: train.matrix(rows).astype(np.float32) @ weights


def fit_ease(tables: FeatureTables, lambdas=LAMBDAS, lam: float | None = None) -> dict | None:
    """EASE with ``lam`` (or the ``lambdas`` value with the best validation Recall@100).

    Returns ``{"lambda", "validation_recall@100": {lambda: recall}, "weights", "scorer"}``
    (``weights``: ``B``, saved with the model as the second candidate generator), or None
    when the catalog is larger than ``MAX_EASE_TITLES`` (the dense inverse would not fit
    comfortably; the report says it was skipped).
    """
    if len(tables.anime) > MAX_EASE_TITLES:
        return None
    if lam is None and not lambdas:
        raise ValueError("EASE needs a `lam` or at least one value in `lambdas` to choose from.")
    g = gram(tables)
    tried = {}
    if lam is None:
        for value in lambdas:   # each candidate inverted once; the best one is kept
            candidate = ease_weights(g, value)
            tried[value] = protocol.rank_metrics(ease_scorer(tables, candidate), tables,
                                                 "validation")["recall@100"]
            if lam is None or tried[value] > tried[lam]:   # the first (smallest) on a tie
                lam, weights = value, candidate
            del candidate
    else:
        weights = ease_weights(g, lam)
    del g
    return {"lambda": lam, "validation_recall@100": tried, "weights": weights,
            "scorer": ease_scorer(tables, weights)}


# iALS: factors x regularisation x alpha (confidence weight), a fixed number of sweeps.
# Centred on the default world's validation optimum (factors 256, regularisation 100,
# alpha 30); 512 factors added +0.0012 validation Recall@100 there at 2.8x the time.
IALS_GRID = {"factors": (64, 128, 256), "regularization": (30.0, 100.0, 300.0),
             "alpha": (10.0, 30.0, 100.0)}
IALS_ITERATIONS = 15
IALS_SEED = 0


def ials_settings(grid: dict = IALS_GRID) -> list[dict]:
    """Every combination of ``grid`` (``{name: values}``), in order, as settings dicts."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def ials_factors(tables: FeatureTables, factors: int, regularization: float, alpha: float,
                 iterations: int = IALS_ITERATIONS, seed: int = IALS_SEED
                 ) -> tuple[np.ndarray, np.ndarray]:
    """iALS on the binary user x title training matrix: ``(user factors [users, f], title
    factors [titles, f])`` float32, by row of ``tables.users`` / ``tables.anime`` (a user
    without training entries keeps a zero row). Deterministic for a ``seed``: each sweep
    solves every row alone, so the thread count does not change the result."""
    from implicit.cpu.als import AlternatingLeastSquares   # imported where used: scipy's load
    from scipy.sparse import csr_matrix
    from threadpoolctl import threadpool_limits

    train = tables.pairs("train")
    users, titles = train["user_row"].to_numpy(), train["anime_row"].to_numpy()
    shape = (len(tables.users), len(tables.anime))
    x = csr_matrix((np.ones(len(users), np.float32), (users, titles)), shape=shape)
    x.data[:] = 1.0   # a repeated pair is one entry
    # implicit's own threads do the work; a multi-threaded BLAS under them only contends
    # (the library warns about it), so BLAS runs on one thread during the fit.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=factors, regularization=regularization,
                                        alpha=alpha, iterations=iterations, random_state=seed)
        model.fit(x, show_progress=False)
    user_factors = np.asarray(model.user_factors, np.float32)
    user_factors[np.diff(x.indptr) == 0] = 0.0
    return user_factors, np.asarray(model.item_factors, np.float32)


def ials_scorer(user_factors: np.ndarray, title_factors: np.ndarray):
    """``score_fn(user_rows)``: each user's factors times every title's."""
    return lambda rows: user_factors[rows] @ title_factors.T


def fit_ials(tables: FeatureTables, grid: dict = IALS_GRID, settings: dict | None = None) -> dict:
    """iALS with ``settings`` (``{"factors", "regularization", "alpha"}``) or the ``grid``
    combination of the best validation Recall@100 (the first on a tie).

    Returns ``{"settings", "iterations", "validation_recall@100": [{**settings, "recall@100"}],
    "scorer"}``."""
    tried = []
    if settings is None:
        best = None
        for candidate in ials_settings(grid):
            scorer = ials_scorer(*ials_factors(tables, **candidate))
            recall = protocol.rank_metrics(scorer, tables, "validation")["recall@100"]
            tried.append({**candidate, "recall@100": recall})
            if best is None or recall > best[1]:
                best = (candidate, recall, scorer)
        settings, scorer = best[0], best[2]
    else:
        scorer = ials_scorer(*ials_factors(tables, **settings))
    return {"settings": dict(settings), "iterations": IALS_ITERATIONS,
            "validation_recall@100": tried, "scorer": scorer}


# ---------------------------------------------------------------------------------------
# Predicting a user's score for a title: what a score head has to beat.

BIAS_LAMBDAS = (1.0, 3.0, 10.0, 30.0, 100.0)


def scored_entries(tables: FeatureTables, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user_rows, anime_rows, scores)`` of ``split``'s scored entries (``is_label``)."""
    inter = tables.interactions
    part = inter[(inter["split"] == split) & inter["is_label"]]
    return (part["user_row"].to_numpy(np.int64), part["anime_row"].to_numpy(np.int64),
            part["score"].to_numpy(np.float64))


def fit_biases(users: np.ndarray, titles: np.ndarray, scores: np.ndarray, n_users: int,
               n_titles: int, lam: float, iterations: int = 20) -> tuple[float, np.ndarray, np.ndarray]:
    """``score ~ mu + b_user + b_title`` by alternating ridge updates (Koren's baseline
    predictor): ``b_user = sum(score - mu - b_title) / (count + lam)``, then the same
    for titles, ``iterations`` times. Returns ``(mu, b_user [n_users], b_title [n_titles])``."""
    mu = float(scores.mean()) if len(scores) else 0.0
    b_user, b_title = np.zeros(n_users), np.zeros(n_titles)
    per_user = np.bincount(users, minlength=n_users) + lam
    per_title = np.bincount(titles, minlength=n_titles) + lam
    for _ in range(iterations):
        b_user = np.bincount(users, scores - mu - b_title[titles], n_users) / np.maximum(per_user, 1e-12)
        b_title = np.bincount(titles, scores - mu - b_user[users], n_titles) / np.maximum(per_title, 1e-12)
    return mu, b_user, b_title


def ridge_biases(tables: FeatureTables, lambdas=BIAS_LAMBDAS) -> tuple[float, tuple, dict]:
    """User + title biases fitted on the training split's scored entries for each ridge
    ``lambda`` of ``lambdas``; the one of the lowest validation RMSE (the smallest on a
    tie). Returns ``(lambda, (mu, b_user [users], b_title [titles]), {lambda: RMSE})``
    (biases by row of ``tables.users`` / ``tables.anime``)."""
    u, a, y = scored_entries(tables, "train")
    n_users, n_titles = len(tables.users), len(tables.anime)
    fitted = {lam: fit_biases(u, a, y, n_users, n_titles, lam) for lam in lambdas}
    vu, va, vy = scored_entries(tables, "validation")
    rmse = {lam: float(np.sqrt(np.mean((m + bu[vu] + bi[va] - vy) ** 2))) if len(vy) else np.nan
            for lam, (m, bu, bi) in fitted.items()}
    lam = min(rmse, key=lambda k: (np.nan_to_num(rmse[k], nan=np.inf), k))
    return lam, fitted[lam], rmse


def score_predictors(tables: FeatureTables, lambdas=BIAS_LAMBDAS) -> tuple[dict, dict]:
    """The score baselines, fitted on the training split's scored entries: the global
    mean, the user's mean, the title's mean (the global mean where there is none) and
    user + title biases with the ridge ``lambda`` of the lowest validation RMSE.

    Returns ``({name: fn(user_rows, anime_rows) -> scores}, {"lambda", "validation_rmse"})``."""
    u, a, y = scored_entries(tables, "train")
    n_users, n_titles = len(tables.users), len(tables.anime)
    mu = float(y.mean()) if len(y) else 0.0

    def means(rows, n):
        count = np.bincount(rows, minlength=n)
        return np.where(count > 0, np.bincount(rows, y, n) / np.maximum(count, 1), mu)

    user_mean, title_mean = means(u, n_users), means(a, n_titles)
    lam, (m, bu, bi), rmse = ridge_biases(tables, lambdas)
    predictors = {
        "global mean": lambda users, titles: np.full(len(users), mu),
        "user mean": lambda users, titles: user_mean[users],
        "title mean": lambda users, titles: title_mean[titles],
        f"user + title biases (lambda {lam:g})": lambda users, titles: m + bu[users] + bi[titles],
    }
    return predictors, {"lambda": lam, "validation_rmse": {str(k): v for k, v in rmse.items()}}


def score_metrics(tables: FeatureTables, split: str = "test", lambdas=BIAS_LAMBDAS,
                  extra: dict | None = None, errors: dict | None = None) -> dict:
    """RMSE and MAE (POINT_100) of every score baseline on ``split``'s scored entries,
    and of the ``extra`` predictors (``{name: fn(user_rows, anime_rows) -> scores}``,
    e.g. a score head) on the same entries. ``errors`` receives each predictor's
    per-entry squared errors (for paired comparisons)."""
    predictors, tuning = score_predictors(tables, lambdas)
    predictors.update(extra or {})
    u, a, y = scored_entries(tables, split)
    rows = {}
    for name, predict in predictors.items():
        error = np.asarray(predict(u, a), np.float64) - y
        if errors is not None:
            errors[name] = error ** 2
        rows[name] = {"rmse": float(np.sqrt(np.mean(error ** 2))) if len(y) else None,
                      "mae": float(np.mean(np.abs(error))) if len(y) else None}
    return {"entries": int(len(y)), "split": split, **tuning, "predictors": rows}


def score_differences(errors: dict, system: str, other: str, users: np.ndarray) -> dict:
    """Paired bootstrap 95% CIs of ``system``'s squared error minus ``other``'s on the same
    scored entries (``errors``: per-entry squared errors by predictor, as
    :func:`score_metrics` fills them; ``users``: each entry's user row): per entry
    (entries resampled) and per user (users resampled; each user's mean difference)."""
    d = errors[system] - errors[other]
    if len(users):
        _, inverse = np.unique(users, return_inverse=True)
        per_user = np.bincount(inverse, d) / np.bincount(inverse)
    else:
        per_user = np.zeros(0)
    return {"metric": "squared error (POINT_100 squared); negative = system better",
            "per_entry": protocol.paired_bootstrap(errors[system], errors[other]),
            "per_user": protocol.paired_bootstrap(per_user, np.zeros(len(per_user)))}
