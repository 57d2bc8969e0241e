"""Building a backbone with the weights the user asked for — without silent surprises.

``weights`` is one of:

* ``"imagenet"``: Keras' own download and cache (``$KERAS_HOME/models``, default ``~/.keras/models``).
  Where the download fails, backbones whose weights ship with transferkit (``mobilenet``) use
  that copy and say so in one line; for the others the error names the remedies instead of a
  urllib traceback.
* ``None``: random initialisation.
* a path to a ``.weights.h5`` (Keras 3) or ``.h5`` (Keras 2) file, full (with the ImageNet
  classifier) or headless; loaded layer by layer, and a file that does not fit is an error,
  never a partial load.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import h5py
import keras
import numpy as np

from transferkit._errors import WeightsUnavailableError
from transferkit._types import Weights
from transferkit.backbones._registry import BackboneSpec

log = logging.getLogger("transferkit")


def keras_cache_dir() -> Path:
    """Where Keras looks for downloaded weights before it tries the network."""
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(base) / "models"


def _is_download_failure(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (urllib.error.URLError, ConnectionError, TimeoutError)):
            return True
        if "URL fetch failure" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _download_error(spec: BackboneSpec, error: BaseException) -> WeightsUnavailableError:
    url = re.search(r"https?://\S+?(?=:\s|$)", str(error))
    filename = url.group(0).rsplit("/", 1)[-1] if url else "the weights file"
    reason = str(error).split(" -- ")[-1].strip() or type(error).__name__
    return WeightsUnavailableError(
        f"Could not download the ImageNet weights of backbone {spec.name!r} ({reason}). "
        "Is there no network access? Remedies: pass weights='/path/to/file.weights.h5' "
        f"(a full or headless file); or copy {filename} into {keras_cache_dir()} (the Keras cache, "
        "which is read before any download); or pass weights=None to start from random weights."
    )


def build_backbone(spec: BackboneSpec, *, weights: Weights, image_size: int | None = None) -> keras.Model:
    """Build ``spec``'s headless network at ``image_size`` with ``weights``.

    Example:
        >>> net = build_backbone(get_backbone("mobilenet"), weights="notop.weights.h5", image_size=160)
    """
    size = spec.check_size(image_size if image_size is not None else spec.input_size)
    shape = (size, size, 3)
    if weights is None:
        return spec.constructor(input_shape=shape, weights=None)
    if isinstance(weights, str) and weights == "imagenet":
        if spec.weight_sizes and size not in spec.weight_sizes:
            raise WeightsUnavailableError(
                f"Backbone {spec.name!r} has ImageNet weights only for image_size in {list(spec.weight_sizes)}. "
                f"Received: image_size={size}. Use one of those sizes, or weights=None."
            )
        return _imagenet(spec, spec.constructor, shape)
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailableError(
                f"weights={str(weights)!r} is neither 'imagenet', None, nor an existing file. "
                "Pass the path of a .weights.h5 or .h5 file, 'imagenet', or None."
            )
        backbone = spec.constructor(input_shape=shape, weights=None)
        load_weights_file(backbone, spec, path)
        return backbone
    raise WeightsUnavailableError(
        f"Expected weights to be 'imagenet', None or a file path. Received: weights={weights!r}."
    )


# Backbones whose Keras download already failed in this process: their shipped copy is used at
# once, so that a search building the network for every trial does not retry (and print) each time.
_DOWNLOAD_FAILED: set[str] = set()


def _imagenet(spec: BackboneSpec, constructor: Callable[..., keras.Model], shape: tuple[int, int, int]) -> keras.Model:
    """Keras' ImageNet download first; the copy shipped in the package when that fails."""
    if spec.offline_weights is None or spec.name not in _DOWNLOAD_FAILED:
        try:
            return constructor(input_shape=shape, weights="imagenet")
        except Exception as error:  # Keras wraps network errors in a bare Exception
            if not _is_download_failure(error):
                raise
            if spec.offline_weights is None:
                raise _download_error(spec, error) from None
        _DOWNLOAD_FAILED.add(spec.name)
        log.warning("Keras could not download the ImageNet weights of %r; using the copy shipped with transferkit.",
                    spec.name)
    model = constructor(input_shape=shape, weights=None)
    load_weights_by_name(model, shipped_file(spec.offline_weights))
    return model


