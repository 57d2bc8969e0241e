"""KerasHub presets and preset folders as backbones.

KerasHub (``pip install "transferkit[keras-hub]"``) holds Keras' current model zoo: EfficientNet and
EfficientNet-Lite, MobileNet, ResNet, ViT, DeiT, DINOv2/v3, SigLIP, CLIP and more. Any of these names
works wherever a backbone name does (``FineTuner(...)``, ``--backbone``, configs, searches):

* a preset name the installed ``keras-hub`` knows (``"efficientnet_lite0_ra_imagenet"``, ``"dinov2_small"``);
* a handle: ``kaggle://…``, ``hf://…``;
* a local folder: a Keras preset (``config.json`` + ``model.weights.h5``, written by ``save_to_preset``) or
  a timm / transformers checkpoint (``config.json`` + ``model.safetensors``), which KerasHub converts on load.

The spec is read from the preset itself: input size and preprocessing from its image converter (scale
and offset, as a ``Rescaling`` layer inside the model), the feature size by building the network,
and named layer groups per family (a CNN's stages; a transformer's blocks, one group each).

Each family's features are pooled the way its authors probe them (see :data:`FAMILIES`): the head
averages a CNN's feature map; ViT, DeiT and CLIP give their class token; DINOv2 and DINOv3 the class
token beside the mean patch token; SigLIP its attention-pooled output. The pooling is built into the
backbone with built-in Keras layers, so a saved ``model.keras`` loads with ``keras`` and ``keras_hub``.

Example:
    >>> tuner = FineTuner("../shared/weights/efficientnet_lite0_timm", weights="imagenet")
    >>> spec = kerashub_backbone("dinov2_small")  # downloads on first use
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from transferkit._errors import ConfigError, MissingDependencyError, WeightsUnavailableError
from transferkit._types import Weights
from transferkit.backbones._groups import GroupRule
from transferkit.backbones._preprocessing import affine_mode
from transferkit.backbones._registry import BackboneSpec, register_resolver

log = logging.getLogger("transferkit")

INSTALL = 'pip install "transferkit[keras-hub]"'
HANDLE_PREFIXES = ("kaggle://", "hf://", "modelscope://")
SOURCE = "keras_hub"

# what a pooled backbone ends in (built-in layers only)
_CLASS_TOKEN = "class_token"
_PATCH_MEAN = "patch_mean"


@dataclass(frozen=True)
class Family:
    """How transferkit uses one KerasHub backbone class.

    Attributes:
        name: Family name in tables (``"efficientnet"``, ``"dinov2"``).
        pooling: ``"map"`` (a feature map; the head averages it), ``"class_token"``,
            ``"class_and_patch_mean"`` (class token concatenated with the mean patch token) or
            ``"pooled"`` (the network pools itself).
        groups: Named layer groups (stem, blocks, top).
        tower: Attribute of the backbone holding the image network, for image–text models.
        fixed_size: The weights fit one input size only (learnt position embeddings).
        why: Where the pooling comes from, for the docs and ``transferkit backbones``.
    """

    name: str
    pooling: str
    groups: GroupRule
    tower: str | None = None
    fixed_size: bool = False
    why: str = ""


NETWORK = "network"  # a transformer's KerasHub network, nested whole in the backbone


def _transformer(blocks: str, *, inner: str = "", stem: str, top: str) -> GroupRule:
    """Groups of a transformer nested as ``network``: ``inner`` names the encoder layer to open too."""
    return GroupRule(inner=rf"^{NETWORK}(/{inner})?$" if inner else rf"^{NETWORK}$", blocks=(blocks,),
                     stem=stem, top=top)


_TOWER = _transformer(r"/(encoder_block_\d+)$", stem=r"/(images|\w*embedding|\w*pre_layer_norm)$",
                      top=r"/(\w*post_layer_norm|\w*layer_norm|\w*head)$")
_CNN = "a CNN: global average pooling of the last feature map, as its classifier does"

FAMILIES: dict[str, Family] = {
    "EfficientNetBackbone": Family(
        "efficientnet", "map", GroupRule(blocks=(r"^block(\d)[a-z]_",), stem=r"^stem_", top=r"^top_"), why=_CNN),
    "ResNetBackbone": Family(
        "resnet", "map", GroupRule(blocks=(r"^stack(\d+)_",), stem=r"^(conv1|pool1)_", top=r"^post_"), why=_CNN),
    "ViTBackbone": Family(
        "vit", _CLASS_TOKEN,
        _transformer(r"/(transformer_block_\d+)$", inner=r"vit_encoder", stem=r"/(images|\w*patching_and_embedding)$",
                     top=r"/ln$"),
        fixed_size=True, why="the class token, which ViT's authors train the classifier on"),
    "DeiTBackbone": Family(
        "deit", _CLASS_TOKEN,
        _transformer(r"/(transformer_block_\d+)$", inner=r"deit_encoder",
                     stem=r"/(input_layer|\w*patching_and_embedding)$", top=r"/ln$"),
        fixed_size=True, why="the class token (DeiT's distillation token is left out)"),
    "DINOV2Backbone": Family(
        "dinov2", "class_and_patch_mean",
        _transformer(r"/(layers_\d+)$", inner=r"\w*encoder", stem=r"/(images|\w*embeddings)$", top=r"layernorm$"),
        why="the class token concatenated with the mean patch token, DINOv2's linear-probe features"),
    "DINOV3Backbone": Family(
        "dinov3", "class_and_patch_mean",
        _transformer(r"/(\w*encoder)$", stem=r"/(pixel_values|\w*embeddings|\w*rope_embedding)$", top=r"layernorm$"),
        why="the class token concatenated with the mean patch token, as for DINOv2"),
    "SigLIPBackbone": Family(
        "siglip", "pooled", _TOWER, tower="vision_encoder", fixed_size=True,
        why="SigLIP's attention-pooled output (its MAP head), the image embedding it was trained with"),
    "CLIPBackbone": Family(
        "clip", _CLASS_TOKEN, _TOWER, tower="vision_encoder", fixed_size=True,
        why="the normalised class token, which CLIP projects into its image embedding"),
    "MetaCLIP2Backbone": Family(
        "metaclip2", _CLASS_TOKEN, _TOWER, tower="vision_encoder", fixed_size=True,
        why="the normalised class token, as for CLIP"),
}

# Any other image backbone: one block (every layer but the input), trained whole or not at all, as a
# Hub module is, and its feature map averaged.
_OTHER = Family("keras_hub", "map", GroupRule(blocks=(r"^()",)), why="global average pooling of the feature map")


def keras_hub() -> Any:
    """The ``keras_hub`` module, or a MissingDependencyError saying how to install it."""
    try:
        import keras_hub as module
    except ImportError:
        raise MissingDependencyError(f"KerasHub backbones need the keras-hub package. Fix: {INSTALL}") from None
    return module


def is_installed() -> bool:
    """Whether keras-hub can be imported (without importing it)."""
    return importlib.util.find_spec("keras_hub") is not None


def _is_preset_folder(name: str) -> bool:
    folder = Path(name).expanduser()
    return folder.is_dir() and (folder / "config.json").is_file() and not (folder / "saved_model.pb").exists()


@functools.lru_cache(maxsize=1)
def _known_presets() -> frozenset[str]:
    return frozenset(keras_hub().models.Backbone.presets) if is_installed() else frozenset()


def is_kerashub_handle(name: str) -> bool:
    """Whether ``name`` is a KerasHub handle, a preset folder, or a preset the installed keras-hub knows."""
    if name.startswith(HANDLE_PREFIXES) or _is_preset_folder(name):
        return True
    plain = name.isidentifier()  # preset names are; URLs, paths and "hub:NAME" are not
    return plain and name in _known_presets()


def _handle(name: str) -> str:
    """``name`` as recorded in a spec (and a saved run): a folder as an absolute path."""
    if _is_preset_folder(name):
        return os.path.abspath(os.path.expanduser(name))
    return name


def _from_preset(handle: str, **kwargs: Any) -> Any:
    """``keras_hub.models.Backbone.from_preset(handle, **kwargs)``, with errors that say what to do."""
    try:
        return keras_hub().models.Backbone.from_preset(handle, **kwargs)
    except ImportError as error:  # reading timm / transformers folders needs safetensors
        raise MissingDependencyError(f"Loading {handle!r} needs {error.name or 'a package'}. Fix: {INSTALL}") from None
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:300]
        if handle.startswith(HANDLE_PREFIXES) or not os.path.isdir(handle):
            raise WeightsUnavailableError(
                f"Could not load the KerasHub preset {handle!r} ({reason}). Without network access, save it with "
                "save_to_preset on a machine that has one, copy the folder here, and pass the folder."
            ) from None
        raise WeightsUnavailableError(f"Could not load the KerasHub preset folder {handle!r}: {reason}") from None


@functools.lru_cache(maxsize=64)
def _shape_option(handle: str) -> tuple[str | None, int | None]:
    """The config key that sets the preset's input size (``image_shape`` or ``input_shape``) and its size."""
    config = _from_preset(handle, load_weights=False).get_config()
    key = next((k for k in ("image_shape", "input_shape") if k in config), None)
    return key, (next(iter(config[key] or (None,))) if key else None)


