"""The backbone registry: a name → frozen :class:`BackboneSpec` table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras

from transferkit._errors import BackboneExistsError, ConfigError, UnknownBackboneError, did_you_mean
from transferkit.backbones._groups import GroupRule
from transferkit.backbones._preprocessing import PREPROCESSING_MODES, check_mode


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
        preprocessing: Key of ``PREPROCESSING_MODES``, or an ``affine:`` contract of its own — what
            raw 0–255 input is mapped to.
        feature_dim: Channels of the feature map (the size of the pooled feature vector).
        groups: How to split the network into stem, blocks and top.
        description: One line for tables.
        source: ``"keras.applications"``, ``"hub"``, ``"test"`` or ``"user"``.
        handle: Where the weights come from when they are not a Keras download: the URL or
            folder of a TensorFlow Hub module (``None`` for keras.applications networks).
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
    handle: str | None = None
    offline_weights: str | None = None
    params: int | None = None

    def __post_init__(self) -> None:
        try:
            check_mode(self.preprocessing)
        except ConfigError:
            raise ConfigError(
                f"Expected preprocessing to be one of {sorted(PREPROCESSING_MODES)} or 'affine:S0,S1,S2:O0,O1,O2'. "
                f"Received: preprocessing={self.preprocessing!r} for backbone {self.name!r}."
            ) from None
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

    def describe(self) -> dict[str, Any]:
        """A plain-data row describing this backbone (for tables and JSON)."""
        return {
            "name": self.name,
            "family": self.family,
            "input_size": self.input_size,
            "feature_dim": self.feature_dim,
            "params": f"{self.params / 1e6:.1f}M" if self.params else "?",
            "preprocessing": self.preprocessing,
            "source": self.source,
            "description": self.description,
        }


Resolver = Callable[[str], "BackboneSpec | None"]
"""Turns a name the registry does not hold into a spec, or returns ``None`` if it is not its kind."""

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


def unregister_backbone(name: str) -> None:
    """Remove ``name`` from the registry (nothing happens if it is not there)."""
    _REGISTRY.pop(name, None)


# Other sources of backbones (TensorFlow Hub handles) plug in here, so that the registry itself
# imports nothing but data: ``transferkit.hub`` adds its resolver when it is imported.
_RESOLVERS: list[Resolver] = []


def register_resolver(resolver: Resolver) -> None:
    """Let :func:`get_backbone` turn names the registry does not hold into specs.

    ``resolver(name)`` returns a :class:`BackboneSpec`, or ``None`` when ``name`` is not
    something it knows how to build (the next resolver is asked then).
    """
    if resolver not in _RESOLVERS:
        _RESOLVERS.append(resolver)


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
    if not isinstance(name, str):
        raise UnknownBackboneError(f"Expected a backbone name or BackboneSpec. Received: {name!r}.")
    if name in _REGISTRY:
        return _REGISTRY[name]
    for resolver in _RESOLVERS:
        spec = resolver(name)
        if spec is not None:
            return spec
    key = name.strip().lower().replace("-", "_")
    if key in _REGISTRY:
        return _REGISTRY[key]
    raise UnknownBackboneError(
        f"Unknown backbone {name!r}.{did_you_mean(name, _REGISTRY)} Run `transferkit backbones` or call "
        "transferkit.list_backbones() to see all names."
    )


def list_backbones(
    filter: str | None = None, *, family: str | None = None, include_test: bool = False
) -> list[str]:
    """Names of the registered backbones, sorted.

    Args:
        filter: Only names or families that contain this text (case-insensitive).
        family: Only this family (``"resnet"``, ``"efficientnet"`` …).
        include_test: Also list the tiny backbones used by the test-suite.

    Example:
        >>> list_backbones("resnet1")
        ['resnet101', 'resnet101_v2', 'resnet152', 'resnet152_v2']
    """
    needle = filter.lower() if filter else None
    return sorted(
        name
        for name, spec in _REGISTRY.items()
        if (include_test or spec.source != "test")
        and (family is None or spec.family == family)
        and (needle is None or needle in name.lower() or needle in spec.family.lower())
    )