def build_classifier(spec: BackboneSpec, *, weights: Weights, image_size: int | None = None) -> keras.Model:
    """Build ``spec``'s network *with* its original ImageNet classifier (1000 softmax outputs).

    Takes the same ``weights`` as :func:`build_backbone`; the input is what the network expects
    (apply ``spec.preprocessing`` first, or use :func:`transferkit.imagenet.imagenet_classifier`).
    """
    if spec.classifier_constructor is None:
        raise WeightsUnavailableError(f"Backbone {spec.name!r} has no ImageNet classifier variant.")
    size = spec.check_size(image_size if image_size is not None else spec.input_size)
    shape = (size, size, 3)
    if isinstance(weights, str) and weights == "imagenet":
        return _imagenet(spec, spec.classifier_constructor, shape)
    model = spec.classifier_constructor(input_shape=shape, weights=None)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailableError(f"weights={str(weights)!r} is not an existing file.")
        _load_exact(model, path, spec)
    return model


def shipped_file(name: str) -> Path:
    """Path of a file shipped in ``transferkit/assets``."""
    return Path(str(resources.files("transferkit") / "assets" / name))


def load_weights_by_name(model: keras.Model, path: Path) -> None:
    """Load an ``.npz`` of ``"<layer>/<index>"`` arrays into every weighted layer of ``model``."""
    with np.load(path) as arrays:
        stored = set(arrays.files)
        for layer in model.layers:
            if not layer.weights:
                continue
            keys = [f"{layer.name}/{i}" for i in range(len(layer.weights))]
            missing = [k for k in keys if k not in stored]
            if missing:
                raise WeightsUnavailableError(f"{path.name} has no weights for layer {layer.name!r} ({missing[0]}).")
            layer.set_weights([arrays[k].astype(w.dtype) for k, w in zip(keys, layer.weights)])


def _count_keras3_variables(path: Path) -> int:
    count = 0

    def visit(name: str, obj: object) -> None:
        nonlocal count
        if isinstance(obj, h5py.Dataset) and "/vars/" in f"/{name}":
            count += 1

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return count


def _legacy_layer_names(path: Path) -> list[str] | None:
    with h5py.File(path, "r") as f:
        group = f.get("model_weights", f)
        names = group.attrs.get("layer_names")
        if names is None:
            return None
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def load_weights_file(backbone: keras.Model, spec: BackboneSpec, path: Path) -> None:
    """Load a full or headless weights file into the headless ``backbone``, layer by layer.

    Raises:
        WeightsUnavailableError: the file is unreadable or belongs to another network.
    """
    try:
        legacy = _legacy_layer_names(path)
    except OSError as error:
        raise WeightsUnavailableError(f"Cannot read weights file {str(path)!r}: {error}.") from None
    if legacy is not None:  # Keras 2 .h5: layer names are stored, so load by name
        missing = [layer.name for layer in backbone.layers if layer.weights and layer.name not in legacy]
        if missing:
            raise WeightsUnavailableError(
                f"Weights file {str(path)!r} has no weights for {len(missing)} layers of backbone "
                f"{spec.name!r} (first: {missing[:3]}). Is it a file for another network?"
            )
        backbone.load_weights(str(path), by_name=True)
        return

    # Keras 3 .weights.h5 files key variables by layer class and position, not by name; load
    # into a network of the file's own shape, then copy layer by layer by name.
    in_file = _count_keras3_variables(path)
    if in_file == len(backbone.weights):
        _load_exact(backbone, path, spec)
        return
    full = None
    if spec.classifier_constructor is not None:
        size = spec.input_size
        full = spec.classifier_constructor(input_shape=(size, size, 3), weights=None)
    if full is None or in_file != len(full.weights):
        raise WeightsUnavailableError(
            f"Weights file {str(path)!r} holds {in_file} variables, but backbone {spec.name!r} has "
            f"{len(backbone.weights)} (headless)"
            + (f" or {len(full.weights)} (with the ImageNet classifier)" if full is not None else "")
            + ". Is it a file for another network or another width?"
        )
    _load_exact(full, path, spec)
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())


def _load_exact(model: keras.Model, path: Path, spec: BackboneSpec) -> None:
    try:
        model.load_weights(str(path))
    except (ValueError, KeyError) as error:
        raise WeightsUnavailableError(
            f"Weights file {str(path)!r} does not fit backbone {spec.name!r}: {error}"
        ) from None
