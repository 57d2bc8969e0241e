"""Review a dataset: the images that look mislabelled, duplicated, leaked or odd, and one page to fix them.

A pretrained backbone embeds every image once; a linear head solved on those features gives
out-of-fold probabilities for every image (k folds cost seconds, not k trainings); then

* **label issues** — confident learning's per-class thresholds (Northcutt et al., JAIR 2021) on those
  probabilities: the images whose given label's probability is below 0.3 of their class's threshold,
  most suspect first (and the confident joint beside them);
* **duplicates** — pairs of images whose embeddings are nearly the same (copies, re-encodings,
  resized or slightly cropped versions), within the data and, with ``against``, across it and another
  folder (a test set: a leak);
* **outliers** — images far from every class, and images too small, blank or nearly uniform.

:func:`review` writes ``label_issues.csv``, ``duplicates.csv``, ``outliers.csv`` and ``review.html``
(a self-contained page where a person marks each item keep / relabel / remove and downloads
``decisions.csv``); :func:`plan_decisions`, :func:`apply_plan` and :func:`undo` carry those
decisions out on the data, never deleting anything.

Example:
    >>> result = review("photos/", out="review/")
    >>> print(result.summary())
    >>> apply_plan(plan_decisions("decisions.csv", "photos/"))
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from transferkit._atomic import atomic_paths
from transferkit._defaults import DEFAULT_BACKBONE, DUPLICATE_THRESHOLD
from transferkit._errors import ConfigError, DataError
from transferkit._model import model_parts, with_preprocessing
from transferkit._review._confident import LabelIssues, find_label_issues, out_of_fold
from transferkit._review._duplicates import leaks as find_leaks
from transferkit._review._duplicates import near_duplicates
from transferkit._review._outliers import feature_outliers, image_problems
from transferkit._review._page import default_thumbnail, write_review_page
from transferkit._run import TrainedRun
from transferkit._types import PathLike, Weights
from transferkit.backbones._registry import get_backbone
from transferkit.backbones._weights import build_backbone
from transferkit.data._pipelines import make_dataset
from transferkit.data._sources import ImageFiles, read_csv, scan_folder

__all__ = ["Review", "review"]

log = logging.getLogger("transferkit")

LABEL_ISSUES_FILE = "label_issues.csv"
DUPLICATES_FILE = "duplicates.csv"
OUTLIERS_FILE = "outliers.csv"
PAGE_FILE = "review.html"
OUTLIER_SHARE = 0.02  # the oddest 2 % of images by their features are listed (at least one)


@dataclass(frozen=True)
class Review:
    """What :func:`review` found.

    Attributes:
        files: The images reviewed, with their given labels.
        probabilities: Out-of-fold probabilities of every image, ``(images, classes)``.
        label_issues: The images judged mislabelled (indices into ``files``), most suspect first.
        duplicates: Rows ``{"path_a", "path_b", "similarity", "across"}``, most similar first; ``across``
            pairs (an image of the data and one of ``against``) come first.
        outliers: Rows ``{"path", "reason", "score"}``: images too small, blank or uniform, then the
            oddest by their features.
        out: The folder the files and the page were written to (``None``: nothing written).
    """

    files: ImageFiles
    probabilities: np.ndarray = field(repr=False)
    label_issues: LabelIssues = field(repr=False)
    duplicates: list[dict[str, Any]] = field(repr=False)
    outliers: list[dict[str, Any]] = field(repr=False)
    out: Path | None = None

    def label_issue_rows(self) -> list[dict[str, Any]]:
        """``label_issues.csv``'s rows: ``{"path", "given", "suggested", "score"}``, most suspect first."""
        names = self.files.class_names
        return [{"path": self.files.paths[i], "given": names[int(self.files.labels[i])],
                 "suggested": names[int(s)], "score": round(float(score), 6)}
                for i, s, score in zip(self.label_issues.indices, self.label_issues.suggested,
                                       self.label_issues.scores)]

    def summary(self) -> str:
        """One line with the counts (and where the page is)."""
        leaks = sum(1 for row in self.duplicates if row["across"])
        line = (f"{len(self.files)} images: {len(self.label_issues.indices)} suspected label errors, "
                f"{len(self.duplicates)} duplicate pairs" + (f" ({leaks} across the two folders)" if leaks else "")
                + f", {len(self.outliers)} outliers")
        return line + (f"; open {self.out / PAGE_FILE}" if self.out is not None else "")


def load_files(data: PathLike | ImageFiles) -> ImageFiles:
    """The images of a class folder, a CSV file (``path,label``) or an :class:`~transferkit.ImageFiles`."""
    if isinstance(data, ImageFiles):
        return data
    path = Path(data)
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_csv(path)
    if not path.is_dir():
        raise DataError(f"Data {str(path)!r} is neither a folder of class sub-folders nor a .csv file. Check the path.")
    return scan_folder(path)


def _feature_model(*, backbone: str, weights: Weights, image_size: int | None, run: PathLike | None
                   ) -> tuple[keras.Model, int]:
    """Raw pixels → one feature vector per image: the backbone's (averaged where it gives a map)."""
    if run is not None:
        trained = TrainedRun.load(run)
        parts = model_parts(trained.model)
        size = trained.image_settings.image_size
        inputs = keras.Input((size, size, 3), name="image")
        features = parts.backbone(parts.preprocessor(inputs))
    else:
        spec = get_backbone(backbone)
        net = build_backbone(spec, weights=weights, image_size=image_size)
        size = int(net.input_shape[1])
        extractor = with_preprocessing(net, spec.preprocessing, name="review_features")
        inputs = extractor.input
        features = extractor.output
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    return keras.Model(inputs, features, name="review_features"), size


