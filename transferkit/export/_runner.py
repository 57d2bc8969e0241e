"""What every format's runner is: an export loaded in its own runtime, called on raw pixel batches.

Verification runs an export through its runner beside the Keras model, and
:func:`~transferkit.export.load_exported` predicts through the same runner, so that what the report
measured is what a user gets. Also the few helpers the runtimes share.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from importlib import metadata
from typing import Any, Protocol

import numpy as np
import tensorflow as tf


class Runner(Protocol):
    """An export in its own runtime (TensorFlow, LiteRT, ONNX Runtime, ``hub.load``).

    Each format's runner class is built from the export's path and implements this protocol.

    Attributes:
        runtime: What runs the export, with its version (``"onnxruntime 1.32.0 (CPUExecutionProvider)"``).
    """

    runtime: str

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """The outputs (probabilities) for a batch of raw RGB pixels, float32 ``[n, size, size, 3]`` in 0–255."""
        ...

    def details(self, key: str) -> dict[str, Any]:
        """Name, dtype and shape of the ``"input"`` or the ``"output"`` (and whatever else the format knows)."""
        ...

    def metadata(self) -> dict[str, str]:
        """Key–value metadata stored in the export itself (an ONNX file's ``metadata_props``); ``{}`` if none."""
        ...


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """TensorFlow's Python logger at errors only (loaders and converters log deprecation notices)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def version(package: str) -> str:
    """The installed version of ``package``, for the report's ``runtime``."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def first_line(error: BaseException) -> str:
    """The first line of a converter's or runtime's error (they can be pages long), or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
