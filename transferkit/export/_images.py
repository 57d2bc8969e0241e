"""The images an export is verified on, and the images that calibrate int8.

Verification needs images like the user's: near-uniform inputs put a classifier near ties, where
rounding turns the top class over without anything being wrong. So the check images are, in
order of preference, the ``check`` folder, the validation images kept with the run
(``samples.npz``), and only for runs saved without them generated random-pixel images.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from transferkit._errors import DataError
from transferkit._run import TrainedRun
from transferkit._types import PathLike
from transferkit.data._images import load_image, printable
from transferkit.data._pipelines import PipelineSettings, file_pipeline
from transferkit.data._sources import ImageFiles, scan_folder

log = logging.getLogger("transferkit")

RANDOM_CHECK_IMAGES = 256
"""Images of random pixels to verify on when no check folder is given and the run kept no sample
images (no labels, so no accuracy)."""

BATCH = 32  # images per forward pass when comparing outputs
SEED = 0  # the random check images and the calibration sample are the same on every run
GENERATED_FILES = 16  # encoded PNG and JPEG files for a SavedModel's serving_bytes when there is no check folder

FOLDER, SAMPLES, GENERATED = "folder", "samples", "generated"
"""Where check images come from (``ExportReport.check_source``)."""


@dataclass(frozen=True)
class CheckImages:
    """The images an export is verified on, as raw float32 pixel batches at the model's size (read
    afresh on each pass, so that a large check folder never sits in memory), with labels if known,
    and encoded files for the bytes signature.

    Attributes:
        source: :data:`FOLDER`, :data:`SAMPLES` or :data:`GENERATED`.
        description: What the report's ``checked_on`` says: the folder, or which images.
        count: How many images.
        labels: Their labels (a check folder), else ``None``.
        read: A fresh iterable of pixel batches.
        files: The check folder's files, for the bytes signature.
        generated: Encoded images and the loader's pixels of them, when there are no files.
    """

    source: str
    description: str
    count: int
    labels: np.ndarray | None
    read: Callable[[], Iterable[np.ndarray]]
    files: tuple[str, ...] | None = None
    generated: tuple[tuple[bytes, ...], np.ndarray] | None = None

    def batches(self) -> Iterator[np.ndarray]:
        for batch in self.read():
            yield np.asarray(batch, dtype=np.float32)

    @functools.cached_property
    def first(self) -> np.ndarray:
        """The first image, as a batch of one (for the latency)."""
        return next(self.batches())[:1]

    def encoded_batches(self) -> Iterator[list[bytes]]:
        """Encoded image files in batches: the check folder's, else the generated ones."""
        if self.files is None:
            encoded = list(self.generated[0]) if self.generated is not None else []
            for i in range(0, len(encoded), BATCH):
                yield encoded[i:i + BATCH]
            return
        for i in range(0, len(self.files), BATCH):
            yield [Path(p).read_bytes() for p in self.files[i:i + BATCH]]


@dataclass(frozen=True)
class CalibrationImages:
    """The images that set the int8 ranges (uint8, as the loader gives them)."""

    images: np.ndarray
    folder: str

    def batches(self) -> Iterator[list[np.ndarray]]:
        # A black and a white frame pin the observed input range to exactly 0..255, so that the
        # uint8 input takes raw pixels one to one (scale 1, zero point 0) whatever the photos hold.
        frame = np.zeros((1, *self.images.shape[1:]), np.float32)
        yield [frame]
        yield [frame + 255.0]
        for image in self.images:
            yield [image[None].astype(np.float32)]

    def describe(self) -> dict[str, Any]:
        return {"folder": self.folder, "images": len(self.images)}


def file_batches(files: ImageFiles, settings: PipelineSettings) -> tf.data.Dataset:
    """``(images, labels)`` batches of the files read exactly as evaluation reads them (transferkit's
    loader at the run's image size, resize mode and background), in file order."""
    return file_pipeline(files, PipelineSettings(image_size=settings.image_size, resize=settings.resize,
                                                 background=settings.background, batch_size=BATCH), cache=False)


