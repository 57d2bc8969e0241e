"""Splitting labelled items into training and validation sets, and weighting rare classes."""

from __future__ import annotations

import numpy as np

from transferkit._errors import ConfigError


def stratified_split(
    labels: np.ndarray, *, validation_fraction: float = 0.2, seed: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train / validation keeping each class's share (seeded).

    Every class with at least two items gets at least one in each split. Multi-label rows
    are stratified by their first positive class.

    Returns:
        ``(train_indices, validation_indices)``, each sorted.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ConfigError(
            f"Expected validation_split in [0, 1). Received: validation_split={validation_fraction!r}."
        )
    labels = np.asarray(labels)
    strata = labels.argmax(axis=1) if labels.ndim == 2 else labels
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for value in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == value))
        n_val = int(round(len(members) * validation_fraction))
        if validation_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.extend(members[:n_val].tolist())
        train.extend(members[n_val:].tolist())
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced class weights ``n / (num_classes · n_c)`` for integer labels.

    Pass them to ``fit(class_weight=…)`` so that a rare class counts as much as a common one.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    total = counts.sum()
    return {c: float(total / (num_classes * n)) if n else 0.0 for c, n in enumerate(counts)}
