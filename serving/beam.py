"""The batch job as an Apache Beam pipeline: ``python -m serving.batch --runner NAME``.

    python -m serving.batch --model data/model --out recs/ --runner DirectRunner
    python -m serving.batch --model data/model --out recs/ --runner FnApiRunner -- \\
        --direct_running_mode multi_processing --direct_num_workers 2

(Beam 2.77's DirectRunner first tries its Prism runner, which it downloads, and runs
batch pipelines on the FnApiRunner when it cannot; name the FnApiRunner for worker
processes: Prism ignores ``direct_running_mode``.)

The launcher plans the job as the in-process job does (:func:`serving.batch.plan`: the
options checked, the users read and deduplicated, the manifest); the pipeline gets the
chunks of users that have no part yet, one element per chunk, spreads them over the
workers, and each worker turns a chunk into its part with the in-process job's own
functions (:func:`serving.batch.chunk_frame`, :func:`serving.batch.write_part`). Each
worker process loads the model once (``apache_beam.utils.shared.Shared``), however many
threads and bundles it runs. The launcher writes ``_SUCCESS`` only after the pipeline
finished and every part is there.

Why each element writes its own part instead of ``beam.io.WriteToParquet``: the part
names and rows are then exactly the in-process job's (``read_output`` reads either, and
either runner can finish what the other started); each part is written to a temporary
file and renamed, so a part exists only when whole, and a retried bundle rewrites the
same rows under the same name (idempotent, where WriteToParquet's shards are named and
ordered by the runner). The cost: ``--out`` (and a ``--model`` directory) must be paths
every worker sees, i.e. one machine or a shared filesystem.

apache-beam is an optional dependency (``requirements-scale.txt``): :mod:`serving.batch`
imports this module only when a runner is asked for, and importing it without Beam is
an :class:`InputError` saying how to install it.
"""

from __future__ import annotations

from pathlib import Path

from pipelines import _env  # noqa: F401

from pipelines.errors import AnirankError, InputError  # noqa: E402

try:
    import apache_beam as beam  # noqa: E402
    from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions  # noqa: E402
    from apache_beam.runners.runner import PipelineState, create_runner  # noqa: E402
    from apache_beam.utils.shared import Shared  # noqa: E402
except ImportError as err:
    raise InputError("--runner needs Apache Beam, an optional dependency: "
                     "pip install -r requirements-scale.txt "
                     f"(importing apache_beam failed: {err}).") from None

from serving.batch import Job, chunk_frame, load, write_part  # noqa: E402
from serving.recommender import Recommender  # noqa: E402

COUNTERS = "serving.beam"   # namespace of the pipeline's counters


def pipeline_options(runner: str, extra=()) -> PipelineOptions:
    """Beam options for ``runner`` and the ``extra`` command-line options (e.g.
    ``["--direct_num_workers", "2"]``), checked before the job writes anything.

    Raises:
      InputError: Beam does not know the runner.
    """
    options = PipelineOptions([f"--runner={runner}", *extra])
    try:
        create_runner(options.view_as(StandardOptions).runner)
    except (ValueError, ImportError) as err:  # Beam's message lists the runners it knows
        raise InputError(f"`runner` must be a Beam runner. Received: runner={runner!r} "
                         f"({err})") from None
    return options


class _Loaded:
    """The model a worker process shares between its threads and bundles (a plain
    object: ``Shared`` keeps a weak reference to it)."""

    def __init__(self, rec: Recommender):
        self.rec = rec


class WriteParts(beam.DoFn):
    """Element ``(part index, user ids)`` -> that part written; yields the index.
    Loads the model once per worker process (``Shared``), at its first element."""

    def __init__(self, job: Job, model: str, revision: str | None):
        self._shared = Shared()
        self._model, self._revision, self._db = model, revision, job.db
        # With the model's content hash: a worker process that still holds a model
        # loaded from the same path before it was retrained loads the new one.
        self._tag = (f"{model}@{revision}:{job.manifest['model_sha256']}"
                     f":{job.manifest['store_sha256']}")
        self._options = (job.k, job.candidates, job.filters)
        self._out = str(job.out)
        self._loads = beam.metrics.Metrics.counter(COUNTERS, "model_loads")
        self._loaded = None

    def _load(self) -> _Loaded:
        self._loads.inc()
        return _Loaded(load(self._model, self._revision, self._db))

    def process(self, element):
        if self._loaded is None:
            # Here rather than in setup(): a counter counts only inside a bundle.
            self._loaded = self._shared.acquire(self._load, tag=self._tag)
        index, users = element
        part = Path(self._out) / f"part-{index:05d}.parquet"
        write_part(chunk_frame(self._loaded.rec, users, *self._options), part)
        yield index


def run_parts(job: Job, model: str, revision: str | None,
              options: PipelineOptions) -> tuple[int, int]:
    """Writes the job's missing parts with a Beam pipeline (``options`` from
    :func:`pipeline_options`); returns (parts written, model loads by the workers).

    Raises:
      AnirankError: the pipeline ended in another state than DONE (finished parts are
        kept; ``_SUCCESS`` is not written).
    """
    pending = [(i, job.chunk(i)) for i, part in enumerate(job.parts) if not part.exists()]
    pipeline = beam.Pipeline(options=options)
    (pipeline
     | "Chunks" >> beam.Create(pending)
     # Spread the chunks over the workers: a runner may otherwise run the whole source
     # in the one bundle that created it.
     | "Spread" >> beam.Reshuffle()
     | "Parts" >> beam.ParDo(WriteParts(job, model, revision)))
    result = pipeline.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise AnirankError(f"The Beam pipeline ended {state}; rerun the job to complete "
                           f"{job.out} (finished parts are kept).")
    counters = result.metrics().query(MetricsFilter().with_namespace(COUNTERS)
                                      .with_name("model_loads"))["counters"]
    loads = sum(c.committed if c.committed is not None else c.attempted for c in counters)
    return len(pending), int(loads)


if __name__ == "__main__":
    import sys

    print("error: serving.beam has no command line of its own: run the batch job on Beam with "
          "`python -m serving.batch --model MODEL --runner DirectRunner` (see its --help).",
          file=sys.stderr)
    sys.exit(2)
