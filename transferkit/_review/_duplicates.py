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
"""

from __future__ import annotations

import numpy as np

from transferkit._defaults import DUPLICATE_THRESHOLD
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
