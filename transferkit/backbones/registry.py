"""The backbone registry: a name → frozen :class:`BackboneSpec` table."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras

from transferkit.backbones.groups import GroupRule
from transferkit.errors import BackboneExistsError, ConfigError, UnknownBackboneError, closest
from transferkit.preprocessing import PREPROCESSING_MODES


@dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """Everything transferkit needs to know about one pretrained network.

    Attributes:
        name: Registry name, lower case (``"mobilenet_v2"``).
        family: Family name shared by sizes of one architecture (``"efficientnet"``).
        constructor: Called as ``constructor(input_shape=(h, w, 3), weights=None | "imagenet")``
            and returns a headless ``keras.Model`` whose output is the feature map.
        classifier_constructor: Same call, returning the network with its original classifier;
            lets a "full" weights file be loaded into the headless network. Optional.
        input_size: Default square input size in pixels.
        min_size: Smallest accepted input size.
        weight_sizes: Sizes the pretrained weights were trained at, or ``None`` for any.
        preprocessing: Key of ``PREPROCESSING_MODES`` — the contract for raw 0–255 input.
        feature_dim: Channels of the feature map (the size of the pooled feature vector).
        groups: How to split the network into stem, blocks and top.
        description: One line for tables.
        source: ``"keras.applications"``, ``"test"`` or ``"user"``.
        params: Parameter count of the headless network (for tables; checked by the tests).
        offline_weights: File name, in ``transferkit/assets``, of ImageNet weights shipped with
            the package (by layer name, classifier included); used when the download fails.

    Example:
        >>> spec = get_backbone("mobilenet")
        >>> spec.feature_dim, spec.preprocessing
        (1024, 'tf')
    """

    name: str
    family: str
    constructor: Callable[..., keras.Model] = field(repr=False, compare=False)
    classifier_constructor: Callable[..., keras.Model] | None = field(default=None, repr=False, compare=False)
    input_size: int
    min_size: int = 32
    weight_sizes: tuple[int, ...] | None = None
    preprocessing: str
    feature_dim: int
    groups: GroupRule = field(repr=False)
    description: str = ""
    source: str = "user"
    offline_weights: str | None = None
    params: int | None = None

    def __post_init__(self) -> None:
        if self.preprocessing not in PREPROCESSING_MODES:
            raise ConfigError(
                f"Expected preprocessing to be one of {sorted(PREPROCESSING_MODES)}. "
                f"Received: preprocessing={self.preprocessing!r} for backbone {self.name!r}."
            )
        if self.input_size < self.min_size:
            raise ConfigError(
                f"Backbone {self.name!r}: input_size={self.input_size} is below min_size={self.min_size}."
            )

    def check_size(self, size: int) -> int:
        """Return ``size`` if the network accepts it, else raise a ConfigError saying why."""
        if not isinstance(size, int) or isinstance(size, bool) or size < self.min_size:
            raise ConfigError(
                f"Backbone {self.name!r} needs image_size >= {self.min_size}. Received: image_size={size!r}. "
                f"Its default is {self.input_size}."
            )
        return size


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add ``spec`` to the registry and return it.

    Args:
        spec: The backbone to register; its ``name`` is the registry key.
        overwrite: Replace an existing entry of the same name instead of raising.

    Raises:
        BackboneExistsError: ``spec.name`` is taken and ``overwrite`` is False.
    """
    if spec.name in _REGISTRY and not overwrite:
        raise BackboneExistsError(
            f"A backbone named {spec.name!r} is already registered. "
            "Pick another name, or pass overwrite=True to replace it."
        )
    _REGISTRY[spec.name] = spec
    return spec


def get_backbone(name: str | BackboneSpec) -> BackboneSpec:
    """Look up a backbone by name (a spec is returned as it is).

    A TensorFlow Hub URL or a local SavedModel folder gives a Hub backbone spec
    (see :func:`transferkit.hub.hub_backbone`); ``hub:NAME`` finds one registered with
    :func:`transferkit.hub.register_hub_backbone`.

    Raises:
        UnknownBackboneError: no such name; the message lists the closest names.
    """
    if isinstance(name, BackboneSpec):
        return name
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    if isinstance(name, str) and (name.startswith(("http://", "https://")) or os.path.isdir(name)):
        from transferkit.hub import hub_backbone  # a Hub handle: URL or SavedModel folder

        return hub_backbone(name)
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key in _REGISTRY:
        return _REGISTRY[key]
    near = closest(str(name), _REGISTRY) or closest(str(name).replace("_", ""), _REGISTRY)
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    raise UnknownBackboneError(
        f"Unknown backbone {name!r}.{hint} Run `transferkit backbones` or call "
        "transferkit.list_backbones() to see all names."
    )


def list_backbones(*, family: str | None = None, include_test: bool = False) -> list[str]:
    """Names of the registered backbones, sorted.

    Args:
        family: Only this family (``"resnet"``, ``"efficientnet"`` …).
        include_test: Also list the tiny backbones used by the test-suite.
    """
    return sorted(
        name
        for name, spec in _REGISTRY.items()
        if (include_test or spec.source != "test") and (family is None or spec.family == family)
    )


def _unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def describe(spec: BackboneSpec) -> dict[str, Any]:
    """A plain-data row describing ``spec`` (for tables and JSON)."""
    return {
        "name": spec.name,
        "family": spec.family,
        "input_size": spec.input_size,
        "feature_dim": spec.feature_dim,
        "params": f"{spec.params / 1e6:.1f}M" if spec.params else "?",
        "preprocessing": spec.preprocessing,
        "source": spec.source,
        "description": spec.description,
    }
