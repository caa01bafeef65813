"""Process environment that must be set before TensorFlow (and numpy) is first imported.

TFRS 0.7 is written against Keras 2. TensorFlow 2.20 ships Keras 3 as ``tf.keras``
unless ``TF_USE_LEGACY_KERAS=1`` is set *before* ``import tensorflow``; after that it is
too late, so every package ``__init__`` (and every script) imports this module first.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ INFO/WARNING lines (CPU feature guards, oneDNN notes) drown our own
# progress output; errors still show. A user who wants them sets the variable themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# numpy's OpenBLAS threads busy-wait about 2**28 cycles after each matmul (its default
# THREAD_TIMEOUT), taking the cores the top-k threads and TensorFlow need next; at 2**4
# they sleep at once. Measured: top-100 of a fresh 3000 x 2000 score block 0.038 s
# instead of 0.053-0.060 s. Only takes effect if numpy is not imported yet.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

if os.environ["TF_USE_LEGACY_KERAS"] != "1":
    raise RuntimeError(
        "anirank needs Keras 2 (TFRS 0.7): TF_USE_LEGACY_KERAS is set to "
        f"{os.environ['TF_USE_LEGACY_KERAS']!r}; unset it or set it to 1."
    )
