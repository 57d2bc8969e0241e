"""The on-disk format of a trained FineTuner: ``model.keras`` plus versioned ``transferkit.json``.

Format history:

* 1 — the head's layers sit directly in the model after the backbone.
* 2 — the head is a nested model named ``"head"`` (see ``_model.py``). Format-1 runs still load,
  predict and evaluate; further training on them runs without cached features.
* 3 — ``model.keras`` loads in plain Keras, without transferkit: the preprocessor is written with
  built-in layers (:func:`~transferkit.backbones._preprocessing.builtin_preprocessor`, bit-identical
  to ``Preprocess``) and ``transferkit.json`` records its contract (``preprocessing``), which
  :func:`load_run` puts back as a ``Preprocess`` layer. Hub runs are the exception: their module
  is a ``HubLayer`` (a SavedModel graph) that needs transferkit anyway, so they keep ``Preprocess``.

``save_run`` writes no compile state or optimizer in any format (a run is for inference; further
training starts a new phase with its own optimizer; an optimizer saved unbuilt made loading warn
about skipped variables), and :func:`load_run` loads every format uncompiled. A format-1 model is
saved again as format 1 (its layout), with ``Preprocess``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from transferkit._atomic import atomic_paths
from transferkit._errors import DataError
from transferkit._heads import Head
from transferkit._model import BACKBONE, HEAD, INPUT, PREPROCESSOR, build_model, model_parts, with_preprocessor
from transferkit._types import Color, History, PathLike
from transferkit.backbones._kerashub import keras_hub, uses_keras_hub
from transferkit.backbones._preprocessing import Preprocess, builtin_preprocessor
from transferkit.backbones._registry import BackboneSpec
from transferkit.backbones._weights import build_backbone
from transferkit.hub import HubLayer, hub_backbone_of_run

MODEL_FILE = "model.keras"
META_FILE = "transferkit.json"
FORMAT = 3
READABLE_FORMATS = (1, 2, 3)
_KERAS_CONFIG = "config.json"  # the architecture inside a .keras zip (keras.src.saving.saving_lib)


@dataclass(frozen=True, kw_only=True)
class RunMetadata:
    """Everything besides the Keras model that a saved FineTuner needs to come back as it was."""

    backbone: str
    hub_handle: str | None
    weights: str | None
    image_size: int
    class_names: tuple[str, ...]
    head: dict[str, Any]
    resize: str = "pad"
    background: Color = (255, 255, 255)
    history: dict[str, History] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    refit: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    preprocessing: str | None = None  # the preprocessor's contract; written by save_run, needed from format 3
    format: int = FORMAT

    def to_json(self) -> str:
        data = asdict(self)
        data["class_names"], data["background"] = list(self.class_names), list(self.background)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str, *, where: str) -> RunMetadata:
        data = json.loads(text)
        version = data.get("format", 1)
        if version not in READABLE_FORMATS:
            raise DataError(f"{where} is format {version}; this transferkit reads formats {list(READABLE_FORMATS)}. "
                            "Upgrade transferkit to load it.")
        return cls(
            backbone=data["backbone"], hub_handle=data.get("hub_handle"), weights=data.get("weights"),
            image_size=int(data["image_size"]), class_names=tuple(data["class_names"]), head=data["head"],
            resize=data.get("resize", "pad"), background=tuple(data.get("background", (255, 255, 255))),
            history=data.get("history", {}), best=data.get("best"), refit=data.get("refit"),
            calibration=data.get("calibration"), preprocessing=data.get("preprocessing"),
            format=version,
        )


def save_run(directory: PathLike, model: keras.Model, meta: RunMetadata) -> Path:
    """Write ``model.keras`` and ``transferkit.json`` into ``directory`` (created if needed).

    Both are written in full under temporary names first, then renamed in place one right after
    the other: a save that fails or is killed leaves the previous run (or nothing), never a file
    that loads wrong.

    ``model.keras`` holds the model without its compile state. From format 3 (``meta.format``) its
    preprocessor is written with built-in Keras layers, so that ``keras.saving.load_model`` loads it
    without transferkit (not for a Hub run: see the module notes); ``meta.preprocessing`` is set to
    the model's contract.
    """
    preprocessor = model_parts(model).preprocessor
    meta = dataclasses.replace(meta, preprocessing=preprocessor.mode)
    if meta.format >= 3 and meta.hub_handle is None:
        saved = with_preprocessor(model, builtin_preprocessor(
            preprocessor.mode, name=PREPROCESSOR, dtype=preprocessor.dtype_policy))
    else:
        saved = with_preprocessor(model, preprocessor)  # the same layers, without the compile state
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_paths(out / MODEL_FILE, out / META_FILE, keep_suffix=True) as (model_file, meta_file):
        saved.save(model_file)  # Keras insists on the .keras suffix
        meta_file.write_text(meta.to_json(), encoding="utf-8")
    return out


def load_run(directory: PathLike, *, safe_mode: bool = True) -> tuple[keras.Model, RunMetadata]:
    """Read what :func:`save_run` wrote.

    A run whose backbone is a TensorFlow Hub module (``meta.hub_handle``) is never deserialised:
    its model is built again by transferkit from ``transferkit.json`` around the module at the
    recorded handle (or the one registered under the run's backbone name), and only the weights
    are read from ``model.keras``. Deserialising it would load whatever SavedModel the file names,
    which safe mode rightly refuses; this way safe loading needs no exception.

    Every model comes back uncompiled, with a ``Preprocess`` layer as its preprocessor (a format-3
    file holds built-in layers there: they are checked to compute the recorded contract exactly).

    Args:
        directory: The folder :func:`save_run` wrote.
        safe_mode: Passed to ``keras.saving.load_model`` for every other run.

    Raises:
        DataError: not a saved run; a Hub module that is no longer at its handle; a ``model.keras``
            that does not hold the model its ``transferkit.json`` describes.
    """
    root = Path(directory)
    if not (root / MODEL_FILE).is_file() or not (root / META_FILE).is_file():
        raise DataError(f"{str(root)!r} is not a saved FineTuner: expected {MODEL_FILE} and {META_FILE} in it.")
    meta = RunMetadata.from_json((root / META_FILE).read_text(), where=str(root / META_FILE))
    if meta.hub_handle is None:
        if uses_keras_hub(root / MODEL_FILE):
            keras_hub()  # registers KerasHub's layers with Keras (or says how to install it)
        # compile=False: an older run's optimizer was saved unbuilt, and a run trains on in new phases anyway
        model = keras.saving.load_model(root / MODEL_FILE, safe_mode=safe_mode, compile=False)
        return (_with_preprocess_layer(model, meta, root) if meta.format >= 3 else model), meta
    saved = saved_architecture(root / MODEL_FILE)
    module = _layer_config(saved, "HubLayer")
    spec = hub_backbone_of_run(
        meta.backbone, meta.hub_handle, run=str(root), input_size=meta.image_size, feature_dim=_feature_dim(saved),
        preprocessing=_layer_config(saved, "Preprocess").get("mode", "unit"), layer_config=module,
    )
    return rebuild_model(root / MODEL_FILE, saved, spec, meta), meta


def _with_preprocess_layer(model: keras.Model, meta: RunMetadata, root: Path) -> keras.Model:
    """The loaded format-3 ``model`` with ``Preprocess(meta.preprocessing)`` in place of its built-in
    preprocessor, after checking that the two compute the same numbers (on a few pixels)."""
    where = f"{str(root / MODEL_FILE)!r}"
    mode = meta.preprocessing
    if mode is None:
        raise DataError(f"{str(root / META_FILE)!r} is format {meta.format} but records no 'preprocessing'.")
    try:
        saved = model.get_layer(PREPROCESSOR)
        computing = saved.layers[-1] if isinstance(saved, keras.Model) else saved  # a nested model has no policy
        contract = Preprocess(mode, name=PREPROCESSOR, dtype=computing.dtype_policy)
        pixels = np.linspace(0.0, 255.0, 2 * 2 * 3, dtype="float32").reshape(1, 2, 2, 3)
        same = np.array_equal(keras.ops.convert_to_numpy(saved(pixels)),
                              keras.ops.convert_to_numpy(contract(pixels)))
    except (ValueError, TypeError) as error:  # no such layer, an unknown mode, a layer that takes no image
        reason = " ".join(str(error).split())[:300]
        raise DataError(f"{where} has no preprocessor that transferkit can check ({reason}).") from None
    if not same:
        raise DataError(f"The {PREPROCESSOR!r} layer in {where} does not compute the {mode!r} preprocessing "
                        f"that {META_FILE} records: was the model changed after training?")
    return with_preprocessor(model, contract)


def saved_architecture(model_file: Path) -> dict[str, Any]:
    """The architecture in a ``.keras`` file, read as plain JSON: nothing in it is deserialised or run."""
    try:
        with zipfile.ZipFile(model_file) as archive:
            config = json.loads(archive.read(_KERAS_CONFIG))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:  # JSONDecodeError is a ValueError
        raise DataError(
            f"{str(model_file)!r} is not a readable .keras file ({type(error).__name__}: {error})."
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise DataError(f"{str(model_file)!r} holds no model architecture in its {_KERAS_CONFIG}.")
    return config


def rebuild_model(model_file: Path, saved: dict[str, Any], spec: BackboneSpec, meta: RunMetadata) -> keras.Model:
    """Build the run's model with transferkit's own code and load only the weights from ``model_file``.

    ``saved`` (from :func:`saved_architecture`) is used as data only: to check that the rebuilt
    model has the saved one's layers (the weights are stored by position, not by name) and to put
    back its trainable flags.
    """
    model = _build_layout(spec, meta)
    if _outline(model.get_config()) != _outline(saved["config"]):
        raise DataError(
            f"{str(model_file)!r} does not hold the model transferkit builds from its {META_FILE} (backbone "
            f"{meta.backbone!r}, head {meta.head}, format {meta.format}): was the model changed after training? "
            "Only weights are read from a Hub run, so the layers have to match. If you trust the file, "
            "keras.saving.load_model(path, safe_mode=False) loads it as it is."
        )
    _restore_flags(model, saved)
    try:
        model.load_weights(model_file)
    except ValueError as error:
        reason = " ".join(str(error).split())[:300]
        raise DataError(
            f"The weights in {str(model_file)!r} do not fit the model rebuilt around backbone {meta.backbone!r} "
            f"({reason}). Is {spec.handle or spec.name!r} still the module the run was trained on?"
        ) from None
    return model


def _build_layout(spec: BackboneSpec, meta: RunMetadata) -> keras.Model:
    """The model of the run's format, with the backbone's own weights (overwritten from the run next)."""
    head = Head.from_config(meta.head)
    outputs = len(meta.class_names)
    weights = "imagenet" if spec.handle else None  # a Hub module's "imagenet" is the module itself: no download
    if meta.format >= 2:
        return build_model(spec, num_outputs=outputs, weights=weights, head=head, image_size=meta.image_size)
    net = build_backbone(spec, weights=weights, image_size=meta.image_size)  # format 1: the head's layers sit flat
    net.name = BACKBONE
    inputs = keras.Input(shape=(meta.image_size, meta.image_size, 3), name=INPUT)
    features = net(Preprocess(spec.preprocessing, name=PREPROCESSOR)(inputs))
    return keras.Model(inputs, head.build(features, outputs), name="transferkit_" + re.sub(r"\W", "_", spec.name)[-60:])


def _outline(config: dict[str, Any]) -> list[tuple[Any, Any, list[Any]]]:
    """Class and name of every layer, nested models opened (the model's own name left out)."""
    return [(layer.get("class_name"), layer.get("config", {}).get("name"), _outline(layer.get("config", {})))
            for layer in config.get("layers") or ()]


def _walk(saved: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for layer in saved.get("config", {}).get("layers") or ():
        yield layer
        yield from _walk(layer)


def _layer_config(saved: dict[str, Any], class_name: str) -> dict[str, Any]:
    """The config of the (first) saved layer of class ``class_name``; empty when there is none."""
    found = next((layer for layer in _walk(saved) if layer.get("class_name") == class_name), None)
    return found.get("config", {}) if found is not None else {}


def _feature_dim(saved: dict[str, Any]) -> int | None:
    """The feature size the head takes, when the saved model has a nested head (format 2)."""
    head = next((layer for layer in _walk(saved) if layer.get("config", {}).get("name") == HEAD), None)
    inputs = _layer_config(head, "InputLayer") if head is not None else {}
    shape = inputs.get("batch_shape") or [None]
    return shape[-1] if isinstance(shape[-1], int) else None


def _restore_flags(layer: keras.layers.Layer, saved: dict[str, Any]) -> None:
    """Set ``trainable`` (and a Hub layer's ``pass_training``) as saved, a model before its layers:
    setting it on a model sets it on all of them."""
    config = saved.get("config", {})
    if isinstance(config.get("trainable"), bool):
        layer.trainable = config["trainable"]
    if isinstance(layer, HubLayer) and isinstance(config.get("pass_training"), bool):
        layer.pass_training = config["pass_training"]
    if isinstance(layer, keras.Model):
        for child in config.get("layers") or ():
            _restore_flags(layer.get_layer(child["config"]["name"]), child)
