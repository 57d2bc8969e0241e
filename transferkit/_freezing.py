"""Freeze / unfreeze policies for the backbone of a transferkit model.

A policy is a small frozen object; :meth:`FreezePolicy.apply` sets ``trainable`` on the
backbone's layers by named group, keeps BatchNormalization frozen (inference mode, statistics
untouched) unless asked otherwise, and recompiles a compiled model so the change takes effect.

Example:
    >>> UnfreezeTop(2).apply(model, "mobilenet_v2")
    FreezeSummary(trainable_layers=..., trainable_params=..., total_params=...)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import numpy as np

from transferkit._errors import ConfigError, did_you_mean
from transferkit._model import backbone_of
from transferkit.backbones._groups import TOP, block_names, containers, layer_groups, members, sublayers
from transferkit.backbones._registry import BackboneSpec, get_backbone
from transferkit.hub import HubLayer

log = logging.getLogger("transferkit")


@dataclass(frozen=True)
class FreezeSummary:
    """What a policy left trainable in the backbone.

    Attributes:
        trainable_layers: Backbone layers with weights that train.
        trainable_params: Backbone parameters that train.
        total_params: All backbone parameters.
        policy: The policy as applied (with ``clamp=True``, possibly narrowed to fit the backbone).
    """

    trainable_layers: int
    trainable_params: int
    total_params: int
    policy: FreezePolicy | None = None


@dataclass(frozen=True)
class FreezeState:
    """The trainable flags of a model's backbone, to put back after a temporary change."""

    flags: tuple[tuple[keras.layers.Layer, bool], ...]
    pass_training: tuple[tuple[HubLayer, bool], ...]

    @classmethod
    def of(cls, model: keras.Model) -> FreezeState:
        layers = list(_walk(backbone_of(model)))  # a layer before its sublayers: restored in that order
        return cls(tuple((layer, layer.trainable) for layer in layers),
                   tuple((layer, layer.pass_training) for layer in layers if isinstance(layer, HubLayer)))

    def restore(self) -> None:
        for layer, trainable in self.flags:
            layer.trainable = trainable
        for hub_layer, passed in self.pass_training:
            hub_layer.pass_training = passed