def _load(handle: str, *, load_weights: bool, image_size: int | None = None) -> Any:
    """The preset's backbone, built at ``image_size`` (its own size when ``None``)."""
    key, size = _shape_option(handle)
    if image_size is None or key is None or size == image_size:
        return _from_preset(handle, load_weights=load_weights)
    try:  # the loader adapts what depends on the size (DINOv2 interpolates its position embeddings)
        return _from_preset(handle, load_weights=load_weights, **{key: (image_size, image_size, 3)})
    except WeightsUnavailableError:
        if size is None:
            raise
        raise WeightsUnavailableError(
            f"The weights of {handle!r} fit image_size={size} only (its position embeddings are learnt for that "
            f"size). Received: image_size={image_size}."
        ) from None


def _converter(handle: str) -> dict[str, Any]:
    """The preset's image converter config (scale, offset, image size, interpolation, crop), or ``{}``."""
    hub = keras_hub()
    try:
        return dict(hub.layers.ImageConverter.from_preset(handle).get_config())
    except Exception:  # presets without an image converter raise assorted errors
        return {}


def _family(backbone: Any) -> Family:
    return FAMILIES.get(type(backbone).__name__, _OTHER)


def _tower(backbone: Any, family: Family) -> keras.Model:
    return getattr(backbone, family.tower) if family.tower else backbone


