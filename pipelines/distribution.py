"""Training on several machines: the cluster ``TF_CONFIG`` names, checked, and the
``tf.distribute`` strategy it runs under.

Every machine runs the same command with its own ``TF_CONFIG`` (README, "Training on N
machines"), e.g. on the second of two:

    TF_CONFIG='{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]},
                "task": {"type": "worker", "index": 1}}' \\
        python -m pipelines train-retrieval --features data/features --model data/model

Without ``TF_CONFIG`` (or with a cluster of one task) training runs in this process
alone, as it always has. With more tasks, under ``MultiWorkerMirroredStrategy``: one
replica per process, variables mirrored, gradients summed across workers by collective
ops over gRPC on the addresses the cluster names. The chief (the ``chief`` task if the
cluster has one, else worker 0) is the one process that writes anything.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

from pipelines.errors import InputError

VARIABLE = "TF_CONFIG"
# The task types a MultiWorkerMirroredStrategy cluster may have, in the order TF numbers
# its tasks (a chief first, when there is one).
TASK_TYPES = ("chief", "worker")
EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
           '"task": {"type": "worker", "index": 0}}')
FIX = (f"Set {VARIABLE} on each machine to the same cluster and that machine's own task, "
       f"e.g. {EXAMPLE} (index 1 on host2), or unset it to train on this machine alone.")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The machines one training runs on, and which of them this process is.

    Attributes:
      tasks: every task's ``(type, address)``, the chief first; empty when no
        ``TF_CONFIG`` is set (this process alone).
      task: this process's ``(type, index)``.
    """

    tasks: tuple[tuple[str, str], ...] = ()
    task: tuple[str, int] = ("worker", 0)

    @property
    def size(self) -> int:
        """How many processes train together (1 without ``TF_CONFIG``)."""
        return max(1, len(self.tasks))

    @property
    def rank(self) -> int:
        """This process's position among ``tasks`` (0 is the chief)."""
        kind, index = self.task
        return [i for i, (t, _) in enumerate(self.tasks) if t == kind][index] if self.tasks else 0

    @property
    def is_chief(self) -> bool:
        """Does this process write the model (the chief task, or worker 0 without one)?"""
        return self.rank == 0

    def describe(self) -> str:
        if self.size == 1:
            return "this machine alone"
        kind, index = self.task
        return (f"{kind} {index} ({self.tasks[self.rank][1]}) of {self.size} processes"
                + (", the chief" if self.is_chief else ""))


def _fail(problem: str) -> InputError:
    return InputError(f"{VARIABLE} {problem}. {FIX}")


def cluster(environ=None) -> Cluster:
    """The cluster ``TF_CONFIG`` (in ``environ``, default ``os.environ``) names.

    Raises:
      InputError: ``TF_CONFIG`` is set but is not JSON, names no workers, has task
        types ``MultiWorkerMirroredStrategy`` does not run (a parameter server), or a
        task that is not in the cluster.
    """
    text = (os.environ if environ is None else environ).get(VARIABLE, "").strip()
    if not text:
        return Cluster()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(f"is not JSON ({err.msg} at character {err.pos}): {text[:200]!r}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise _fail(f"has no \"cluster\" object naming the machines: {text[:200]!r}")
    spec = config["cluster"]
    other = sorted(set(spec) - set(TASK_TYPES))
    if other:
        raise _fail(f"names task types {other}; training runs under "
                    f"MultiWorkerMirroredStrategy, whose cluster has only {list(TASK_TYPES)}")
    for kind in TASK_TYPES:
        addresses = spec.get(kind, [])
        if not isinstance(addresses, list) or not all(
                isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses):
            raise _fail(f"cluster {kind!r} must be a list of \"host:port\" addresses. "
                        f"Received: {addresses!r}")
    if len(spec.get("chief", [])) > 1:
        raise _fail(f"names {len(spec['chief'])} chiefs; a cluster has at most one")
    if not spec.get("worker") and not spec.get("chief"):
        raise _fail("names no workers (cluster \"worker\" is empty or missing)")
    tasks = tuple((kind, address) for kind in TASK_TYPES for address in spec.get(kind, []))
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise _fail("has no \"task\" saying which of the cluster's processes this one is "
                    f"(e.g. \"task\": {{\"type\": \"worker\", \"index\": 0}}). Received: {task!r}")
    kind, index = task["type"], task["index"]
    count = len(spec.get(kind, [])) if kind in TASK_TYPES else 0
    if not isinstance(index, int) or not 0 <= index < count:
        raise _fail(f"task {kind!r} {index!r} is not in the cluster, which has "
                    + ", ".join(f"{len(spec.get(k, []))} {k}" for k in TASK_TYPES)
                    + (" (the chief is task type \"chief\", index 0, or worker 0 when the "
                       "cluster has no \"chief\")" if kind == "chief" else ""))
    return Cluster(tasks, (kind, index))


@functools.cache
def _multi_worker_strategy():
    import tensorflow as tf

    # Gradients are summed across workers by the RING collective over gRPC (the CPU
    # implementation; NCCL would need a GPU on every worker).
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING))


def strategy(where: Cluster):
    """The ``tf.distribute`` strategy to train under: ``MultiWorkerMirroredStrategy``
    (one per process, created on first use) for a cluster of several processes, else
    None (TensorFlow's default: this process alone).

    It must be created before TensorFlow runs any operation in the process (TensorFlow
    configures its collective ops at start-up): stages call it first.
    """
    return _multi_worker_strategy() if where.size > 1 else None
