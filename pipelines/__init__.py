"""anirank pipeline stages: raw store -> features -> models -> report -> Hub.

Each stage is a function (``pipelines.synth.run``, ``pipelines.kaggle.run``,
``pipelines.features.run``) with a small CLI over it in ``python -m pipelines``.
"""

from pipelines import _env  # noqa: F401  (must precede any TensorFlow import)
