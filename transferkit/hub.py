"""TensorFlow Hub models as Keras 3 backbones — fine-tunable, savable — and the way back.

``hub.KerasLayer`` is a tf-keras (Keras 2) layer: a Keras 3 model refuses it ("Only instances of
`keras.Layer` can be added…"). :class:`HubLayer` is a Keras 3 layer instead. Like
``keras.layers.TFSMLayer`` it wraps the SavedModel's own ``tf.Variable`` objects in Keras
variables without copying them — so fine-tuning updates the module — but it also gives them
names optimizers accept (``w:0`` breaks slot-variable scopes), honours ``trainable``, passes
``training`` to modules that take it, and serialises its handle.

A handle is a URL (``https://tfhub.dev/…``, ``https://www.kaggle.com/models/…``, resolved through
``tensorflow_hub``'s cache and ``TFHUB_CACHE_DIR``), a local directory holding a SavedModel, or a
``hub:NAME`` short name from :func:`register_hub_backbone`.

Example:
    >>> spec = register_hub_backbone("my_mobilenet", "/models/mobilenet_feature_vector", input_size=224)
    >>> tuner = FineTuner("hub:my_mobilenet", weights="imagenet")
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from transferkit._errors import ConfigError, DataError, MissingDependencyError, WeightsUnavailableError
from transferkit._model import with_preprocessing
from transferkit._types import PathLike, Weights
from transferkit.backbones._groups import GroupRule
from transferkit.backbones._registry import (
    BackboneSpec,
    get_backbone,
    list_backbones,
    register_backbone,
    register_resolver,
)

__all__ = ["HubLayer", "export_hub_module", "hub_backbone", "register_hub_backbone", "resolve_handle"]

HUB_LAYER = "hub_module"
_HUB_GROUPS = GroupRule(blocks=(rf"^({HUB_LAYER})$",))


def _is_url(handle: str) -> bool:
    return handle.startswith(("http://", "https://"))


def resolve_handle(handle: PathLike) -> str:
    """A local directory for ``handle`` (URLs go through tensorflow_hub's cache).

    Raises:
        WeightsUnavailableError: a directory without a SavedModel, or a URL that cannot be fetched.
    """
    text = str(handle)
    if not _is_url(text):
        path = Path(text).expanduser()
        if not _holds_savedmodel(text):
            raise WeightsUnavailableError(
                f"Hub handle {text!r} is not a URL and not a directory holding a SavedModel (saved_model.pb). "
                "Pass the folder you unpacked the model into."
            )
        return str(path)
    try:
        return _fetch(text)
    except _FetchFailed as failure:
        raise WeightsUnavailableError(
            f"Could not fetch Hub model {text!r} ({failure}). "
            "Without network access, download it elsewhere, unpack it into a folder and pass that folder "
            f"as the handle (or place it in {_hub_cache()})."
        ) from None


def _holds_savedmodel(folder: str) -> bool:
    return (Path(folder).expanduser() / "saved_model.pb").is_file()


def _hub_cache() -> str:
    folder = os.environ.get("TFHUB_CACHE_DIR")
    return f"the tensorflow_hub cache (TFHUB_CACHE_DIR{'=' + folder if folder else ''})"


class _FetchFailed(Exception):
    """tensorflow_hub could not resolve a URL; the message is the short reason."""


def _fetch(url: str) -> str:
    """The local folder tensorflow_hub resolves ``url`` to (from its cache, else downloaded)."""
    try:
        import tensorflow_hub as hub
    except ImportError:
        raise MissingDependencyError("Hub URLs need tensorflow-hub. Fix: pip install tensorflow-hub") from None
    try:
        return str(hub.resolve(url))
    except Exception as error:  # tensorflow_hub raises assorted network errors
        raise _FetchFailed(f"{type(error).__name__}: {str(error).splitlines()[0][:160]}") from None


def _handle_of(handle: str) -> str:
    """The URL or folder behind ``handle`` (``hub:NAME`` is looked up in the registry)."""
    if not handle.startswith("hub:"):
        return handle
    spec = get_backbone(handle)
    if spec.handle is None:
        raise ConfigError(f"Backbone {handle!r} is not a TensorFlow Hub module (it has no handle).")
    return spec.handle


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name.split(":")[0]) or "variable"


@keras.saving.register_keras_serializable(package="transferkit")
class HubLayer(keras.layers.Layer):
    """A TensorFlow Hub / SavedModel module as a Keras 3 layer.

    Args:
        handle: URL, local SavedModel directory, or ``hub:NAME``.
        signature: Call this serving signature instead of the module's ``__call__``.
        output_key: Output of a signature that returns a dict (the only one when omitted).
        pass_training: Forward Keras' ``training`` flag to the module. Off by default, so
            BatchNorm inside the module stays in inference mode while fine-tuning (freeze
            policies set it from their ``train_batchnorm``).
        trainable: Whether the module's variables train (all or nothing).
    """

    def __init__(
        self,
        handle: str,
        *,
        signature: str | None = None,
        output_key: str | None = None,
        pass_training: bool = False,
        trainable: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(trainable=trainable, **kwargs)
        self.handle = str(handle)
        self.signature = signature
        self.output_key = output_key
        self.pass_training = pass_training
        path = resolve_handle(_handle_of(self.handle))
        module = tf.saved_model.load(path)
        object.__setattr__(self, "_module", module)  # keep TensorFlow's object out of Keras tracking
        if signature is None and callable(module) and hasattr(module, "variables"):
            fn, self._takes_training = module.__call__, True
            variables = list(module.variables)
            trainable_refs = {v.ref() for v in getattr(module, "trainable_variables", variables)}
        else:
            name = signature or "serving_default"
            if name not in module.signatures:
                raise ConfigError(
                    f"Hub module {self.handle!r} has no signature {name!r}; it has {sorted(module.signatures)}."
                )
            fn, self._takes_training = module.signatures[name], False
            variables = list(fn.variables)
            trainable_refs = {v.ref() for v in fn.trainable_variables}
        object.__setattr__(self, "_fn", fn)
        seen: set[str] = set()
        for variable in variables:
            name = _safe_name(variable.name)
            while name in seen:
                name += "_"
            seen.add(name)
            wrapped = keras.Variable(initializer=variable, trainable=variable.ref() in trainable_refs,
                                     dtype=variable.dtype, shape=variable.shape, name=name)
            self._track_variable(wrapped)
        self.built = True

    @property
    def module(self) -> tf.Module:
        """The loaded SavedModel; its ``tf.Variable`` objects are this layer's weights, not copies."""
        return self._module

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = tf.convert_to_tensor(inputs, dtype=tf.float32)
        if self._takes_training:
            outputs = self._fn(x, training=bool(training and self.pass_training and self.trainable))
        else:
            outputs = self._fn(x)
        if isinstance(outputs, dict):
            if self.output_key is not None:
                return outputs[self.output_key]
            if len(outputs) != 1:
                raise ConfigError(
                    f"Hub module {self.handle!r} returns {sorted(outputs)}; pass output_key=… to choose one."
                )
            return next(iter(outputs.values()))
        return outputs

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "handle": self.handle, "signature": self.signature,
                "output_key": self.output_key, "pass_training": self.pass_training}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> HubLayer:
        from keras.src.saving import serialization_lib  # Keras keeps its safe-mode flag here

        if serialization_lib.in_safe_mode() is not False:
            raise WeightsUnavailableError(
                f"This model holds a TensorFlow Hub module ({config.get('handle')!r}); deserialising it would "
                "load and run whatever SavedModel the file names, which safe mode refuses. A run saved by "
                "FineTuner loads safely with FineTuner.load(run_dir) (the module comes from the handle the run "
                "recorded, only weights from the file); a .keras file of your own that you trust loads with "
                "keras.saving.load_model(path, safe_mode=False)."
            )
        return cls(**config)


