"""Small array operations more than one layer needs (numpy only)."""

from __future__ import annotations

import numpy as np


def find_sorted(sorted_keys: np.ndarray, values) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``values`` sits in the ascending array ``sorted_keys``:
    ``(positions, found)``, vectorised; ``positions`` is in range but means something only
    where ``found``. (Id -> row lookups: title ids in a catalog, (user, title) keys.)"""
    values = np.asarray(values)
    if len(sorted_keys) == 0:
        return np.zeros(values.shape, np.int64), np.zeros(values.shape, bool)
    positions = np.searchsorted(sorted_keys, values).clip(0, len(sorted_keys) - 1)
    return positions, sorted_keys[positions] == values
