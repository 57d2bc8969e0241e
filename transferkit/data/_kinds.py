"""Names for the kinds of image data that the training, evaluation and prediction calls accept.

They live with the loaders because they name the loaders' value, :class:`ImageData`; the ground
layer (``transferkit._types``) knows nothing of it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    import numpy as np
    import tensorflow as tf

    from transferkit.data._loaders import ImageData

TrainData = Union["ImageData", "tf.data.Dataset", str, "os.PathLike[str]"]
"""What a training phase accepts: a loader's ImageData, ``(images, labels)`` batches, or a class folder."""

ValidationData = Union["ImageData", "tf.data.Dataset"]
"""Validation batches: a dataset of ``(images, labels)``, or ImageData (its validation split)."""

EvalData = Union["ImageData", "tf.data.Dataset", str, "os.PathLike[str]"]
"""What :meth:`FineTuner.evaluate` accepts: ImageData (its validation split), batches, or a class folder."""

Images = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]], "np.ndarray", "tf.data.Dataset"]
"""What :meth:`FineTuner.predict` accepts: a file, a folder, a list of files, raw pixels, or image batches."""
