"""Names for the shapes of values that cross transferkit's public functions.

They exist for readers and type checkers; at run time every function still checks what it gets
and says what it expected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Union

if TYPE_CHECKING:
    import keras

PathLike = Union[str, "os.PathLike[str]"]
"""A file or folder path."""

Weights = Union[str, "os.PathLike[str]", None]
"""``"imagenet"``, ``None`` (random) or the path of a weights file."""

Color = tuple[int, int, int]
"""An RGB colour, each channel 0–255."""

History = dict[str, list[float]]
"""One phase's Keras history: metric name → value per epoch."""

Verbose = int | Literal["auto"]
"""Keras' ``verbose``: ``"auto"``, 0 (silent), 1 (progress bar) or 2 (one line per epoch)."""

Callbacks = Sequence["keras.callbacks.Callback"]
"""Keras callbacks passed through to ``model.fit``."""
