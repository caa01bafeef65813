"""anirank pipeline stages: raw store -> features -> models -> report -> Hub.

Each stage is a function (``pipelines.synth.run``, ``pipelines.kaggle.run``,
``pipelines.features.run``) with a small CLI over it in ``python -m pipelines``.
"""

__version__ = "0.1.0"  # the one place: pyproject.toml, the model card and --version read it

from pipelines import _env  # noqa: F401  (must precede any TensorFlow import)
