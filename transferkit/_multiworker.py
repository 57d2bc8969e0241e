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
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from typing import Any

import tensorflow as tf

from transferkit._errors import ConfigError

# sha256 of inspect.getsource of each function replaced, as in Keras 3.15.1
FIXED_SOURCES = {
    "TensorFlowTrainer._maybe_symbolic_build": "92a504f5eba9b29f",
    "reduce_per_replica": "2e7d54b1e6edc29a",
}
_fixed = False


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


def strategy_from_environment() -> tf.distribute.Strategy | None:
    """A ``MultiWorkerMirroredStrategy`` for the cluster in ``TF_CONFIG`` (Keras fixed first), or ``None``."""
    if cluster_spec() is None:
        return None
    fix_keras()
    return tf.distribute.MultiWorkerMirroredStrategy()
