"""The compute floor of batch retrieval: one float32 matmul of all user embeddings by
all candidate embeddings, against our exact top-100 path on the same arrays.

    .venv/bin/python bench/compute_floor.py --model data/model

The last line is our brute-force top-100 time as a multiple of the bare matmul.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import _env  # noqa: E402,F401


from serving import Recommender  # noqa: E402
from towers.index import brute_force_top_k  # noqa: E402


def best_of(fn, repeats=5):
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/model")
    args = parser.parse_args()
    rec = Recommender.from_pretrained(args.model, use_ranker=True)  # the ranker path, served or not
    users = rec.retrieval.embed_users(rec._user_raw)
    cands = rec.index.embeddings
    floor = best_of(lambda: users @ cands.T)
    ours = best_of(lambda: brute_force_top_k(users, cands, 100))
    print(f"{len(users):,} users x {len(cands):,} candidates x {cands.shape[1]} dims (best of 5)")
    print(f"{'step':<36}{'seconds':>9}")
    print(f"{'one float32 matmul (the floor)':<36}{floor:>9.4f}")
    print(f"{'our exact top-100 (matmul + select)':<36}{ours:>9.4f}")
    print(f"exact top-100 / bare matmul: {ours / floor:.1f}x")


if __name__ == "__main__":
    main()
