"""Data-parallel training over several processes or machines with ``MultiWorkerMirroredStrategy``.

Every worker runs the same command with ``TF_CONFIG`` naming the cluster and its own task
(TensorFlow's convention). The strategy must exist before TensorFlow runs anything else, so the
command creates it first thing (:func:`strategy_from_environment`).

Keras 3.15's TensorFlow trainer cannot ``fit`` under this strategy (keras-team/keras#20585): before
the first step it averages a distributed batch across workers to build the model symbolically, a
collective the workers do not run in step, and it averages the per-step scalar logs "along axis 0",
which a scalar does not have. :func:`fix_keras` replaces those two spots — only after checking that
the Keras code is the code the fix was written for (a hash of its source), so that a Keras upgrade
that changes it stops with a clear error instead of running a stale fix.

A cluster has to meet, and can lose a task. :func:`strategy_from_environment` gives TensorFlow's
coordination service a deadline for every task to register, so a task started alone stops with
:class:`~transferkit.ClusterError` instead of waiting for ever. :func:`broadcast` sends the
chief's bytes to every task (the chief's checkpoint when a run resumes: see
``transferkit._run_folder``), and :func:`lost_task` turns the error a collective raises when a task
died into one line naming it.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import os
import re
from typing import Any

import numpy as np
import tensorflow as tf

from transferkit._defaults import CLUSTER_TIMEOUT
from transferkit._errors import ClusterError, ConfigError

# sha256 of inspect.getsource of each function replaced, as in Keras 3.15.1
FIXED_SOURCES = {
    "TensorFlowTrainer._maybe_symbolic_build": "92a504f5eba9b29f",
    "reduce_per_replica": "2e7d54b1e6edc29a",
}
_fixed = False

# the collective group of transferkit's own broadcasts; MultiWorkerMirroredStrategy numbers its
# groups from 1 upward (cross_device_utils.CollectiveKeys), so a high key never meets one of them
_BROADCAST_GROUP = 0x7A4B_0001
_instances = itertools.count(1)  # every task broadcasts in the same order, so their counters agree


def cluster_spec() -> dict[str, Any] | None:
    """``TF_CONFIG`` when it names a cluster of more than one task, else ``None``."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
        tasks = sum(len(addresses) for addresses in config["cluster"].values())
        if "type" not in config["task"] or "index" not in config["task"]:
            raise KeyError("task type and index")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(f"TF_CONFIG is not a cluster description TensorFlow understands ({error!r}). Expected "
                          '{"cluster": {"worker": ["host:port", …]}, "task": {"type": "worker", "index": 0}}.'
                          ) from None
    return config if tasks > 1 else None


def is_chief(config: dict[str, Any]) -> bool:
    """The task that writes the run: the ``chief``, or worker 0 of a cluster without one."""
    task = config["task"]
    if "chief" in config["cluster"]:
        return bool(task["type"] == "chief")
    return bool(task["type"] == "worker" and int(task["index"]) == 0)


def tasks(config: dict[str, Any]) -> list[tuple[str, int, str]]:
    """The training tasks of the cluster, the chief first: ``(type, index, address)``."""
    cluster = config["cluster"]
    return [(job, index, address) for job in ("chief", "worker") for index, address in enumerate(cluster.get(job, []))]


def describe_task(job: str, index: int, config: dict[str, Any]) -> str:
    """``"worker 1 (10.0.0.2:2222)"``."""
    addresses = config["cluster"].get(job, [])
    return f"{job} {index}" + (f" ({addresses[index]})" if index < len(addresses) else "")


def _me(config: dict[str, Any]) -> tuple[str, int]:
    return str(config["task"]["type"]), int(config["task"]["index"])


def others(config: dict[str, Any]) -> str:
    """The other training tasks of the cluster, described."""
    me = _me(config)
    return ", ".join(describe_task(job, index, config) for job, index, _ in tasks(config) if (job, index) != me)