def embed(files: ImageFiles, model: keras.Model, *, image_size: int, batch_size: int = 32) -> np.ndarray:
    """The features of every image of ``files``, in order (float32 rows)."""
    dataset = make_dataset(files, image_size=image_size, batch_size=batch_size, cache=False)
    rows = [np.asarray(model(images, training=False), dtype=np.float32) for images, _ in dataset]
    return np.concatenate(rows) if rows else np.zeros((0, int(model.output_shape[-1])), np.float32)


def review(
    data: PathLike | ImageFiles,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: Weights = "imagenet",
    image_size: int | None = None,
    run: PathLike | None = None,
    against: PathLike | ImageFiles | None = None,
    out: PathLike | None = None,
    folds: int = 5,
    ranking: str = "self_confidence",
    duplicate_threshold: float = DUPLICATE_THRESHOLD,
    batch_size: int = 32,
    seed: int = 0,
) -> Review:
    """Find the suspected label errors, duplicates and outliers of ``data``; write the files and the page.

    Args:
        data: A folder of class sub-folders, a CSV file (``path,label``) or :class:`~transferkit.ImageFiles`.
        backbone: The backbone whose features are used (any backbone name, KerasHub preset or folder).
        weights: Its weights (``"imagenet"`` or a weights file).
        image_size: Pixels per side (the backbone's input size when omitted).
        run: A run folder (``transferkit train --out``): use its fine-tuned network's features instead.
        against: Another folder (a test set) to look for duplicates across: leaks between the two.
        out: Write ``label_issues.csv``, ``duplicates.csv``, ``outliers.csv`` and ``review.html`` here.
        folds: Folds of the out-of-fold probabilities.
        ranking: ``"self_confidence"`` or ``"normalized_margin"``: how label issues are ordered.
        duplicate_threshold: Cosine similarity of two images' features at or above which they are a pair.
            Across ``against`` a pair also counts from 0.10 below it when the two images are each
            other's clear nearest neighbour (:func:`~transferkit._review._duplicates.leaks`).
        batch_size: Images per forward pass.
        seed: Seeds the folds.

    Raises:
        DataError: no images, multi-label data, or fewer than two classes.
    """
    _check_ranking(ranking)
    files = load_files(data)
    if len(files) == 0:
        raise DataError(f"No images to review in {data!r}.")
    if files.multi_label:
        raise DataError("transferkit review finds label errors in single-label data; this data is multi-label.")
    if len(files.class_names) < 2:
        raise DataError(f"Reviewing labels needs at least two classes; {data!r} has {len(files.class_names)}.")
    model, size = _feature_model(backbone=backbone, weights=weights, image_size=image_size, run=run)
    features = embed(files, model, image_size=size, batch_size=batch_size)
    labels = np.asarray(files.labels).astype(int)
    probabilities = out_of_fold(features, labels, len(files.class_names), folds=folds, seed=seed)
    issues = find_label_issues(labels, probabilities, ranking=ranking)

    pairs = [{"path_a": files.paths[i], "path_b": files.paths[j], "similarity": round(float(s), 6), "across": False}
             for i, j, s in near_duplicates(features, threshold=duplicate_threshold)]
    if against is not None:
        other = load_files(against)
        other_features = embed(other, model, image_size=size, batch_size=batch_size)
        leaks = [{"path_a": files.paths[i], "path_b": other.paths[j], "similarity": round(float(s), 6),
                  "across": True}
                 for i, j, s in find_leaks(features, other_features, threshold=duplicate_threshold)]
        pairs = leaks + pairs

    outliers: list[dict[str, Any]] = [{"path": files.paths[i], "reason": reason, "score": ""}
                                      for i, reason in image_problems(files.paths)]
    flagged = {row["path"] for row in outliers}
    scores = feature_outliers(features, labels)
    count = max(1, round(OUTLIER_SHARE * len(files)))
    oddest = [i for i in np.argsort(-scores) if files.paths[i] not in flagged][:count]
    outliers += [{"path": files.paths[i], "reason": "far from its class and every other",
                  "score": round(float(scores[i]), 6)} for i in oddest]

    result = Review(files=files, probabilities=probabilities, label_issues=issues, duplicates=pairs,
                    outliers=outliers, out=Path(out) if out is not None else None)
    if out is not None:
        write_review(result, Path(out))
    return result


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    # a file name whose bytes are not UTF-8 is written as those bytes, as the file system holds it
    with atomic_paths(path, keep_suffix=True) as (temporary,), open(temporary, "w", newline="", encoding="utf-8",
                                                                    errors="surrogateescape") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_review(result: Review, out: Path) -> Path:
    """Write the three CSV files and ``review.html`` of ``result`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    issues = result.label_issue_rows()
    _write_csv(out / LABEL_ISSUES_FILE, ("path", "given", "suggested", "score"), issues)
    _write_csv(out / DUPLICATES_FILE, ("path_a", "path_b", "similarity"), result.duplicates)
    _write_csv(out / OUTLIERS_FILE, ("path", "reason", "score"), result.outliers)
    names = result.files.class_names
    counts = {name: int(n) for name, n in zip(names, result.files.class_counts())}
    write_review_page(out / PAGE_FILE, title=f"Review of {len(result.files)} images", class_names=list(names),
                      class_counts=counts, label_issues=issues, duplicates=result.duplicates,
                      outliers=result.outliers, thumbnail=default_thumbnail)
    return out


def _check_ranking(ranking: str) -> None:
    if ranking not in ("self_confidence", "normalized_margin"):
        raise ConfigError(f"Expected ranking 'self_confidence' or 'normalized_margin'. Received: {ranking!r}.")