def check_images(run: TrainedRun, check: PathLike | None) -> CheckImages:
    """The ``check`` folder's images; without one, the samples kept with the run, else generated images."""
    settings = run.image_settings
    if check is not None:
        return _folder_images(run, check)
    samples = _usable_samples(run)
    if samples is not None:
        return CheckImages(SAMPLES, f"samples kept with the run ({len(samples)} validation images)", len(samples),
                           None, lambda: (samples[i:i + BATCH] for i in range(0, len(samples), BATCH)),
                           generated=generated_files(settings))
    size = settings.image_size

    def random_pixels() -> Iterator[np.ndarray]:
        rng = np.random.default_rng(SEED)
        for start in range(0, RANDOM_CHECK_IMAGES, BATCH):
            count = min(BATCH, RANDOM_CHECK_IMAGES - start)
            yield rng.integers(0, 256, (count, size, size, 3)).astype(np.float32)

    return CheckImages(GENERATED, f"{RANDOM_CHECK_IMAGES} generated images (random pixels)", RANDOM_CHECK_IMAGES,
                       None, random_pixels, generated=generated_files(settings))


def _folder_images(run: TrainedRun, check: PathLike) -> CheckImages:
    files = scan_folder(check)
    if files.class_names != run.class_names:
        raise DataError(f"The classes in {printable(str(check))!r} {list(files.class_names)} differ from the "
                        f"model's {list(run.class_names)}. A check folder needs DIR/<class>/<images> with the run's "
                        "classes.")
    batches = file_batches(files, run.image_settings)
    return CheckImages(FOLDER, printable(str(check)), len(files), files.labels,
                       lambda: (images.numpy() for images, _ in batches), files=files.paths)


def _usable_samples(run: TrainedRun) -> np.ndarray | None:
    """The run's sample images if they fit the model's input; a run saved without them has ``None``."""
    samples = run.samples
    if samples is None or len(samples) == 0:
        return None
    size = run.image_settings.image_size
    if samples.ndim != 4 or samples.shape[1:] != (size, size, 3):
        # a damaged or foreign samples.npz must not block an export: verify as for a run without one
        log.warning("The run's sample images have shape %s, not (n, %d, %d, 3); verifying the export on "
                    "generated images instead.", samples.shape, size, size)
        return None
    return np.asarray(samples, dtype=np.float32)


def generated_files(settings: PipelineSettings, count: int = GENERATED_FILES
                    ) -> tuple[tuple[bytes, ...], np.ndarray]:
    """Smooth random images of several shapes, as PNG and JPEG files, and the loader's pixels of them."""
    from PIL import Image

    rng = np.random.default_rng(SEED)
    size = settings.image_size
    encoded, pixels = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(count):
            height, width = (max(1, int(size * f)) for f in rng.uniform(0.6, 2.5, 2))
            coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
            path = Path(scratch) / (f"{i}.png" if i % 2 else f"{i}.jpg")
            coarse.resize((width, height), Image.Resampling.BICUBIC).save(path)
            encoded.append(path.read_bytes())
            pixels.append(load_image(path, image_size=size, resize=settings.resize, background=settings.background))
    return tuple(encoded), np.stack(pixels).astype(np.float32)


def read_calibration_images(folder: PathLike, settings: PipelineSettings, limit: int) -> CalibrationImages:
    """Up to ``limit`` images of ``folder``, taken in turn from each class (seeded), read like the check images."""
    files = scan_folder(folder)
    rng = np.random.default_rng(SEED)
    strata = files.labels.argmax(axis=1) if files.labels.ndim == 2 else files.labels
    queues = [list(rng.permutation(np.flatnonzero(strata == c))) for c in np.unique(strata)]
    chosen: list[int] = []
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(int(queue.pop(0)))
    batches = file_batches(files.subset(sorted(chosen)), settings)
    images = np.concatenate([np.asarray(x).astype(np.uint8) for x, _ in batches])
    return CalibrationImages(images, printable(str(folder)))
