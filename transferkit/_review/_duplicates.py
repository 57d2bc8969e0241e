"""Near-duplicate images: pairs whose backbone embeddings point the same way.

The similarity of two images is the cosine of their embeddings (each row L2-normalised, then a
dot product): 1 for the same direction, 0 for unrelated directions. It is computed block by block
(``block × block`` similarities at a time, float32), so memory stays at a few tens of megabytes
whatever the number of images: 100,000 images of 1,000 features need the embeddings (400 MB) and
one 2048 × 2048 block (16 MB); the time is that of ``n² · dim / 2`` multiply-adds.

What the default threshold 0.90 means, measured on real pretrained features (MobileNet v1 ImageNet
weights, global average pooling, the 167 photos of ``../shared/data/stamps5`` read as training reads
them; ``test_real_copies_score_above_the_default_threshold_and_different_photos_below`` checks it):

- an exact copy scores 1.0;
- copies re-encoded as JPEG at quality 90, resized to 75 % or 200 %, cropped by 3 % or 5 % on each
  side, or mirrored all scored at least 0.916 (medians 0.95 to 0.996);
- JPEG at quality 75 scored at least 0.954 on photos whose shorter side is at least 224 pixels, but
  down to 0.855 on tiny ones (46 pixels, enlarged 5 times by the network's input); resizing to half
  scored at least 0.950 on the large photos, down to 0.83 on tiny ones;
- of the 13,861 pairs of different photos one scored above 0.90 (0.990: the same apple drawing in
  green and in red, a recoloured copy), the next 0.876, and 99.9 % of them below 0.81.

0.95 missed half of the 5 % crops and a quarter of the quality-75 JPEGs. Heavier edits (10 % crops,
rotations) fall below 0.90: lower the threshold to find them, at the price of pairs of merely
similar photos (two different oranges score about 0.87). Other backbones spread their similarities
differently; measure before trusting a threshold on another one.

Leaks across two folders (:func:`leaks`) are also found a little below the threshold, where a
threshold alone cannot tell a copy from a look-alike: a pair from ``threshold - LEAK_MARGIN`` (0.80)
counts when the two images are each other's nearest neighbour across the folders and the test image
is at least ``LEAK_GAP`` (0.04) more similar to it than to any other image of the data — one clear
match, not one of many similar images. On 80 copies of Fashion-MNIST images (28 pixels: exact,
JPEG 75, resized, cropped by one pixel) planted among 1,000 other test images, 0.90 alone found 69
and the rule 79; on 40 copies of stamps5 photos (exact, JPEG 75, halved, cropped by 5 %) among 83
others, 36 and 40. Of the test images that were not planted copies, it paired none with a training
image on stamps5 (as 0.90 alone), and 78 of 1,000 on Fashion-MNIST against 45 at 0.90 alone (its
classes hold many near-identical product photos; those pairs were not inspected one by one).
"""

from __future__ import annotations

import numpy as np

from transferkit._defaults import DUPLICATE_THRESHOLD, LEAK_GAP, LEAK_MARGIN
from transferkit._errors import ConfigError, DataError

BLOCK = 2048
THRESHOLD = DUPLICATE_THRESHOLD
# float32 dot products of unit vectors: an exact copy can score 1 - 6e-8, not 1. Pairs within this
# of the threshold count as reaching it, so threshold=1.0 finds exact copies.
_ROUNDING = 1e-6


def normalized(embeddings: object, what: str = "embeddings") -> np.ndarray:
    """``embeddings`` as float32 rows of length 1 (rows of zeros stay zeros: similarity 0 with anything).

    Raises:
        DataError: not a 2-D array, or values that are NaN or infinite.
    """
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise DataError(f"Expected {what} of shape (images, dim), one row per image. Received: {x.shape}.")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise DataError(f"Expected real numbers as {what}. Received dtype {x.dtype}.")
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, len(x), BLOCK):  # in float64 a block at a time: no second full-size copy
        rows = x[start:start + BLOCK].astype(np.float64)
        if not np.all(np.isfinite(rows)):
            raise DataError(f"Expected finite {what}; some are NaN or infinite (check the feature extraction).")
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        out[start:start + BLOCK] = rows / np.where(norms > 0, norms, 1.0)
    return out