def _walk(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    yield layer
    for child in sublayers(layer):
        yield from _walk(child)


def _count(weights: list) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


@dataclass(frozen=True, kw_only=True)
class FreezePolicy:
    """Base class: decides which backbone layers train.

    Attributes:
        train_batchnorm: Let BatchNormalization layers in unfrozen groups train (update their
            statistics and scale/offset). Off by default: with small datasets, updating them
            destroys what the network learnt on ImageNet.
    """

    train_batchnorm: bool = False

    def select(self, backbone: keras.Model, groups: dict[str, list[str]]) -> set[str]:
        """Names of the backbone layers that should train (subclasses decide), as ``groups`` names them."""
        raise NotImplementedError

    def fitted(self, groups: dict[str, list[str]], *, backbone_name: str) -> FreezePolicy:
        """This policy, or the nearest one the backbone can meet (``apply(..., clamp=True)`` uses it).

        The base class returns ``self``: most policies fit every backbone.
        """
        return self

    def apply(self, model: keras.Model, backbone: str | BackboneSpec, *, clamp: bool = False) -> FreezeSummary:
        """Apply the policy to ``model`` (a transferkit model or a bare backbone).

        Args:
            model: The model whose backbone to (un)freeze.
            backbone: The backbone's registry name or spec (it knows the layer groups).
            clamp: Meet a request the backbone cannot (``UnfreezeTop(4)`` on a one-block Hub
                module) as nearly as it can, with a warning, instead of raising. The
                :class:`~transferkit.FineTuner` clamps, so its default recipe fits every backbone.
        """
        spec = get_backbone(backbone)
        net = backbone_of(model)
        groups = layer_groups(net, spec.groups)
        policy = self.fitted(groups, backbone_name=spec.name) if clamp else self
        chosen = policy.select(net, groups)
        net.trainable = bool(chosen)
        for path, container in containers(net, spec.groups).items():  # before its sublayers: setting it sets them all
            container.trainable = any(name.startswith(path + "/") for name in chosen)
        found = members(net, spec.groups)
        for name, layer in found.items():
            layer.trainable = name in chosen
            if layer.trainable and not policy.train_batchnorm:  # BatchNorm stays in inference mode
                for inner in _walk(layer):
                    if isinstance(inner, keras.layers.BatchNormalization):
                        inner.trainable = False
            if isinstance(layer, HubLayer):  # no inner structure: BatchNorm inside follows `training`
                layer.pass_training = policy.train_batchnorm and layer.trainable
        if getattr(model, "compiled", False):
            model.compile_from_config(model.get_compile_config())
        return FreezeSummary(
            trainable_layers=sum(1 for layer in found.values() if layer.trainable and layer.weights),
            trainable_params=_count(net.trainable_weights),
            total_params=_count(net.weights),
            policy=policy,
        )


@dataclass(frozen=True, kw_only=True)
class FreezeAll(FreezePolicy):
    """Freeze the whole backbone (feature extraction); only the head trains."""

    def select(self, backbone: keras.Model, groups: dict[str, list[str]]) -> set[str]:
        return set()


@dataclass(frozen=True, kw_only=True)
class UnfreezeAll(FreezePolicy):
    """Train the whole backbone (full fine-tuning)."""

    def select(self, backbone: keras.Model, groups: dict[str, list[str]]) -> set[str]:
        return {name for group in groups.values() for name in group}


@dataclass(frozen=True)
class UnfreezeTop(FreezePolicy):
    """Train the last ``blocks`` blocks of the backbone and the layers after them.

    ``UnfreezeTop(2)`` means the same thing for every family: the two blocks nearest the
    output (see each backbone's groups with ``transferkit.backbones.layer_groups``). ``UnfreezeTop(0)``
    trains only the ``top`` group (the final conv/norm layers some families have).
    """

    blocks: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.blocks, int) or self.blocks < 0:
            raise ConfigError(f"Expected blocks to be an integer >= 0. Received: blocks={self.blocks!r}.")

    def select(self, backbone: keras.Model, groups: dict[str, list[str]]) -> set[str]:
        blocks = block_names(groups)
        if self.blocks > len(blocks):
            raise ConfigError(
                f"UnfreezeTop(blocks={self.blocks}) asks for more blocks than the backbone has ({len(blocks)}). "
                f"Use a number up to {len(blocks)}, or UnfreezeAll()."
            )
        chosen = [*blocks[len(blocks) - self.blocks:], TOP]
        return {name for group in chosen for name in groups.get(group, [])}

    def fitted(self, groups: dict[str, list[str]], *, backbone_name: str) -> FreezePolicy:
        available = len(block_names(groups))
        if self.blocks <= available:
            return self
        log.warning("%s has %d block(s); unfreezing all of them instead of %d.", backbone_name, available,
                    self.blocks)
        return dataclasses.replace(self, blocks=available)


@dataclass(frozen=True)
class UnfreezeFrom(FreezePolicy):
    """Train every backbone layer from ``layer`` (inclusive) to the output, in layer order (a block inside
    a transformer's encoder is named ``"<encoder>/<block>"``, as in ``layer_groups``)."""

    layer: str = ""

    def select(self, backbone: keras.Model, groups: dict[str, list[str]]) -> set[str]:
        grouped = [name for group in groups.values() for name in group]  # inner blocks in block order
        names = [name for layer in backbone.layers
                 for name in ([layer.name] if layer.name in grouped
                              else [n for n in grouped if n.startswith(layer.name + "/")])]
        if self.layer not in names:
            raise ConfigError(
                f"UnfreezeFrom: the backbone has no layer named {self.layer!r}.{did_you_mean(self.layer, names)}"
            )
        return set(names[names.index(self.layer) :])
