"""anirank serving: load a model (local dir or Hub repo), retrieve, rank, batch jobs."""

from pipelines import _env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

from serving.recommender import Filters, Recommender  # noqa: E402

__all__ = ["Filters", "Recommender"]
