"""Process environment that must be set before TensorFlow (and numpy) is first imported.

TFRS 0.7 is written against Keras 2. TensorFlow 2.20 ships Keras 3 as ``tf.keras``
unless ``TF_USE_LEGACY_KERAS=1`` is set *before* ``import tensorflow``; after that it is
too late, so every package ``__init__`` (and every script) imports this module first.

TensorFlow's start-up chatter is kept quiet unless asked for. Its C++ side logs, on
every command, CPU feature notes, oneDNN notes (INFO) and, on a machine without an
NVIDIA GPU, ``E ... cuda_platform.cc:51] failed call to cuInit: ... (303)`` (ERROR, when
the first op runs). Only ``TF_CPP_MIN_LOG_LEVEL`` silences these: 2 hides INFO and
WARNING, 3 hides ERROR too. The default here is 3 when the machine has no NVIDIA device
(``/dev/nvidiactl``, ``/proc/driver/nvidia``, or WSL's ``/dev/dxg``), where the ERROR
lines at start-up are all about the GPU it does not have, and 2 where there is one, so a
GPU user still sees driver and CUDA errors. Errors that stop a computation are Python
exceptions and are raised whatever the level. The variable is only defaulted: set it to
see everything again, e.g.

    TF_CPP_MIN_LOG_LEVEL=0 python -m pipelines train-retrieval ...

The one line TensorFlow 2.20 logs through absl directly, "Compiled cluster using XLA!"
(with absl's "All log messages before absl::InitializeLog()" note), printed once per
process at the first XLA compilation, is governed by no environment variable: serving
compiles its first ranker call inside :func:`native_stderr_silenced`, so the service
starts without it. ``TF_ENABLE_ONEDNN_OPTS`` is left alone on purpose: it changes
numerics, not logging.
"""

import contextlib
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _has_nvidia_device() -> bool:
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg"))


# TensorFlow's C++ log lines drown our own progress output (see the docstring); a user
# who wants them sets the variable themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if _has_nvidia_device() else "3")
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


@contextlib.contextmanager
def native_stderr_silenced():
    """File descriptor 2 pointed at /dev/null for the block: what native code (absl)
    writes there is dropped. Python's own errors still surface: an exception leaves the
    block, stderr is restored, and it is reported as usual."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