def _pooled(tower: keras.Model, family: Family, *, registers: int) -> keras.Model:
    """The image network as transferkit's backbone, ending in the family's pooling (built-in layers).

    A CNN's layers become the backbone's own (standard Keras layers, saved one by one), so that
    feature caching can cut it between any two stages. A transformer is nested whole as
    ``network``: KerasHub's transformer layers are saved and loaded through their network's config.
    """
    nested = family.pooling != "map"
    if nested:
        tower.name = NETWORK
        x = keras.Input(tower.inputs[0].shape[1:], name="images")
        y = tower(x)
    else:
        x = tower.inputs[0]
        y = tower.outputs[0] if isinstance(tower.outputs, list) else tower.outputs
    if isinstance(y, dict):
        raise ConfigError(f"{type(tower).__name__} returns several outputs; transferkit needs one image feature.")
    if family.pooling in (_CLASS_TOKEN, "class_and_patch_mean") and len(y.shape) == 3:
        tokens = int(y.shape[1])
        first = keras.layers.Cropping1D((0, tokens - 1), name="class_token_crop")(y)
        token = keras.layers.Flatten(name=_CLASS_TOKEN)(first)
        if family.pooling == _CLASS_TOKEN:
            y = token
        else:
            patches = keras.layers.Cropping1D((1 + registers, 0), name="patch_tokens")(y)
            mean = keras.layers.GlobalAveragePooling1D(name=_PATCH_MEAN)(patches)
            y = keras.layers.Concatenate(name="class_and_patch_mean")([token, mean])
    elif len(y.shape) == 3:
        y = keras.layers.GlobalAveragePooling1D(name="token_mean")(y)
    return keras.Model(x, y, name="keras_hub_backbone")


def _constructor(handle: str, family: Family, registers: int) -> Callable[..., keras.Model]:
    def build(*, input_shape: tuple[int, int, int], weights: Weights) -> keras.Model:
        if weights not in ("imagenet", None):
            raise ConfigError(
                f"A KerasHub backbone takes weights='imagenet' (the preset's own weights) or None (random). "
                f"Received: weights={weights!r}. To use other weights, save them as a preset folder and pass it."
            )
        backbone = _load(handle, load_weights=weights == "imagenet", image_size=input_shape[0])
        return _pooled(_tower(backbone, family), family, registers=registers)

    return build


def _classifier_constructor(handle: str) -> Callable[..., keras.Model]:
    """The preset with its own classifier (``ImageClassifier.from_preset``), taking preprocessed images."""
    def build(*, input_shape: tuple[int, int, int], weights: Weights) -> keras.Model:
        if weights not in ("imagenet", None):
            raise ConfigError(f"A KerasHub classifier takes weights='imagenet' or None. Received: weights={weights!r}.")
        try:
            task = keras_hub().models.ImageClassifier.from_preset(handle, load_weights=weights == "imagenet",
                                                                  activation="softmax")  # logits by default
        except ImportError as error:
            raise MissingDependencyError(f"Loading {handle!r} needs {error.name or 'a package'}. "
                                         f"Fix: {INSTALL}") from None
        except (OSError, ValueError, KeyError) as error:
            raise WeightsUnavailableError(
                f"KerasHub preset {handle!r} has no image classifier ({' '.join(str(error).split())[:200]})."
            ) from None
        images = keras.Input(input_shape, name="images")
        return keras.Model(images, task(images), name="keras_hub_classifier")

    return build


