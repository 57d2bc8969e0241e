"""Odd images: far from the other images in feature space, or unusable as pictures.

:func:`feature_outliers` scores each image by its distance to its nearest neighbours in backbone
feature space. Distances are cosine distances, ``1 - cos(a, b)`` of the two feature vectors (0 for
the same direction, 1 for unrelated, at most 2). For an image:

- ``own`` is the mean cosine distance to its ``k`` nearest other images *with the same label*;
- ``any`` is the mean cosine distance to its ``k`` nearest other images, whatever their label;
- the score is the mean of the two (``any`` alone when the image is the only one of its label).

An image far from everything (off-topic, a corrupt-looking render) scores high on both; one that
sits among another class scores high on ``own`` only — the label-issue search
(:mod:`transferkit._review._confident`) is the sharper tool for those. Higher = odder. A near
duplicate is a neighbour at distance about 0, so an odd image that appears twice scores lower.
The neighbours are found block by block, like near duplicates: memory stays at ``block²``
similarities.

:func:`image_problems` looks at the pictures themselves: too small to say much (shorter side below
32 pixels by default), or blank / nearly uniform (the standard deviation of the pixel values, 0–255,
below 3 by default — a uniform colour, or JPEG noise on one), plus files that cannot be read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from transferkit._errors import ConfigError, DataError
from transferkit._review._duplicates import BLOCK, normalized

MIN_SIDE = 32
MIN_STD = 3.0
K = 5


def _nearest_mean_similarity(x: np.ndarray, k: int, block: int) -> np.ndarray:
    """For each row of ``x`` (unit rows), the mean cosine similarity of its ``k`` most similar other rows.

    ``nan`` for every row when ``x`` has a single row; fewer than ``k`` neighbours when fewer exist.
    """
    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        return np.full(n, np.nan)
    result = np.empty(n)
    for start in range(0, n, block):
        stop = min(start + block, n)
        best = np.full((stop - start, k), -np.inf, dtype=np.float32)
        for column in range(0, n, block):
            end = min(column + block, n)
            similarity = x[start:stop] @ x[column:end].T
            overlap = np.arange(max(start, column), min(stop, end))
            similarity[overlap - start, overlap - column] = -np.inf  # not its own neighbour
            candidates = np.concatenate([best, similarity], axis=1)
            best = -np.partition(-candidates, k - 1, axis=1)[:, :k]
        result[start:stop] = np.minimum(best.astype(np.float64), 1.0).mean(axis=1)
    return result


def neighbour_distances(features: np.ndarray, labels: np.ndarray, *, k: int = K,
                        block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Each image's mean cosine distance to its ``k`` nearest neighbours of its own label and of any label.

    Args:
        features: ``(n, dim)`` backbone features, one row per image.
        labels: ``(n,)`` integer labels.
        k: Neighbours to average (fewer where fewer other images exist).
        block: Rows per block of the computation.

    Returns:
        ``(own, any)``: two ``(n,)`` float64 arrays of distances from 0 to 2; ``own`` is ``nan``
        for an image that is the only one of its label.

    Raises:
        DataError: features not 2-D or not finite, labels of the wrong length.
        ConfigError: ``k`` or ``block`` below 1.
    """
    if int(k) < 1:
        raise ConfigError(f"Expected k to be at least 1 neighbour. Received: k={k!r}.")
    if int(block) < 1:
        raise ConfigError(f"Expected block to be a positive number of rows. Received: block={block!r}.")
    x = normalized(features, "features")
    y = np.asarray(labels)
    if y.shape != (len(x),):
        raise DataError(f"Expected labels of shape ({len(x)},), one per row of features. Received: {y.shape}.")
    any_label = 1.0 - _nearest_mean_similarity(x, int(k), int(block))
    own = np.full(len(x), np.nan)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        own[members] = 1.0 - _nearest_mean_similarity(x[members], int(k), int(block))
    return own, any_label