def _hub_constructor(handle: str, signature: str | None, output_key: str | None
                     ) -> Callable[..., keras.Model]:
    def build(*, input_shape: tuple[int, int, int], weights: Weights) -> keras.Model:
        if weights not in ("imagenet", None) and not isinstance(weights, str):
            raise ConfigError("Hub backbones carry their own weights: pass weights='imagenet'.")
        if weights is None:
            raise WeightsUnavailableError("A Hub module comes with its own weights; weights=None is not possible.")
        inputs = keras.Input(shape=input_shape, name="image")
        outputs = HubLayer(handle, signature=signature, output_key=output_key, name=HUB_LAYER)(inputs)
        return keras.Model(inputs, outputs, name="hub_backbone")

    return build


def _probe(handle: str, signature: str | None, output_key: str | None, input_size: int | None) -> tuple[int, int]:
    layer = HubLayer(handle, signature=signature, output_key=output_key)
    size = input_size
    if size is None:
        functions = getattr(layer._fn, "concrete_functions", None) or [layer._fn]  # restored tf.function
        flat = [s for f in functions for s in tf.nest.flatten(getattr(f, "structured_input_signature", None) or [])]
        dims = [s.shape for s in flat if isinstance(s, tf.TensorSpec) and s.shape.rank == 4]
        size = int(dims[0][1]) if dims and dims[0][1] is not None else 224
    features = layer(tf.zeros((1, size, size, 3)))
    return size, int(features.shape[-1])


def hub_backbone(
    handle: PathLike,
    *,
    name: str | None = None,
    input_size: int | None = None,
    feature_dim: int | None = None,
    signature: str | None = None,
    output_key: str | None = None,
    preprocessing: str = "unit",
) -> BackboneSpec:
    """A :class:`BackboneSpec` for a Hub module (not registered; see :func:`register_hub_backbone`).

    The input size is read from the module's signature where it is fixed, else 224; the feature
    size is measured with one call. Hub image modules take floats in [0, 1] (``"unit"``).
    """
    text = str(handle)
    if not _is_url(text) and not text.startswith("hub:"):
        # a saved run records this handle: a relative folder would not resolve from another directory
        text = os.path.abspath(os.path.expanduser(text))
    if input_size is None or feature_dim is None:
        size, features = _probe(text, signature, output_key, input_size)
        input_size, feature_dim = input_size or size, feature_dim or features
    return BackboneSpec(
        name=name or f"hub:{handle}",
        family="hub",
        constructor=_hub_constructor(text, signature, output_key),
        input_size=input_size,
        min_size=8,
        preprocessing=preprocessing,
        feature_dim=feature_dim,
        groups=_HUB_GROUPS,
        description=f"TensorFlow Hub module {text}",
        source="hub",
        handle=text,
    )


