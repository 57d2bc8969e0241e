"""Decoding image files so that what a person sees is what the network gets.

Images are decoded with Pillow: EXIF orientation is honoured; grayscale, palette, CMYK, YCCK and
16-bit images become RGB; transparent pixels (alpha channels and PNG transparency chunks) are
composited onto a background colour instead of having their alpha dropped; animated and
multi-page files give their first frame. Arrays of pixels go through the same rules in
:func:`as_image_batch`.

Memory stays bounded: an image whose declared size is above Pillow's decompression-bomb limit
(twice ``PIL.Image.MAX_IMAGE_PIXELS``, where Pillow raises) is refused before any pixel is
decoded, JPEGs are decoded at a reduced scale (``Image.draft``) when they are much larger than
needed, and other large images are reduced (``Image.reduce``) before the colour conversions copy
them (or, for palette, transparent and 16-bit images, once composited).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transferkit._errors import DataError, check_choice
from transferkit._types import Color, PathLike

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
RESIZE_MODES = ("pad", "stretch", "crop")
WHITE: Color = (255, 255, 255)

# Checking a file decodes every byte of it, but a JPEG can be decoded at 1/8 scale for that, and
# the pixels are thrown away: checking is cheap in time and memory even for very large photos.
_CHECK_SIDE = 256

# Modes that Image.reduce averages correctly (palette indices and 1-bit pixels cannot be averaged,
# and straight alpha is composited before it is reduced).
_REDUCIBLE = ("L", "RGB", "RGBX", "CMYK", "YCbCr", "I", "F")


class _Unusable(Exception):
    """A file that is not an image we can use, with the reason in words."""


def printable(text: str) -> str:
    """``text`` safe to print or write as UTF-8: bytes of a file name that are not UTF-8 (which
    Python keeps as lone surrogates) become ``\\xe9``-style escapes."""
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def unreadable_reason(path: PathLike) -> str | None:
    """Why ``path`` is not a readable regular file (missing, a broken or looping link, a folder,
    a device or pipe), or ``None`` if it is one. Never opens the file, so a pipe cannot hang it."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symbolic link (its target {printable(os.readlink(path))!r} does not exist)"
        return "file not found"
    except ValueError:  # a NUL byte in the path
        return "file not found (the path contains a NUL byte)"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"cannot be read ({error.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return "a folder, not a file"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a pipe, socket or device)"
    return None


def _too_large(pixels: int | None, limit: int | None, size: tuple[int, int] | None = None) -> str:
    declared = f"{size[0]}×{size[1]} = " if size else ""
    declared += f"{pixels:,} pixels, " if pixels else ""
    return (f"too large ({declared}above the decompression-bomb limit of {limit or 0:,} pixels; "
            "raise PIL.Image.MAX_IMAGE_PIXELS if the image is genuine)")


def _check_size(image: Image.Image) -> None:
    """Refuse what Pillow itself refuses: more than twice ``MAX_IMAGE_PIXELS`` (between one and two
    times it Pillow only warns, and a 108-megapixel phone photo is genuine)."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > 2 * limit:
        raise _Unusable(_too_large(width * height, 2 * limit, (width, height)))


def _reduced(image: Image.Image, side: int | None) -> Image.Image:
    """``image`` shrunk by a whole factor while both sides stay at least ``side`` (box average)."""
    if side is None or "transparency" in image.info:
        return image
    factor = min(image.size) // side
    if factor < 2:
        return image
    if image.mode.startswith("I;16"):
        image = image.convert("I")
    return image.reduce(factor) if image.mode in _REDUCIBLE else image


def _upright(image: Image.Image) -> Image.Image:
    with contextlib.suppress(Exception):  # unreadable EXIF: the pixels are still fine, use them as stored
        ImageOps.exif_transpose(image, in_place=True)
    return image


def _to_rgb(image: Image.Image, background: Color) -> Image.Image:
    transparency = image.info.get("transparency")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raw = np.asarray(image)
        array = raw.astype(np.float64)
        top = 65535.0 if image.mode.startswith("I") and array.max(initial=0) > 255 else 255.0
        if image.mode == "F" and array.max(initial=0) <= 1.0:
            top = 1.0
        gray = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), mode="L")
        if isinstance(transparency, int) and image.mode != "F":  # a PNG tRNS chunk: one transparent value
            alpha = Image.fromarray(np.where(raw == transparency, 0, 255).astype(np.uint8), mode="L")
            image = Image.merge("LA", (gray, alpha))
        else:
            image = gray
    elif transparency is not None and image.mode in ("P", "L", "RGB", "1"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def _decode(path: PathLike, background: Color, side: int | None = None) -> Image.Image:
    """Upright RGB pixels of the first frame; with ``side``, possibly reduced (both sides ≥ ``side``)."""
    reason = unreadable_reason(path)
    if reason is not None:
        raise _Unusable(reason)
    with Image.open(path) as image:
        _check_size(image)
        if side is not None:
            image.draft(None, (side, side))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale
        image.load()
        rgb = _to_rgb(_upright(_reduced(image, side)), background)
    return _reduced(rgb, side)  # images with transparency shrink once composited


def _reason(path: PathLike, error: BaseException) -> str:
    if isinstance(error, _Unusable):
        return str(error)
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        return _too_large(int(pixels.group(1)) if pixels else None, 2 * (Image.MAX_IMAGE_PIXELS or 0))
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except (OSError, ValueError):
        pass
    if isinstance(error, UnidentifiedImageError):
        return "not an image (Pillow does not recognise the format)"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, MemoryError):
        return "too large to decode in the memory available"
    if isinstance(error, (OSError, SyntaxError, ValueError, EOFError)):
        return f"corrupt or truncated ({error})"
    return f"cannot be decoded ({type(error).__name__}: {error})"


def read_image(path: PathLike, *, background: Color = WHITE) -> Image.Image:
    """Open ``path`` as an upright RGB image at full size (first frame, EXIF rotation applied,
    transparency composited onto ``background``).

    Raises:
        DataError: the file cannot be used (the message names it and says why: missing, empty,
            not an image, corrupt, too large …).
    """
    try:
        return _decode(path, background)
    except Exception as error:  # any decoder failure: one named, explained DataError
        raise DataError(f"Cannot read image {printable(str(path))!r}: {_reason(path, error)}") from None


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
    """Read and resize one image file to a ``(image_size, image_size, 3)`` uint8 array.

    Training, evaluation and prediction all read files through this function. A large image is
    decoded at a reduced size (never below twice ``image_size`` on either side), so a 50-megapixel
    photo costs a few megabytes, not hundreds.
    """
    try:
        image = _decode(path, background, side=2 * image_size)
    except Exception as error:
        raise DataError(f"Cannot read image {printable(str(path))!r}: {_reason(path, error)}") from None
    return resize_image(image, image_size, mode=resize, background=background)


def check_image(path: PathLike) -> str | None:
    """Why ``path`` cannot be used as an image, or ``None`` if it decodes fully."""
    try:
        _decode(path, WHITE, side=_CHECK_SIDE)
    except Exception as error:  # every failure becomes a reason, never a traceback
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
