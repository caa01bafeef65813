"""The variety and niche knobs (serving/variety.py), measured: what a served top 10 gives
up in NDCG@10 (paired bootstrap CIs over users, against both knobs at 0) and what it
gains in variety (by genres, which the knob never reads, and by the candidate embeddings
it does read), novelty and catalog coverage, over a grid of settings; and what the
re-rank costs the batched call, as a ratio to the same call without it.

    .venv/bin/python bench/variety.py --model data/walk_forward/model \\
        --features data/walk_forward/features

The walk-forward model (refit on every entry before the walk-forward cutoff T+h) serves
the walk-forward test users from their lists at T+h, leaving out everything on them, with
the franchise rules on (the default); relevant: the titles each user added in the test
period [T+h, T+2h) (the report's walk-forward test).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import _env  # noqa: E402,F401

import numpy as np  # noqa: E402

from pipelines import protocol  # noqa: E402
from pipelines.formatting import interval  # noqa: E402
from pipelines.tables import FeatureTables  # noqa: E402
from bench.franchise_rules import served, walk_forward_test  # noqa: E402
from ranking.metrics import coverage, ndcg_at_k, novelty, variety  # noqa: E402
from serving import Filters, Recommender  # noqa: E402

SETTINGS = [(0.0, 0.0), (0.2, 0.0), (0.4, 0.0), (0.6, 0.0), (0.8, 0.0),
            (0.0, 0.2), (0.0, 0.5), (0.0, 1.0), (0.4, 0.5)]   # (variety, niche)


def measure(rec: Recommender, rows: np.ndarray, users: np.ndarray, relevant: dict) -> dict:
    """Per user: NDCG@10, the list's variety by genres (``ranking.metrics.variety``) and by
    embeddings (1 - mean pairwise cosine), novelty (mean -log2 of the share of training
    users listing a title) and popularity (the niche knob's scale)."""
    ids = rec.anime["media_id"].to_numpy(np.int64)
    unit = rec._unit_embeddings
    share = np.maximum(rec.anime["popularity"].to_numpy(float), 1) / max(len(rec.users), 1)
    out = {k: [] for k in ("ndcg@10", "embedding variety", "popularity")}
    for i, user in enumerate(users):
        row = rows[i][rows[i] >= 0]
        hit = np.isin(ids[np.maximum(rows[i], 0)], list(relevant[user])) & (rows[i] >= 0)
        out["ndcg@10"].append(ndcg_at_k(hit[None, :], np.array([len(relevant[user])]), 10)[0])
        cos = unit[row] @ unit[row].T
        out["embedding variety"].append(
            1 - (cos.sum() - np.trace(cos)) / max(len(row) * (len(row) - 1), 1))
        out["popularity"].append(float(np.mean(rec._niche_scale[row])))
    result = {k: np.array(v, float) for k, v in out.items()}
    result["genre variety"] = variety(rows, protocol.genre_matrix(rec.anime))
    result["novelty"] = novelty(rows, share)
    result["coverage"] = coverage(rows, len(rec.anime))
    return result


def cost(rec: Recommender, users: np.ndarray, filters: Filters, repeats: int = 5) -> float:
    """Seconds of the fastest of ``repeats`` batched calls for ``users``."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        rec.recommend(users, k=10, filters=filters)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/walk_forward/model",
                        help="the walk-forward model (default: %(default)s)")
    parser.add_argument("--features", default="data/walk_forward/features",
                        help="the walk-forward feature tables (default: %(default)s)")
    args = parser.parse_args()
    tables = FeatureTables.load(args.features)
    rec = Recommender.from_pretrained(args.model)
    users, relevant, listed = walk_forward_test(tables, rec)
    got = {s: measure(rec, served(rec, users, listed, Filters(variety=s[0], niche=s[1])), users,
                      relevant) for s in SETTINGS}
    print(f"model {args.model}, {len(users):,} test users, top 10 each, franchise rules on")
    print(f"{'variety':>8}{'niche':>7}{'NDCG@10':>9}{'genre var.':>12}{'emb. var.':>11}"
          f"{'novelty':>9}{'popularity':>12}{'coverage':>10}   NDCG@10 - both at 0 [95% CI]")
    base = got[(0.0, 0.0)]
    for (knob, niche), m in got.items():
        gain = ("" if m is base else
                interval(protocol.paired_bootstrap(m["ndcg@10"], base["ndcg@10"])))
        print(f"{knob:>8.1f}{niche:>7.1f}{m['ndcg@10'].mean():>9.4f}"
              f"{m['genre variety'].mean():>12.3f}{m['embedding variety'].mean():>11.3f}"
              f"{m['novelty'].mean():>9.2f}{m['popularity'].mean():>12.3f}"
              f"{m['coverage']:>10.1%}   {gain}")
    batch = users[:256]
    plain, knobs = cost(rec, batch, Filters()), cost(rec, batch, Filters(variety=0.4, niche=0.5))
    print(f"a batch of {len(batch)} users: {plain * 1000:.1f} ms with both knobs at 0, "
          f"{knobs * 1000:.1f} ms at variety 0.4, niche 0.5 ({knobs / plain:.2f}x)")


if __name__ == "__main__":
    main()