@functools.lru_cache(maxsize=32)
def kerashub_backbone(preset: str) -> BackboneSpec:
    """A :class:`~transferkit.BackboneSpec` for a KerasHub preset name, handle or folder (not registered).

    The network is built once, without its weights, to read its input size, feature size and
    parameter count. Nothing is downloaded for a folder.

    Raises:
        MissingDependencyError: keras-hub is not installed.
        WeightsUnavailableError: the preset cannot be read.
    """
    handle = _handle(str(preset))
    converter = _converter(handle)
    probe = _load(handle, load_weights=False)
    family = _family(probe)
    tower = _tower(probe, family)
    config = tower.get_config()
    size = _first(converter.get("image_size") or config.get("image_shape"), 224)
    if tower.input_shape[1] not in (None, size):
        size = int(tower.input_shape[1])
    registers = int(config.get("num_register_tokens", 0) or 0)
    constructor = _constructor(handle, family, registers)
    net = constructor(input_shape=(size, size, 3), weights=None) if tower.input_shape[1] != size else _pooled(
        tower, family, registers=registers)
    if converter:
        preprocessing = affine_mode(converter.get("scale") or 1.0, converter.get("offset") or 0.0)
    else:
        log.warning("KerasHub preset %r has no image converter; assuming ImageNet mean and std.", handle)
        preprocessing = "torch"
    feature_dim = int(net.output_shape[-1])
    patch = _first(config.get("patch_size"), 1)
    detail = ", ".join(f"{key} {converter[key]}" for key in ("interpolation", "crop_to_aspect_ratio")
                       if key in converter)
    return BackboneSpec(
        name=handle,
        family=family.name,
        constructor=constructor,
        classifier_constructor=_classifier_constructor(handle),
        input_size=int(size),
        min_size=max(32, patch),
        weight_sizes=(int(size),) if family.fixed_size else None,
        preprocessing=preprocessing,
        feature_dim=feature_dim,
        groups=family.groups,
        description=f"KerasHub {type(probe).__name__} ({family.pooling} features{'; ' + detail if detail else ''})",
        source=SOURCE,
        params=int(tower.count_params()),
    )


def _first(value: Any, default: int) -> int:
    """The first number of a size or shape in a config (a number, a list or a tuple; ``None`` → ``default``)."""
    values = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") else [value]
    return int(values[0]) if values and values[0] is not None else default


def _cache_folder(kaggle_handle: str) -> Path:
    """Where kagglehub keeps a downloaded model version (``KAGGLEHUB_CACHE``, default ``~/.cache/kagglehub``)."""
    base = Path(os.environ.get("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub")
    return base / "models" / kaggle_handle.removeprefix("kaggle://")


_IMAGE_PATHS = {"efficientnet", "mobilenet", "mobilenetv5", "resnet", "resnet_vd", "densenet", "vgg", "xception",
                "cspnet", "hgnetv2", "vit", "deit", "dinov2", "dinov3", "siglip", "clip", "metaclip_2", "mit",
                "swin_transformer"}


def list_kerashub_presets(filter: str | None = None) -> list[dict[str, Any]]:
    """The image backbone presets the installed keras-hub knows, as table rows (empty without keras-hub).

    Each row has ``name``, ``family``, ``params`` and ``weights`` (``"local"`` when kagglehub's cache
    holds them, else ``"download on first use"``).
    """
    if not is_installed():
        return []
    rows = []
    for name, preset in sorted(keras_hub().models.Backbone.presets.items()):
        meta = preset.get("metadata", {})
        family = str(meta.get("path", ""))
        if family not in _IMAGE_PATHS or (filter and filter.lower() not in name.lower()):
            continue
        handle = str(preset.get("kaggle_handle", ""))
        local = handle.startswith("kaggle://") and _cache_folder(handle).is_dir()
        params = meta.get("params")
        rows.append({"name": name, "family": family, "params": f"{params / 1e6:.1f}M" if params else "?",
                     "weights": "local" if local else "download on first use",
                     "description": str(meta.get("description", "")).split(". ")[0][:70]})
    return rows


def uses_keras_hub(model_file: Path) -> bool:
    """Whether a ``.keras`` file holds KerasHub layers (its architecture names ``keras_hub``)."""
    try:
        with zipfile.ZipFile(model_file) as archive:
            return b'"keras_hub' in archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return False


def _resolve(name: str) -> BackboneSpec | None:
    """The registry's resolver: KerasHub handles, preset folders and preset names."""
    if not is_kerashub_handle(name):
        return None
    return kerashub_backbone(name)


register_resolver(_resolve)
