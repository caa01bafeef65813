"""What both training stages share: ``tf.data`` pipelines that gather raw feature rows
from constant tensors in graph mode (no per-example Python), and early stopping on a
validation metric with the best epoch's weights kept."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


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
