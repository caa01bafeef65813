"""anirank towers."""

from pipelines import _env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