def _coordinate(config: dict[str, Any], timeout: float) -> None:
    """Configure TensorFlow's coordination service as ``MultiWorkerMirroredStrategy`` would, with a
    deadline for every task to register.

    Left to itself the strategy configures it without one (collective_all_reduce_strategy.py,
    ``_initialize_multi_worker``, only when none is configured yet), and a task started alone waits
    for ever: worker 0 serves the service and waits for the others, the others retry to reach it.
    With ``cluster_register_with_barrier`` every task, worker 0 too, registers at a barrier that
    fails with ``DeadlineExceededError`` once ``timeout`` has passed.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(config["cluster"][job]))
            for job in ("chief", "worker") if job in config["cluster"]]
    leader = "chief" if "chief" in config["cluster"] else "worker"
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{leader}/replica:0/task:0", coordinated_jobs=jobs,
        cluster_register_timeout_in_ms=int(timeout * 1000))
    context.context().coordination_service.cluster_register_with_barrier = True


def broadcast(payload: bytes | None, config: dict[str, Any], *, timeout: float = CLUSTER_TIMEOUT) -> bytes:
    """The chief's ``payload`` on every training task: the chief passes it, the others ``None``.

    Every task must call this at the same point of the run. Two collectives (the size, then the
    bytes) over the tasks' CPUs, each given up after ``timeout`` seconds (``DeadlineExceededError``).
    """
    count = len(tasks(config))
    job, index = _me(config)
    size_key, bytes_key = next(_instances), next(_instances)
    common = {"group_size": count, "group_key": _BROADCAST_GROUP, "timeout_seconds": float(timeout)}
    with tf.device(f"/job:{job}/replica:0/task:{index}/device:CPU:0"):
        if is_chief(config):
            if payload is None:
                raise ValueError("the chief broadcasts a payload")
            # the collectives carry no bytes (uint8): int64 words, the last one padded
            words = np.frombuffer(payload + b"\0" * (-len(payload) % 8), np.int64)
            tf.raw_ops.CollectiveBcastSendV2(input=tf.constant([len(payload)], tf.int64), instance_key=size_key,
                                             **common)
            tf.raw_ops.CollectiveBcastSendV2(input=tf.constant(words), instance_key=bytes_key, **common)
            return payload
        size = int(tf.raw_ops.CollectiveBcastRecvV2(shape=[1], T=tf.int64, instance_key=size_key, **common)[0])
        received = tf.raw_ops.CollectiveBcastRecvV2(shape=[-(-size // 8)], T=tf.int64, instance_key=bytes_key,
                                                    **common)
        return received.numpy().tobytes()[:size]


CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)
"""What a collective raises when a task of the cluster is gone (or never came)."""


def lost_task(error: Exception, config: dict[str, Any], *, when: str = "during training") -> ClusterError:
    """The one-line error for a collective that failed because a task of the cluster died.

    TensorFlow's coordination service names the tasks that stopped sending heartbeats
    (``/job:worker/replica:0/task:1``); a task that lost the chief, which serves it, hears that
    the service is gone. The tasks named in the message, other than this one, are the lost ones.
    """
    me = _me(config)
    named = {(job, int(index)) for job, index in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", str(error))}
    lost = [describe_task(job, index, config) for job, index, _ in tasks(config) if (job, index) in named - {me}]
    if isinstance(error, tf.errors.DeadlineExceededError) and not lost:
        who = f"The rest of the cluster ({others(config)}) did not answer in time"
    else:
        who = (f"Lost {' and '.join(lost)}" if lost else f"Lost another task of the cluster ({others(config)})")
    return ClusterError(f"{who} {when}; this {describe_task(*me, config)} stopped too. Nothing recorded is lost: "
                        "run the same command with the same TF_CONFIG on every task again to resume from the "
                        "chief's checkpoint.")


def _digest(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


def check_keras() -> None:
    """Raise ``ConfigError`` unless Keras' code is the code :func:`fix_keras` was written for."""
    from keras.src.backend.tensorflow import trainer

    found = {"TensorFlowTrainer._maybe_symbolic_build": _digest(trainer.TensorFlowTrainer._maybe_symbolic_build),
             "reduce_per_replica": _digest(trainer.reduce_per_replica)}
    changed = sorted(name for name, digest in found.items() if FIXED_SOURCES[name] != digest)
    if changed:
        import keras

        raise ConfigError(f"Multi-worker training works around keras#20585 in Keras 3.15.1's TensorFlow trainer, and "
                          f"Keras {keras.__version__} changed the code it replaces ({', '.join(changed)}). Use Keras "
                          "3.15.1 for multi-worker training, or a transferkit release made for this Keras.")


def fix_keras() -> None:
    """Make ``model.fit`` work under ``MultiWorkerMirroredStrategy`` (keras#20585). Idempotent."""
    global _fixed
    if _fixed:
        return
    check_keras()
    from keras.src.backend.tensorflow import trainer

    original_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            # the logs are scalars: average them over every replica of every worker
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    def _maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                # this worker's first replica's share of the batch: its shapes are all the build needs
                data_batch = tf.nest.map_structure(
                    lambda x: self.distribute_strategy.experimental_local_results(x)[0]
                    if isinstance(x, tf.distribute.DistributedValues) else x, batch)
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    _fixed = True


def strategy_from_environment(*, timeout: float = CLUSTER_TIMEOUT) -> tf.distribute.Strategy | None:
    """A ``MultiWorkerMirroredStrategy`` for the cluster in ``TF_CONFIG`` (Keras fixed first), or ``None``.

    Waits up to ``timeout`` seconds for every task of the cluster to start; then raises
    :class:`~transferkit.ClusterError`.
    """
    config = cluster_spec()
    if config is None:
        return None
    fix_keras()
    _coordinate(config, timeout)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.DeadlineExceededError:
        raise ClusterError(
            f"This {describe_task(*_me(config), config)} gave up after waiting {timeout:g} s for the rest of the "
            f"cluster: {others(config)}. Start the same command with its TF_CONFIG on every task, within "
            "--cluster-timeout seconds of each other.") from None