def feature_outliers(features: np.ndarray, labels: np.ndarray, *, k: int = K, block: int = BLOCK) -> np.ndarray:
    """How odd each image is in feature space: higher = odder, 0 to 2.

    The score is the mean of the image's mean cosine distance to its ``k`` nearest neighbours with
    its own label and to its ``k`` nearest neighbours of any label (the latter alone for the only
    image of a label); see the module's documentation and :func:`neighbour_distances`.

    Args:
        features: ``(n, dim)`` backbone features, one row per image.
        labels: ``(n,)`` integer labels.
        k: Neighbours to average.
        block: Rows per block of the computation (memory: ``block²`` float32 similarities).

    Returns:
        ``(n,)`` float64 scores.
    """
    own, any_label = neighbour_distances(features, labels, k=k, block=block)
    return np.where(np.isnan(own), any_label, 0.5 * (own + any_label))


def _pixels(item: object, background: tuple[int, int, int], side: int) -> np.ndarray:
    """The item's pixels as an ``(h, w, c)`` float64 array; a path is decoded as training decodes it."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        from transferkit.data._images import _decode, _reason

        try:
            image = _decode(item, background, side=side)
        except Exception as error:  # every decoder failure becomes a reason
            raise DataError(f"cannot be read: {_reason(item, error)}") from None
        return np.asarray(image, dtype=np.float64)
    if isinstance(item, Image.Image):
        item = item.convert("RGB")
    array = np.asarray(item)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ConfigError(f"Expected each image as a path, a PIL image or an array of shape (height, width), "
                          f"(height, width, 1|3|4). Received a {type(item).__name__} of shape {array.shape}.")
    return array[..., :3].astype(np.float64)


def image_problems(images: object, *, min_side: int = MIN_SIDE, min_std: float = MIN_STD,
                   background: tuple[int, int, int] = (255, 255, 255)) -> list[tuple[int, str]]:
    """The images that are too small, blank or nearly uniform, or unreadable, with the reason.

    Args:
        images: Paths, PIL images or pixel arrays (``(h, w)``, ``(h, w, c)``; values 0–255), as a
            sequence, or one ``(n, h, w, c)`` array. Paths are decoded as training decodes them
            (EXIF rotation, transparency composited onto ``background``), reduced to a size that
            keeps both sides of a large image at least ``max(64, 2 * min_side)``.
        min_side: Images whose shorter side (pixels) is below this, and below half the median shorter
            side of ``images``, are too small (a set of small images is not flagged whole).
        min_std: Images whose pixel values (all channels together, 0–255) have a standard deviation
            below this are blank or nearly uniform.
        background: The colour transparent pixels are composited onto.

    Returns:
        ``(index, reason)`` for each image with a problem, in the order given: its position in
        ``images`` and what is wrong in words (several reasons joined by ``"; "``; an unreadable
        file's reason starts with ``"cannot be read: "``).

    Raises:
        ConfigError: ``min_side`` below 1 or ``min_std`` negative, or an item that is not an image.
    """
    if int(min_side) < 1:
        raise ConfigError(f"Expected min_side to be at least 1 pixel. Received: min_side={min_side!r}.")
    if float(min_std) < 0:
        raise ConfigError(f"Expected min_std to be 0 or more. Received: min_std={min_std!r}.")
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    elif isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype != object:
        images = [images]  # one image
    items: Sequence[object] = list(images)  # type: ignore[call-overload]
    side = max(64, 2 * int(min_side))
    read: list[tuple[int, tuple[int, int, float] | None, str]] = []  # (height, width, spread): no pixels kept
    for index, item in enumerate(items):
        try:
            pixels = _pixels(item, background, side)
        except DataError as error:
            read.append((index, None, str(error)))
            continue
        read.append((index, (*pixels.shape[:2], float(pixels.std()) if pixels.size else 0.0), ""))
    shorter = [min(seen[:2]) for _, seen, _ in read if seen is not None]
    # small against the data as well: in a set of 28-pixel images, none is too small for being 28 pixels
    limit = min(int(min_side), float(np.median(shorter)) / 2) if shorter else int(min_side)
    problems: list[tuple[int, str]] = []
    for index, seen, unreadable in read:
        if seen is None:
            problems.append((index, unreadable))
            continue
        reasons = []
        height, width, spread = seen
        if min(height, width) < limit:
            reasons.append(f"too small ({width}×{height} pixels; the shorter side is below {limit:g})")
        if spread < min_std:
            reasons.append(f"blank or nearly uniform (pixel standard deviation {spread:.2g}, below {min_std:g})")
        if reasons:
            problems.append((index, "; ".join(reasons)))
    return problems
