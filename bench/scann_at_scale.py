"""ScaNN at scale: 1M clustered 64-d candidate embeddings, recall@100 against exact
brute force and queries/s of both, for a few index configurations (the trade-off).

    .venv/bin/python bench/scann_at_scale.py [--candidates 1000000] [--queries 1000]

Brute force is the competent baseline of DESIGN.md: one float32 matmul of a batch of
queries by all candidates plus argpartition, batched. The last line is the headline:
the fastest configuration with recall@100 >= 0.95, as a multiple of brute force.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from towers.index import CandidateIndex, IndexConfig, brute_force_top_k  # noqa: E402


def clustered(n, d, clusters, rng):
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), centres


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x, centres = clustered(args.candidates, 64, 2000, rng)
    q = centres[rng.integers(0, len(centres), args.queries)] + 0.6 * rng.normal(size=(args.queries, 64)).astype(np.float32)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(args.candidates, dtype=np.int64)

    tick = time.perf_counter()
    exact = brute_force_top_k(q, x, 100)
    brute_qps = len(q) / (time.perf_counter() - tick)
    rows = [("brute force (matmul + argpartition)", 1.0, brute_qps, 0.0)]
    configs = {
        "tree 1000 leaves, search 25, reorder 200": IndexConfig(mode="ann", num_leaves=1000, leaves_to_search=25, reorder=200),
        "tree 1000 leaves, search 50, reorder 400": IndexConfig(mode="ann", num_leaves=1000, leaves_to_search=50, reorder=400),
        "tree 1000 leaves, search 100, reorder 1000": IndexConfig(mode="ann", num_leaves=1000, leaves_to_search=100, reorder=1000),
    }
    for name, config in configs.items():
        tick = time.perf_counter()
        index = CandidateIndex.build(x, ids, config)
        build = time.perf_counter() - tick
        index.search(q[:10], 100)  # warm-up
        tick = time.perf_counter()
        got, _ = index.search(q, 100)
        qps = len(q) / (time.perf_counter() - tick)
        recall = np.mean([len(np.intersect1d(a, b)) / 100 for a, b in zip(got, exact)])
        rows.append((name, recall, qps, build))
    print(f"{args.candidates:,} candidates, {len(q):,} queries, k = 100")
    print(f"{'search':<44}{'recall@100':>11}{'queries/s':>11}{'build s':>9}")
    for name, recall, qps, build in rows:
        print(f"{name:<44}{recall:>11.4f}{qps:>11,.0f}{build:>9.1f}")
    good = [r for r in rows[1:] if r[1] >= 0.95]
    if good:
        best = max(good, key=lambda r: r[2])
        print(f"ScaNN at recall@100 {best[1]:.3f}: {best[2] / brute_qps:.1f}x brute-force queries/s")
    else:
        print("no configuration reached recall@100 0.95")


if __name__ == "__main__":
    main()