def near_duplicates(a: np.ndarray, b: np.ndarray | None = None, *, threshold: float = THRESHOLD,
                    block: int = BLOCK) -> list[tuple[int, int, float]]:
    """Pairs of images whose embeddings have a cosine similarity of at least ``threshold``.

    Within one set (``b=None``): pairs ``(i, j)`` of rows of ``a`` with ``i < j``. Across two sets:
    pairs ``(i, j)`` with ``i`` a row of ``a`` and ``j`` a row of ``b`` (e.g. validation images
    that duplicate training images).

    Args:
        a: ``(n, dim)`` embeddings (backbone features), one row per image.
        b: ``(m, dim)`` embeddings of a second set, or ``None``.
        threshold: The smallest cosine similarity reported, -1 to 1. The default 0.90 finds exact
            copies and lightly edited copies (re-encoded, resized, slightly cropped, mirrored); see
            the module's documentation. A low threshold can return a great many pairs.
        block: Rows per block of the computation (memory: ``block²`` float32 similarities).

    Returns:
        ``(i, j, similarity)`` tuples, highest similarity first (ties by ``i`` then ``j``);
        similarities are clipped to at most 1.

    Raises:
        DataError: embeddings that are not 2-D, not finite, or of different widths.
        ConfigError: a threshold outside [-1, 1] or a block below 1.
    """
    if not -1.0 <= float(threshold) <= 1.0:
        raise ConfigError(f"Expected threshold to be a cosine similarity from -1 to 1. Received: {threshold!r}.")
    if int(block) < 1:
        raise ConfigError(f"Expected block to be a positive number of rows. Received: block={block!r}.")
    block = int(block)
    left = normalized(a, "a")
    right = left if b is None else normalized(b, "b")
    if right.shape[1] != left.shape[1]:
        raise DataError(f"Expected a and b with the same number of features. "
                        f"Received: a {left.shape}, b {right.shape}.")
    floor = np.float32(float(threshold) - _ROUNDING)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    sims: list[np.ndarray] = []
    for start in range(0, len(left), block):
        stop = min(start + block, len(left))
        # within one set only the blocks on and above the diagonal: each pair once
        for column in range(start if b is None else 0, len(right), block):
            end = min(column + block, len(right))
            similarity = left[start:stop] @ right[column:end].T
            hit = similarity >= floor
            if b is None and column == start:
                hit &= np.triu(np.ones_like(hit), k=1)  # i < j inside the diagonal block
            i, j = np.nonzero(hit)
            if i.size:
                rows.append(i + start)
                cols.append(j + column)
                sims.append(np.minimum(similarity[i, j], 1.0))
    if not rows:
        return []
    i, j, s = np.concatenate(rows), np.concatenate(cols), np.concatenate(sims).astype(np.float64)
    order = np.lexsort((j, i, -s))
    return [(int(i[k]), int(j[k]), float(s[k])) for k in order]


def leaks(a: np.ndarray, b: np.ndarray, *, threshold: float = THRESHOLD, margin: float = LEAK_MARGIN,
          gap: float = LEAK_GAP, block: int = BLOCK) -> list[tuple[int, int, float]]:
    """Pairs across two sets that look like the same image: a leak from ``a`` (training) into ``b`` (test).

    Every pair of :func:`near_duplicates` ``(a, b, threshold=threshold)``, and also a pair ``(i, j)``
    with a similarity of at least ``threshold - margin`` when row ``i`` of ``a`` is the most similar
    row of ``a`` to row ``j`` of ``b`` by at least ``gap`` over the next one, and row ``j`` is the
    most similar row of ``b`` to row ``i``.

    Args:
        a: ``(n, dim)`` embeddings of the data.
        b: ``(m, dim)`` embeddings of the other folder.
        threshold: As in :func:`near_duplicates`.
        margin: How far below ``threshold`` a clear mutual nearest neighbour still counts (0: off).
        gap: How much more similar the nearest row of ``a`` must be than the second nearest.
        block: Rows per block of the computation.

    Returns:
        ``(i, j, similarity)`` tuples, highest similarity first (ties by ``i`` then ``j``).
    """
    pairs = near_duplicates(a, b, threshold=threshold, block=block)
    if margin <= 0 or len(a) == 0 or len(b) == 0:
        return pairs
    left, right = normalized(a, "a"), normalized(b, "b")
    # per row of b: the best and second-best similarity in a, and where the best is; per row of a: its best in b
    best_b = np.full(len(right), -np.inf, dtype=np.float32)
    second_b = np.full(len(right), -np.inf, dtype=np.float32)
    where_b = np.zeros(len(right), dtype=np.int64)
    where_a = np.zeros(len(left), dtype=np.int64)
    best_a = np.full(len(left), -np.inf, dtype=np.float32)
    for start in range(0, len(left), block):
        stop = min(start + block, len(left))
        for column in range(0, len(right), block):
            end = min(column + block, len(right))
            similarity = left[start:stop] @ right[column:end].T
            # rows of a: the best column so far
            top = similarity.argmax(axis=1)
            value = similarity[np.arange(len(top)), top]
            better = value > best_a[start:stop]
            best_a[start:stop][better] = value[better]
            where_a[start:stop][better] = top[better] + column
            # columns (rows of b): merge this block's two best into the running two best
            if similarity.shape[0] >= 2:
                two = np.partition(similarity, similarity.shape[0] - 2, axis=0)[-2:]
                first, runner = two.max(axis=0), two.min(axis=0)
            else:
                first, runner = similarity[0], np.full(similarity.shape[1], -np.inf, dtype=np.float32)
            index = similarity.argmax(axis=0) + start
            cols = slice(column, end)
            old_best, old_second = best_b[cols].copy(), second_b[cols].copy()
            new_best = first > old_best
            best_b[cols] = np.where(new_best, first, old_best)
            second_b[cols] = np.where(new_best, np.maximum(old_best, runner), np.maximum(old_second, first))
            where_b[cols] = np.where(new_best, index, where_b[cols])
    floor = np.float32(float(threshold) - float(margin) - _ROUNDING)
    j = np.flatnonzero((best_b >= floor) & (best_b - second_b >= np.float32(gap)))
    j = j[where_a[where_b[j]] == j]  # mutual: the data image's nearest in b is this one
    known = {(i, k) for i, k, _ in pairs}
    extra = [(int(where_b[k]), int(k), float(min(best_b[k], 1.0))) for k in j if (int(where_b[k]), int(k)) not in known]
    return sorted(pairs + extra, key=lambda p: (-p[2], p[0], p[1]))
