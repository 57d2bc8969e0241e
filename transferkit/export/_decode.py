"""Encoded image files decoded and fitted to the model's input in TensorFlow ops, as transferkit's loader does it.

A SavedModel's ``serving_bytes`` signature runs :func:`decode_image_bytes` inside the graph, so that
a server takes the files themselves and gives the probabilities the run would give.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from transferkit._errors import check_choice
from transferkit._types import Color
from transferkit.data._images import RESIZE_MODES, WHITE


def decode_image_bytes(data: tf.Tensor, *, image_size: int, resize: str = "pad",
                       background: Color = WHITE) -> tf.Tensor:
    """Decode one encoded image (a scalar string tensor) into float32 pixels ``[size, size, 3]``, in TF ops.

    The graph version of :func:`transferkit.data.load_image`, as the ``serving_bytes`` signature
    runs it, step by step: a large JPEG is decoded at 1/2, 1/4 or 1/8 scale as Pillow's draft mode
    does it (accurate integer DCT); its EXIF orientation is applied; PNG, GIF (first frame), BMP
    and WebP are decoded whole; grayscale becomes RGB and an alpha channel is composited onto
    ``background``; an image still at least twice ``image_size`` by a whole factor is shrunk by
    that factor (box average); then ``"pad"`` (keep the aspect ratio, fill the borders with
    ``background``), ``"stretch"`` or ``"crop"`` (centre square) with an antialiased bilinear
    filter, rounded to whole pixel values.

    What remains different from the loader: Pillow resamples in fixed point, one axis at a time,
    so pixel values differ by a level or two (see docs/export.md for measured figures); EXIF
    orientation is read from JPEGs only; a PNG transparency chunk without an alpha channel
    (``tRNS``) is ignored; 16-bit PNGs are scaled to 8 bits by TensorFlow's rule.

    Example:
        >>> pixels = decode_image_bytes(tf.io.read_file("cat.jpg"), image_size=224)
    """
    check_choice("resize", resize, RESIZE_MODES)
    fill = tf.constant([float(c) for c in background], tf.float32)
    side = 2 * image_size  # the loader decodes large images at no less than twice the input size

    def jpeg() -> tf.Tensor:
        shape = tf.image.extract_jpeg_shape(data)
        scale = tf.minimum(shape[0] // side, shape[1] // side)
        ratio = tf.where(scale >= 8, 3, tf.where(scale >= 4, 2, tf.where(scale >= 2, 1, 0)))
        decoders = [functools.partial(tf.io.decode_jpeg, data, channels=3, ratio=r, dct_method="INTEGER_ACCURATE")
                    for r in (1, 2, 4, 8)]
        image = tf.cast(tf.switch_case(ratio, decoders), tf.float32)
        return _orient(_reduce(image, side), _exif_orientation(data))

    def other() -> tf.Tensor:
        image = tf.cast(tf.io.decode_image(data, channels=0, expand_animations=False), tf.float32)
        channels = tf.shape(image)[-1]
        color = tf.cond(channels < 3, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3])
        alpha = tf.cond(channels % 2 == 0, lambda: image[..., -1:] / 255.0, lambda: tf.ones_like(image[..., :1]))
        return _reduce(tf.round(color * alpha + fill * (1.0 - alpha)), side)

    image = tf.ensure_shape(tf.cond(tf.io.is_jpeg(data), jpeg, other), [None, None, 3])
    return _fit(image, image_size, resize, fill)


def _reduce(image: tf.Tensor, side: int) -> tf.Tensor:
    """``Image.reduce``: shrink by the whole factor that keeps both sides at least ``side`` (box average,
    partial boxes at the right and bottom edges), if that factor is 2 or more."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    factor = tf.minimum(height, width) // side

    def box() -> tf.Tensor:
        padding = [[0, (-height) % factor], [0, (-width) % factor], [0, 0]]

        def sums(x: tf.Tensor) -> tf.Tensor:
            x = tf.pad(x, padding)
            size = tf.shape(x)
            return tf.reduce_sum(tf.reshape(x, [size[0] // factor, factor, size[1] // factor, factor, size[2]]),
                                 axis=[1, 3])

        return tf.floor(sums(image) / sums(tf.ones_like(image[..., :1])) + 0.5)

    return tf.cond(factor >= 2, box, lambda: image)


_EXIF_WINDOW = 65536  # an EXIF block is one JPEG APP1 segment: at most 64 KiB, near the start of the file
_EXIF_ENTRIES = 64  # IFD0 entries looked at for the orientation tag (cameras write a dozen or so)


def _exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1–8) of a JPEG, or 1 when it has none or the EXIF block cannot be read.

    Reads the TIFF header after ``Exif\0\0`` into a fixed, zero-padded window, so that a truncated
    or corrupt block gives 1 instead of an error, as Pillow's loader treats it.
    """
    parts = tf.strings.split(tf.strings.substr(data, 0, _EXIF_WINDOW), sep="Exif\x00\x00", maxsplit=1)
    tiff = tf.concat([parts, [""]], axis=0)[1]
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(tiff, 0, _EXIF_WINDOW), tf.uint8), tf.int64)
    raw = tf.pad(raw, [[0, _EXIF_WINDOW - tf.shape(raw)[0]]])
    little = tf.logical_and(tf.equal(raw[0], 0x49), tf.equal(raw[1], 0x49))  # "II": Intel byte order

    def number(position: tf.Tensor, size: int) -> tf.Tensor:
        position = tf.clip_by_value(position, 0, _EXIF_WINDOW - size)
        digits = [tf.gather(raw, position + i) for i in range(size)]
        value_little = tf.add_n([d * 256 ** i for i, d in enumerate(digits)])
        value_big = tf.add_n([d * 256 ** (size - 1 - i) for i, d in enumerate(digits)])
        return tf.where(little, value_little, value_big)

    valid_header = tf.equal(number(tf.constant(2, tf.int64), 2), 42)
    directory = number(tf.constant(4, tf.int64), 4)
    count = number(directory, 2)
    entries = directory + 2 + 12 * tf.range(_EXIF_ENTRIES, dtype=tf.int64)
    found = (tf.range(_EXIF_ENTRIES, dtype=tf.int64) < count) & tf.equal(number(entries, 2), 0x0112)
    found &= (entries + 12 <= _EXIF_WINDOW) & valid_header
    orientation = tf.reduce_max(tf.where(found, number(entries + 8, 2), 0))
    return tf.where((orientation >= 1) & (orientation <= 8), orientation, 1)


def _orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turn stored pixels upright as ``PIL.ImageOps.exif_transpose`` does for EXIF orientations 1–8."""
    turns = [
        lambda: image,
        lambda: tf.image.flip_left_right(image),
        lambda: tf.image.rot90(image, 2),
        lambda: tf.image.flip_up_down(image),
        lambda: tf.image.transpose(image),
        lambda: tf.image.rot90(image, 3),
        lambda: tf.image.rot90(tf.image.transpose(image), 2),
        lambda: tf.image.rot90(image, 1),
    ]
    return tf.switch_case(tf.cast(orientation - 1, tf.int32), turns)


def _fit(image: tf.Tensor, size: int, resize: str, fill: tf.Tensor) -> tf.Tensor:
    """``image`` fitted to ``size × size`` as :func:`transferkit.data.resize_image` does it."""
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    if resize == "stretch":
        out = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    elif resize == "crop":
        # ImageOps.fit: the centred square of side min(height, width), which may start half a pixel in
        side = tf.minimum(height, width)
        scale = tf.cast(size / side, tf.float32)
        top, left = tf.cast((height - side) / 2, tf.float32), tf.cast((width - side) / 2, tf.float32)
        out = tf.raw_ops.ScaleAndTranslate(
            images=image[None], size=tf.constant([size, size]), scale=tf.stack([scale, scale]),
            translation=tf.stack([-top * scale, -left * scale]), kernel_type="triangle", antialias=True)[0]
    else:
        scale = size / tf.maximum(height, width)
        # Python's round() and tf.round both round halves to even, so the sizes match the loader's
        new_height = tf.cast(tf.maximum(tf.round(height * scale), 1.0), tf.int32)
        new_width = tf.cast(tf.maximum(tf.round(width * scale), 1.0), tf.int32)
        resized = tf.image.resize(image, tf.stack([new_height, new_width]), method="bilinear", antialias=True)
        resized = tf.clip_by_value(tf.round(resized), 0.0, 255.0)
        top, left = (size - new_height) // 2, (size - new_width) // 2
        padding = tf.stack([tf.stack([top, size - new_height - top]), tf.stack([left, size - new_width - left]),
                            tf.zeros([2], tf.int32)])
        out = tf.pad(resized - fill, padding) + fill
    return tf.ensure_shape(tf.clip_by_value(tf.round(out), 0.0, 255.0), [size, size, 3])
