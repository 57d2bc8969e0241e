"""A run folder's whole life: lock it, resume or start a fit in it, write the run, clean up.

:func:`train_run` is what ``transferkit train`` does with its ``--out`` folder, for Python users:
one process at a time, a killed run carried on by calling it again, every file written
atomically, the checkpoint deleted once everything is written. See docs/reliability.md.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tensorflow as tf

from transferkit._atomic import RunLock, remove_stale_temporaries
from transferkit._checkpoint import STATE_FILE, pack, unpack
from transferkit._defaults import CLUSTER_TIMEOUT
from transferkit._errors import ConfigError, TransferkitError
from transferkit._finetuner import FineTuner
from transferkit._multiworker import CLUSTER_ERRORS, broadcast, cluster_spec, is_chief, lost_task, others
from transferkit._types import Callbacks, PathLike, Verbose
from transferkit.data._loaders import ImageData

log = logging.getLogger("transferkit")

CHECKPOINT_DIR = "checkpoint"  # in the run folder while train_run runs: what a second call resumes from


@dataclass(frozen=True)
class RunFolder:
    """What :func:`train_run` did with a run folder.

    Attributes:
        path: The run folder, as given to :func:`train_run`.
        written: Whether this process wrote ``path``. ``False`` only on a worker of a multi-worker
            cluster (``TF_CONFIG``) other than the chief: it trained in step with the chief in a
            scratch folder, removed since; the chief writes ``path``.
        resumed_from: Where the fit carried on after an interrupted one (``"fine_tune epoch 2"``),
            or ``None`` when it started from the beginning.
        metrics: What ``metrics.json`` holds (:meth:`FineTuner.write_report`'s return value).

    Example:
        >>> run = tk.train_run(tuner, data, "runs/flowers")
        >>> validation = run.metrics["validation"]
        >>> run.resumed_from, validation["accuracy"]
    """

    path: Path
    written: bool
    resumed_from: str | None
    metrics: dict[str, Any] = field(repr=False)


def checkpoint_folder(out: PathLike) -> Path:
    """Where :func:`train_run` keeps the checkpoint of the run folder ``out`` while it trains."""
    return Path(out) / CHECKPOINT_DIR


def train_run(tuner: FineTuner, data: ImageData, out: PathLike, *, restart: bool = False,
              callbacks: Callbacks = (), verbose: Verbose = "auto",
              on_start: Callable[[str | None], object] | None = None,
              cluster_timeout: float = CLUSTER_TIMEOUT) -> RunFolder:
    """Fit ``tuner`` on ``data`` and write the run to ``out``, carrying on where a killed call stopped.

    What ``transferkit train`` does with its ``--out`` folder:

    1. lock ``out`` (created if missing): a second process on it gets
       :class:`~transferkit.RunInUseError` at once; the lock goes with the process, however it
       ends;
    2. delete the half-written temporaries a killed run left there;
    3. fit with the checkpoint ``out/checkpoint``: when an earlier call was interrupted (Ctrl-C,
       ``kill -9``, a power cut) the fit carries on after the last epoch it recorded, provided the
       settings and the data are the same (otherwise :class:`~transferkit.ConfigError` names what
       differs);
    4. :meth:`FineTuner.save` the model and :meth:`FineTuner.write_report` the metrics and plots
       into ``out``, each file written atomically;
    5. delete the checkpoint: nothing is left to resume.

    In a multi-worker cluster (``TF_CONFIG`` naming several tasks, ``tuner`` built with the
    strategy), every worker calls this with the same arguments; only the chief writes ``out``, the
    others train in step in a scratch folder that is removed afterwards. The chief's checkpoint is
    the cluster's: when a run resumes, the chief sends its files to every task, so they all carry
    on from the same epoch. A task lost while they train stops the others with
    :class:`~transferkit.ClusterError`; calling this again on every task resumes.

    Args:
        tuner: A new :class:`~transferkit.FineTuner` with the settings of the run (and a ``seed``,
            without which a killed run cannot be resumed: the validation split would differ).
        data: The images, from :func:`~transferkit.load_folder` or another loader; the report
            evaluates on its validation split.
        out: The run folder.
        restart: Throw away the checkpoint of an interrupted call and start over.
        callbacks: Keras callbacks, passed to every ``model.fit`` (:meth:`FineTuner.fit`).
        verbose: Keras' ``verbose`` for the fit.
        on_start: Called with where the fit carries on (``"fine_tune epoch 2"``, or ``None`` for a
            fresh start) once ``out`` is locked, just before training starts: the place to report
            it.
        cluster_timeout: In a multi-worker cluster, how many seconds a task waits for the others
            at the points where they meet outside training (the chief's checkpoint, the end).

    Returns:
        A :class:`~transferkit.RunFolder`: the folder, whether this process wrote it, where the
        fit resumed from, and the metrics.

    Raises:
        RunInUseError: Another process is writing ``out``.
        ClusterError: A task of the multi-worker cluster was lost, or did not answer in time.
        ConfigError: ``out/checkpoint`` belongs to a fit with other settings or data (give
            ``restart=True``), or ``tuner`` or ``data`` is not what is expected.

    Example:
        >>> import transferkit as tk
        >>> data = tk.load_folder("photos", seed=0)
        >>> tuner = tk.FineTuner("mobilenet_v2", weights="imagenet", seed=0)
        >>> run = tk.train_run(tuner, data, "runs/photos")  # killed? call it again
        >>> validation = run.metrics["validation"]
        >>> validation["accuracy"]
    """
    if not isinstance(tuner, FineTuner):
        raise ConfigError(f"Expected tuner to be a transferkit.FineTuner. Received: tuner={tuner!r}.")
    if not isinstance(data, ImageData):
        raise ConfigError("Expected data to be a transferkit.ImageData (from transferkit.load_folder or another "
                          f"loader), whose validation split the report evaluates on. Received: data={data!r}.")
    cluster = cluster_spec()
    if cluster is not None and not isinstance(tuner.strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise ConfigError(
            "TF_CONFIG names a cluster, but this FineTuner does not train with its MultiWorkerMirroredStrategy: every "
            "task would train alone. Run `transferkit train` with that TF_CONFIG on every task (it creates the "
            "strategy before anything else and trains with it), or unset TF_CONFIG to train in one process.")
    written = cluster is None or is_chief(cluster)
    # a worker other than the chief runs every step the chief runs (they train in step), in a
    # folder of its own that nobody reads
    folder = Path(out) if written else Path(tempfile.mkdtemp(prefix="transferkit-worker-"))
    try:
        resumed_from, metrics = _train_into(tuner, data, folder, restart=restart, callbacks=callbacks,
                                            verbose=verbose, on_start=on_start, cluster=cluster,
                                            timeout=cluster_timeout)
    except CLUSTER_ERRORS as error:
        if cluster is None:
            raise
        raise lost_task(error, cluster) from None
    finally:
        if not written:
            shutil.rmtree(folder, ignore_errors=True)
    return RunFolder(path=Path(out), written=written, resumed_from=resumed_from, metrics=metrics)


def _train_into(tuner: FineTuner, data: ImageData, folder: Path, *, restart: bool, callbacks: Callbacks,
                verbose: Verbose, on_start: Callable[[str | None], object] | None, cluster: dict[str, Any] | None,
                timeout: float) -> tuple[str | None, dict[str, Any]]:
    with RunLock(folder):
        remove_stale_temporaries(folder)  # every temporary in a folder we hold belongs to a writer that died
        checkpoint = checkpoint_folder(folder)
        if cluster is None:
            resumed_from = None if restart else tuner.resume_point(checkpoint, data)
        else:
            resumed_from = _chiefs_checkpoint(tuner, data, checkpoint, restart=restart, cluster=cluster,
                                              timeout=timeout)
        if resumed_from is not None:
            log.info("Resuming from %s (checkpoint in %s)", resumed_from, checkpoint)
        if on_start is not None:
            on_start(resumed_from)
        tuner.fit(data, checkpoint_dir=checkpoint, restart=restart, callbacks=callbacks, verbose=verbose)
        tuner.save(folder)
        metrics = tuner.write_report(data, folder)
        (checkpoint / STATE_FILE).unlink(missing_ok=True)  # first: a kill while deleting leaves no stale state
        shutil.rmtree(checkpoint, ignore_errors=True)
        if cluster is not None:
            _written_by_chief(cluster, timeout)
    return resumed_from, metrics


def _written_by_chief(cluster: dict[str, Any], timeout: float) -> None:
    """The others end only once the chief has written the run: a chief lost while writing it is an
    error on every task (the rerun resumes from its checkpoint). The chief's run is written by
    then, whatever became of the others."""
    if not is_chief(cluster):
        broadcast(None, cluster, timeout=timeout)
        return
    try:
        broadcast(b"written", cluster, timeout=timeout)
    except CLUSTER_ERRORS:
        log.warning("The rest of the cluster (%s) was lost after the chief wrote the run; the run is complete.",
                    others(cluster))


def _chiefs_checkpoint(tuner: FineTuner, data: ImageData, checkpoint: Path, *, restart: bool,
                       cluster: dict[str, Any], timeout: float) -> str | None:
    """Give every task of the cluster the chief's checkpoint, and return where the fit resumes.

    The chief checks its checkpoint against the settings and data (a refusal is sent to the
    others too, so that none waits for a chief that has stopped) and broadcasts its files; the
    others write them into their own checkpoint folder. The chief's files are the truth: a worker
    that had a checkpoint of its own (its scratch folder is new on every start) could not know
    whether it is the chief's.
    """
    if is_chief(cluster):
        try:
            resumed_from = None if restart else tuner.resume_point(checkpoint, data)
        except TransferkitError as error:
            broadcast(pack({"refused": str(error)}), cluster, timeout=timeout)
            raise
        shared = checkpoint if resumed_from is not None else None
        broadcast(pack({"resumed_from": resumed_from}, shared), cluster, timeout=timeout)
        return resumed_from
    # stamped with this worker's own fingerprint of the settings and data (the chief checked its own)
    header = unpack(broadcast(None, cluster, timeout=timeout), checkpoint, tuner._fingerprint(data, None))
    if "refused" in header:
        raise ConfigError(f"The chief stopped: {header['refused']}")
    return header["resumed_from"]  # type: ignore[no-any-return]
