"""What the training stages share: ``tf.data`` pipelines that gather raw feature rows
from constant tensors in graph mode (no per-example Python), over index pairs held in
memory (``index_dataset``) or streamed from shard files on disk (``write_pair_shards``,
``stream_dataset``: memory bounded by a shuffle buffer, not by the number of pairs, and
split between the processes of a distributed training), and early stopping on a
validation metric with the best epoch's weights kept."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

# Pairs per TFRecord record of a shard: one record is one ``decode_raw`` (32 KB), so
# reading costs nothing per pair.
BLOCK = 4096
# Pairs per shard file (8 MB): enough files for every worker to interleave several.
SHARD_PAIRS = 1 << 20


def constants(raw: dict) -> dict:
    """Raw feature arrays as constant tensors, for gathering batches in graph mode."""
    return {k: tf.constant(v) for k, v in raw.items()}


def gather(table: dict, rows) -> dict:
    """``{name: table[name][rows]}``: the rows (any shape of indices) of every feature."""
    return {k: tf.gather(v, rows) for k, v in table.items()}


def index_dataset(slices: tuple, to_batch, batch_size: int,
                  shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches of ``to_batch(*columns)`` over index columns (e.g. user rows, title rows),
    shuffled each epoch with ``shuffle_seed`` (None: in order)."""
    ds = tf.data.Dataset.from_tensor_slices(slices).cache()
    if shuffle_seed is not None:
        ds = ds.shuffle(len(slices[0]), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(to_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


def write_pair_shards(columns: tuple[np.ndarray, np.ndarray], directory: str | os.PathLike,
                      seed: int, groups: int = 1, shard_pairs: int = SHARD_PAIRS) -> list[str]:
    """Writes index pairs (two int32 columns, e.g. user rows and title rows) to TFRecord
    shard files under ``directory``, in one seeded random order; returns their paths.

    The order is random so that a bounded shuffle buffer mixes pairs of many users
    (the tables list a user's entries together). The number of files is a multiple of
    ``groups`` (the processes that will read them, ``stream_dataset``'s
    ``pipelines``), at least 2 per group, and their sizes differ by at most one pair,
    so every group gets the same number of pairs to within ``files / groups``.
    """
    first, second = (np.asarray(c, np.int32) for c in columns)
    n = len(first)
    per_group = max(2, -(-n // (groups * shard_pairs)))
    order = np.random.default_rng(seed).permutation(n)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rows in enumerate(np.array_split(order, groups * per_group)):
        path = str(directory / f"pairs-{i:05d}.tfrecord")
        pairs = np.stack([first[rows], second[rows]], axis=1)  # [rows, 2] int32
        with tf.io.TFRecordWriter(path) as writer:
            for start in range(0, len(pairs), BLOCK):
                writer.write(pairs[start:start + BLOCK].tobytes())
        paths.append(path)
    return paths


def stream_dataset(files: list[str], to_batch, batch_size: int, seed: int, *,
                   pipeline: int = 0, pipelines: int = 1,
                   shuffle_buffer: int | None = None) -> tf.data.Dataset:
    """Batches of ``to_batch(first, second)`` over the pairs of shard files
    (``write_pair_shards``), one pass. ``pipeline`` of ``pipelines`` reads files
    ``pipeline, pipeline + pipelines, ...`` (each worker of a distributed training its
    own share, so the workers together read every pair once per pass). Each pass visits
    its files in a new seeded order, interleaves 4 of them, and shuffles pairs in a
    buffer of ``shuffle_buffer`` (default 64 batches): memory is bounded by the buffer.
    """
    shuffle_buffer = shuffle_buffer or 64 * batch_size
    mine = files[pipeline::pipelines]
    seed = seed + 7919 * pipeline  # each worker shuffles its own files its own way
    ds = tf.data.Dataset.from_tensor_slices(mine).shuffle(
        len(mine), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(mine)), block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda record: tf.reshape(tf.io.decode_raw(record, tf.int32), [-1, 2])).unbatch()
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(lambda pairs: to_batch(pairs[:, 0], pairs[:, 1]),
                                    num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def weights_digest(weights: list[np.ndarray]) -> str:
    """sha256 of a model's weights (``get_weights()``), bytes in order: equal digests,
    bit-identical models."""
    digest = hashlib.sha256()
    for w in weights:
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


class EarlyStopping:
    """Early stopping on a validation metric (higher is better): keeps the best epoch's
    weights and says when ``patience`` epochs have passed without a gain. A NaN value
    (nothing to measure) is never a gain."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best, self.best_epoch, self.best_weights = -np.inf, 0, None

    def update(self, epoch: int, value: float, get_weights) -> bool:
        """Records epoch ``epoch`` (from 1); True when training should stop."""
        if value > self.best:
            self.best, self.best_epoch, self.best_weights = value, epoch, get_weights()
            return False
        return epoch - self.best_epoch >= self.patience

    def restore(self, model) -> None:
        """Puts the best epoch's weights back (nothing to do if no epoch was a gain)."""
        if self.best_weights is not None:
            model.set_weights(self.best_weights)