def register_hub_backbone(name: str, handle: PathLike, *, overwrite: bool = False,
                          **options: Any) -> BackboneSpec:
    """Register a Hub module under ``hub:NAME`` so FineTuner, the CLI and saved models can name it."""
    key = name if name.startswith("hub:") else f"hub:{name}"
    return register_backbone(hub_backbone(handle, name=key, **options), overwrite=overwrite)


def export_hub_module(model: keras.Model, directory: PathLike, *,
                      backbone: str | BackboneSpec | None = None) -> Path:
    """Write ``model`` as a TF2 SavedModel in the Hub format (``hub.load`` and :class:`HubLayer` read it).

    The module takes images as floats in [0, 1] (the Hub convention) and returns what the model
    returns. Pass a bare backbone with ``backbone=`` (its name or spec) to export a feature-vector
    module: its preprocessing is applied inside and the feature map is average-pooled.
    The module exposes ``__call__(images, training=False)``, ``variables``,
    ``trainable_variables``, ``regularization_losses`` and a ``serving_default`` signature.
    """
    size = int(model.input_shape[1])
    inputs = keras.Input((size, size, 3), name="image_unit")
    raw = keras.layers.Rescaling(255.0, name="to_pixels")(inputs)
    if backbone is not None:
        x = with_preprocessing(model, get_backbone(backbone).preprocessing, name="raw_pixel_backbone")(raw)
        outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x) if len(x.shape) == 4 else x
    else:
        outputs = model(raw)
    wrapper = keras.Model(inputs, outputs)

    module = tf.train.Checkpoint()
    call = tf.function(lambda images, training=False: wrapper(images, training=training))
    spec_in = tf.TensorSpec([None, size, size, 3], tf.float32)
    for training in (False, True):
        call.get_concrete_function(spec_in, training=training)
    module.__call__ = call
    module.variables = [v.value for v in wrapper.variables]
    module.trainable_variables = [v.value for v in wrapper.trainable_variables]
    module.regularization_losses = []
    serve = tf.function(lambda images: {"outputs": wrapper(images, training=False)}, input_signature=[spec_in])
    out = Path(directory)
    tf.saved_model.save(module, str(out), signatures={"serving_default": serve})
    return out


def hub_backbone_of_run(
    name: str,
    recorded_handle: str,
    *,
    run: str,
    input_size: int,
    feature_dim: int | None,
    preprocessing: str,
    layer_config: dict[str, Any],
) -> BackboneSpec:
    """The Hub backbone a saved run was trained on, to build its model again (see ``_saving.load_run``).

    The module is the one registered under the run's backbone name, if any (that is how a module
    that moved is pointed at), else the one at the handle the run recorded. How it is called
    (``signature``, ``output_key``) and the preprocessing are what the saved model used, read from
    its config as plain values.

    Raises:
        DataError: the module is no longer where the run says; the message names it and the fix.
    """
    handle = recorded_handle
    if name in list_backbones(family="hub"):
        handle = get_backbone(name).handle or recorded_handle
    register = f"transferkit.hub.register_hub_backbone({name!r}, '/path/to/module')"
    if not _is_url(handle) and not _holds_savedmodel(handle):
        raise DataError(
            f"The run {run!r} needs the TensorFlow Hub module it was trained on, at {handle!r}, and that folder no "
            f"longer holds it (no saved_model.pb). Fix: put the module back at {handle}, or register where it is now "
            f"under the run's backbone name before loading: {register}."
        )
    if _is_url(handle):
        try:
            _fetch(handle)
        except _FetchFailed as failure:
            raise DataError(
                f"The run {run!r} needs the TensorFlow Hub module it was trained on, {handle!r}, which could not "
                f"be fetched ({failure}). Fix: place it in {_hub_cache()}, or unpack a copy into a folder and "
                f"register it under the run's backbone name before loading: {register}."
            ) from None
    return hub_backbone(handle, name=name, input_size=input_size, feature_dim=feature_dim,
                        signature=layer_config.get("signature"), output_key=layer_config.get("output_key"),
                        preprocessing=preprocessing)


def _resolve(name: str) -> BackboneSpec | None:
    """The registry's resolver for names it does not hold: Hub URLs and SavedModel folders (a folder with a
    ``config.json`` and no SavedModel is a KerasHub preset, which ``backbones._kerashub`` resolves)."""
    preset = os.path.isfile(os.path.join(name, "config.json")) and not _holds_savedmodel(name)
    if name.startswith(("http://", "https://")) or (os.path.isdir(name) and not preset):
        return hub_backbone(name)
    return None


register_resolver(_resolve)
