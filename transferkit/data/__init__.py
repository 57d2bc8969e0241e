"""The lower-level pieces behind the loaders: decoding, file lists, splits, pipelines.

The loaders themselves (:func:`transferkit.load_folder`, :func:`transferkit.load_csv`,
:func:`transferkit.from_arrays`, :func:`transferkit.from_files`) and what they return live at the
top level. This namespace is for building your own pipeline from the same parts.

Example:
    >>> import transferkit as tk
    >>> from transferkit.data import load_image, make_dataset
    >>> pixels = load_image("cat.jpg", image_size=224)          # uint8, EXIF-upright, alpha composited
    >>> batches = make_dataset(tk.scan_folder("photos"), image_size=224, training=True)
"""

from transferkit._public import publish as _publish
from transferkit.data._images import (
    IMAGE_EXTENSIONS,
    RESIZE_MODES,
    as_image_batch,
    check_image,
    find_bad_images,
    load_image,
    read_image,
    resize_image,
)
from transferkit.data._pipelines import make_dataset
from transferkit.data._sources import find_images
from transferkit.data._splits import class_weights

__all__ = [
    "IMAGE_EXTENSIONS",
    "RESIZE_MODES",
    "as_image_batch",
    "check_image",
    "class_weights",
    "find_bad_images",
    "find_images",
    "load_image",
    "make_dataset",
    "read_image",
    "resize_image",
]

_publish(__name__, globals(), __all__)
