"""Top-K search over candidate embeddings: a ScaNN index, and its exact brute-force twin.

ScaNN's numpy API only: no ScaNN ops inside the towers' SavedModels (they fail to load in
a process that has not imported scann's TF ops; TFRS issues #182, #297), and candidate
ids live in our own ``candidate_ids.npy``, never in ScaNN's pickled ``docids`` (never
unpickle what came from the Hub).

Configuration follows ScaNN's own rules: exact search below about 20k candidates; above
it a tree with about sqrt(n) leaves, asymmetric hashing, and exact re-scoring (reorder)
of several times k candidates.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from pipelines.arrays import find_sorted
from pipelines.errors import InputError
from towers.topk import top_k

CONFIG_FILE = "index_config.json"
IDS_FILE = "candidate_ids.npy"
EMBEDDINGS_FILE = "candidate_embeddings.npy"


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """How candidates are searched; each knob maps onto one ScaNN builder call.

    Attributes:
      mode: ``"auto"`` (exact below ``exact_below`` candidates, else ScaNN tree + AH),
        ``"exact"`` (ScaNN brute force), or ``"ann"`` (tree + AH whatever the size).
      exact_below: the candidate count under which ``auto`` searches exactly.
      num_leaves: tree partitions (``.tree(num_leaves, ...)``); None = about sqrt(n).
      leaves_to_search: partitions searched per query; None = enough leaves to hold about
        15 x k candidates (at least 5% of the leaves): top-100 over a small catalog spans
        many partitions, so a fixed fraction loses recall there.
      dimensions_per_block: ``.score_ah(dimensions_per_block, ...)``.
      anisotropic_quantization_threshold: ``.score_ah(..., threshold)``.
      reorder: candidates re-scored exactly (``.reorder(n)``); None = 4 x k (at least 200).
      k: the default number of neighbours.
    """

    mode: str = "auto"
    exact_below: int = 20_000
    num_leaves: int | None = None
    leaves_to_search: int | None = None
    dimensions_per_block: int = 2
    anisotropic_quantization_threshold: float = 0.2
    reorder: int | None = None
    k: int = 100

    def __post_init__(self):
        if self.mode not in ("auto", "exact", "ann"):
            raise InputError(f"`mode` must be one of ('auto', 'exact', 'ann'). Received: {self.mode!r}.")

    def resolved(self, n: int) -> dict:
        """The concrete builder settings for ``n`` candidates."""
        exact = self.mode == "exact" or (self.mode == "auto" and n < self.exact_below)
        leaves = self.num_leaves or max(2, int(round(math.sqrt(n))))
        leaves = min(leaves, max(2, n // 10))  # ScaNN needs several points per leaf
        return {
            "exact": exact,
            "num_leaves": leaves,
            "leaves_to_search": self.leaves_to_search or max(1, int(math.ceil(
                leaves * min(1.0, max(0.05, 15 * self.k / n))))),
            "reorder": self.reorder or max(4 * self.k, 200),
        }


class CandidateIndex:
    """Maximum inner product search over ``[n, d]`` candidate embeddings with ids.

    Use :meth:`build` or :meth:`load`; :meth:`search` returns ids and scores, best first,
    optionally excluding per-query ids (e.g. titles a user has already seen).
    """

    def __init__(self, embeddings: np.ndarray, ids: np.ndarray, config: IndexConfig, searcher):
        self.embeddings = embeddings
        self.ids = ids
        self.config = config
        self._searcher = searcher  # None: exact numpy search
        self._sorter = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._sorter]

    @classmethod
    def build(cls, embeddings: np.ndarray, ids: np.ndarray,
              config: IndexConfig = IndexConfig()) -> "CandidateIndex":
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        if embeddings.ndim != 2 or len(embeddings) != len(ids):
            raise InputError(f"Need embeddings [n, d] and n ids. Received: embeddings "
                             f"{embeddings.shape}, ids {ids.shape}.")
        if len(np.unique(ids)) != len(ids):
            raise InputError("Candidate ids must be unique.")
        return cls(embeddings, ids, config, _build_searcher(embeddings, config))

    def search(self, queries: np.ndarray, k: int | None = None,
               exclude: list | None = None, allowed: np.ndarray | None = None,
               batch_size: int = 1024, positions: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` candidates per query.

        Args:
          queries: ``[num_queries, d]`` float32.
          k: neighbours per query (default ``config.k``); clipped to the catalog size.
          exclude: optional, per query, a sized iterable of candidate ids never to return.
            Search fetches ``k`` + the most excluded ids of the batch and filters.
          allowed: optional bool ``[n]`` over the candidates (in ``ids`` order): only
            these may be returned (e.g. a format or year filter), for every query.

          positions: return each candidate's position in ``ids`` (its row in the
            embeddings) instead of its id.

        Returns:
          ``(ids, scores)``, each ``[num_queries, k]``; rows with fewer than ``k``
          eligible candidates are padded with id -1 and score -inf.
        """
        k = k or self.config.k
        n = len(self.ids)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, np.int64)
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        blocked = None if allowed is None else ~np.asarray(allowed, bool)
        for start in range(0, len(queries), batch_size):
            q = queries[start:start + batch_size]
            rows, cols = (self.excluded_pairs(exclude[start:start + batch_size])
                          if exclude is not None else (None, None))
            if self._searcher is None:
                # Exact: a fresh score block, exclusions written into it in place (no
                # mask, no masked copy), then top-k.
                got = q @ self.embeddings.T
                if blocked is not None:
                    got[:, blocked] = -np.inf
                if rows is not None:
                    got[rows, cols] = -np.inf
                idx = top_k(got, k)
                got = np.take_along_axis(got, idx, axis=1)
            else:
                # Over-fetch by the most ids any query excludes, then drop them. Exclusions
                # stay sparse ((row, position) pairs): a dense mask at 1M candidates
                # would be a gigabyte per 1024 queries.
                extra = 0 if blocked is None else int(blocked.sum())
                if rows is not None and len(rows):
                    extra += int(np.bincount(rows, minlength=len(q)).max())
                fetch = min(n, k + extra)
                reorder = min(n, max(fetch, self.config.resolved(n)["reorder"]))
                idx, got = self._searcher.search_batched(
                    q, final_num_neighbors=fetch, pre_reorder_num_neighbors=reorder)
                idx, got = np.asarray(idx, np.int64), np.asarray(got, np.float32)
                drop = np.zeros(idx.shape, bool) if blocked is None else blocked[idx]
                if rows is not None and len(rows):
                    pairs = np.arange(len(q))[:, None] * n + idx
                    drop |= np.isin(pairs, rows.astype(np.int64) * n + cols)
                got = np.where(drop, -np.inf, got)
                order = np.argsort(-got, axis=1, kind="stable")[:, :k]
                idx = np.take_along_axis(idx, order, axis=1)
                got = np.take_along_axis(got, order, axis=1)
            width = idx.shape[1]
            ok = np.isfinite(got)
            out_ids[start:start + len(q), :width] = np.where(ok, idx if positions else self.ids[idx], -1)
            out_scores[start:start + len(q), :width] = got
        return out_ids, out_scores

    def excluded_pairs(self, chunk: list) -> tuple[np.ndarray, np.ndarray]:
        """(query row, candidate position) pairs for per-query excluded ids; unknown ids
        are ignored. ``search`` writes them into its score blocks; EASE's candidates
        (``pipelines/candidates.py``) block the same titles with them."""
        chunk = [seen.astype(np.int64, copy=False).reshape(-1) if isinstance(seen, np.ndarray)
                 else np.fromiter(seen, np.int64, len(seen)) for seen in chunk]
        lengths = [len(seen) for seen in chunk]
        flat = np.concatenate(chunk) if chunk else np.zeros(0, np.int64)
        rows = np.repeat(np.arange(len(chunk)), lengths)
        pos, found = find_sorted(self._sorted_ids, flat)
        return rows[found], self._sorter[pos[found]]

    def save(self, directory: str | os.PathLike) -> None:
        """Writes the index into ``directory`` (which must not exist yet or be empty)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / IDS_FILE, self.ids)
        np.save(directory / EMBEDDINGS_FILE, self.embeddings)
        if self._searcher is not None:
            (directory / "scann").mkdir(exist_ok=True)
            self._searcher.serialize(str(directory / "scann"), relative_path=True)
        (directory / CONFIG_FILE).write_text(json.dumps(
            {"config": dataclasses.asdict(self.config), "scann": self._searcher is not None,
             "resolved": self.config.resolved(len(self.ids))}, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "CandidateIndex":
        directory = Path(directory)
        meta_path = directory / CONFIG_FILE
        if not meta_path.exists():
            raise InputError(f"{directory} is not a candidate index (no {CONFIG_FILE}).")
        meta = json.loads(meta_path.read_text())
        ids = np.load(directory / IDS_FILE, allow_pickle=False)
        embeddings = np.load(directory / EMBEDDINGS_FILE, allow_pickle=False)
        searcher = None
        if meta["scann"]:
            if (directory / "scann" / "scann_docids.pkl").exists():
                raise InputError(f"{directory}/scann holds a pickled docids file; refusing to "
                                 "unpickle it. Candidate ids belong in candidate_ids.npy.")
            from scann.scann_ops.py import scann_ops_pybind

            searcher = scann_ops_pybind.load_searcher(str(directory / "scann"))
        return cls(embeddings, ids, IndexConfig(**meta["config"]), searcher)


def _build_searcher(embeddings: np.ndarray, config: IndexConfig):
    n = len(embeddings)
    settings = config.resolved(n)
    if settings["exact"] and config.mode == "auto":
        return None  # exact numpy search: what ScaNN itself recommends below ~20k
    from scann.scann_ops.py import scann_ops_pybind

    builder = scann_ops_pybind.builder(embeddings, config.k, "dot_product")
    if settings["exact"]:
        return builder.score_brute_force().build()
    return (builder
            .tree(num_leaves=settings["num_leaves"],
                  num_leaves_to_search=settings["leaves_to_search"],
                  training_sample_size=min(n, 100_000))  # ScaNN's default sample
            .score_ah(config.dimensions_per_block,
                      anisotropic_quantization_threshold=config.anisotropic_quantization_threshold)
            .reorder(min(settings["reorder"], n))
            .build())


def brute_force_top_k(queries: np.ndarray, embeddings: np.ndarray, k: int,
                      batch_size: int | None = None) -> np.ndarray:
    """Exact baseline (DESIGN.md): batched float32 matmul + argpartition. Indices ``[n, k]``.

    The default batch keeps each score block near 16M floats (64 MB): at 1M candidates
    that is 16 queries, and bigger blocks only spill out of cache (measured: 39 queries/s
    at 16 vs 22 at 256)."""
    batch_size = batch_size or max(1, min(1024, (1 << 24) // max(len(embeddings), 1)))
    out = []
    for start in range(0, len(queries), batch_size):
        out.append(top_k(queries[start:start + batch_size] @ embeddings.T, k))
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def ann_benchmark(candidate_embeddings: np.ndarray, queries: np.ndarray, ids: np.ndarray,
                  k: int = 100) -> dict:
    """ScaNN (tree + AH, forced whatever the catalog size) against exact brute force:
    recall@k of ScaNN's top-k against the exact top-k, and queries/s of both."""
    index = CandidateIndex.build(candidate_embeddings, ids, IndexConfig(mode="ann", k=k))
    tick = time.perf_counter()
    exact = brute_force_top_k(queries, candidate_embeddings, k)
    exact_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    approx_ids, _ = index.search(queries, k)
    scann_seconds = time.perf_counter() - tick
    exact_ids = ids[exact]
    found = min(k, len(ids))   # a catalog smaller than k: every title is the whole answer
    recall = np.mean([len(np.intersect1d(a, b)) / found for a, b in zip(approx_ids, exact_ids)])
    return {"k": k, "candidates": len(ids), "queries": len(queries),
            "scann_recall": float(recall), "settings": index.config.resolved(len(ids)),
            "scann_queries_per_second": round(len(queries) / scann_seconds, 1),
            "brute_force_queries_per_second": round(len(queries) / exact_seconds, 1)}
