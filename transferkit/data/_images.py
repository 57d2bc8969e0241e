"""Decoding image files so that what a person sees is what the network gets.

Images are decoded with Pillow: EXIF orientation is honoured; grayscale, palette, CMYK and
16-bit images become RGB; transparent pixels are composited onto a background colour instead of
having their alpha dropped. Arrays of pixels go through the same rules in :func:`as_image_batch`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transferkit._errors import DataError, check_choice
from transferkit._types import Color, PathLike

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
RESIZE_MODES = ("pad", "stretch", "crop")
WHITE: Color = (255, 255, 255)


def _to_rgb(image: Image.Image, background: Color) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I") and array.max(initial=0) > 255 else 255.0
        if image.mode == "F" and array.max(initial=0) <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


def _decode(path: PathLike, background: Color) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image), background)


def read_image(path: PathLike, *, background: Color = WHITE) -> Image.Image:
    """Open ``path`` as an upright RGB image (EXIF rotation applied, alpha composited).

    Raises:
        DataError: the file cannot be decoded (the message names it and says why).
    """
    try:
        return _decode(path, background)
    except _DECODE_ERRORS as error:
        raise DataError(f"Cannot read image {str(path)!r}: {_reason(path, error)}") from None


def _reason(path: PathLike, error: BaseException) -> str:
    if os.path.exists(path) and os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    if isinstance(error, UnidentifiedImageError):
        return "not an image (Pillow does not recognise the format)"
    if isinstance(error, FileNotFoundError):
        return "file not found"
    return f"corrupt or truncated ({error})"


def resize_image(image: Image.Image, size: int, *, mode: str = "pad", background: Color = WHITE) -> np.ndarray:
    """Resize to ``size × size`` and return a uint8 array.

    Modes: ``"pad"`` keeps the aspect ratio and fills the borders with ``background``;
    ``"stretch"`` resizes each side independently; ``"crop"`` keeps the aspect ratio and
    crops the centre.
    """
    check_choice("resize", mode, RESIZE_MODES)
    resample = Image.Resampling.BILINEAR
    if mode == "stretch":
        out = image.resize((size, size), resample)
    elif mode == "crop":
        out = ImageOps.fit(image, (size, size), method=resample)
    else:
        scale = size / max(image.size)
        w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        out = Image.new("RGB", (size, size), background)
        out.paste(image.resize((w, h), resample), ((size - w) // 2, (size - h) // 2))
    return np.asarray(out, dtype=np.uint8)


def load_image(
    path: PathLike, *, image_size: int, resize: str = "pad", background: Color = WHITE
) -> np.ndarray:
    """Read and resize one image file to a ``(image_size, image_size, 3)`` uint8 array."""
    return resize_image(read_image(path, background=background), image_size, mode=resize, background=background)


def check_image(path: PathLike) -> str | None:
    """Why ``path`` cannot be used as an image, or ``None`` if it decodes fully."""
    try:
        _decode(path, WHITE)
    except _DECODE_ERRORS as error:
        return _reason(path, error)
    return None


def find_bad_images(
    paths: Sequence[str], *, workers: int | None = None, progress: bool = False
) -> list[tuple[str, str]]:
    """Decode every file (in parallel threads) and return ``(path, reason)`` for each failure.

    ``progress=True`` shows a progress bar (useful for thousands of files).
    """
    if not paths:
        return []
    bar = keras.utils.Progbar(len(paths), unit_name="image") if progress else None
    reasons: list[str | None] = []
    with ThreadPoolExecutor(max_workers=workers or min(16, 2 * (os.cpu_count() or 1))) as pool:
        for reason in pool.map(check_image, paths):
            reasons.append(reason)
            if bar is not None and (len(reasons) % 50 == 0 or len(reasons) == len(paths)):
                bar.update(len(reasons))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def as_image_batch(images: object, *, channels: tuple[int, ...] = (3,)) -> np.ndarray:
    """``images`` as a 4-D ``(n, height, width, channels)`` array; one image gets a batch axis.

    Accepts ``(h, w, c)`` or ``(n, h, w, c)`` with ``c`` in ``channels``; when 1 is allowed,
    ``(n, h, w)`` grayscale stacks are accepted too.

    Raises:
        DataError: any other shape (the message says which shapes are accepted).
    """
    array = np.asarray(images)
    if array.ndim == 3 and array.shape[-1] in channels and 1 not in channels:
        array = array[None]  # one image
    elif array.ndim == 3 and 1 in channels:
        array = array[..., None]  # a grayscale stack
    accepted = "|".join(str(c) for c in channels)
    if array.ndim != 4 or array.shape[-1] not in channels:
        single = "(n, height, width)" if 1 in channels else "(height, width, 3)"
        raise DataError(
            f"Expected images of shape {single} or (n, height, width, {accepted}). Received: {array.shape}."
        )
    return array
