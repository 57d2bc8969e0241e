"""Named layer groups (stem, block_1 … block_n, top) for any backbone.

Every family names its layers differently, and some (Inception, Xception, NASNet) mix stable
names with auto-generated ones such as ``conv2d_93`` whose numbers depend on what was built
before in the same process. A :class:`GroupRule` therefore matches only the stable names; every
other layer joins the earliest group it feeds into, which is where a human would put it (the
shortcut convolution of a residual block feeds the block's ``add``, and so on).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras

STEM = "stem"
TOP = "top"


@dataclass(frozen=True, kw_only=True)
class GroupRule:
    """How to split a backbone's layers into ordered groups.

    Attributes:
        blocks: Regular expressions, each with one capture group; a layer whose name matches
            belongs to the block named by the captured text. Blocks are numbered in the order
            they first appear, so ``block_1`` is closest to the input.
        stem: Regular expression for layers that belong to the stem.
        top: Regular expression for layers after the last block (final conv, norm …).
        stem_until_branch: Put every layer up to the first one that feeds more than one layer
            into the stem (Inception families, whose stem layers have no stable names).
        inner: Regular expression for the paths of layers that hold other layers (a nested
            network; a transformer's encoder as one layer): their sublayers take their place, named
            ``"<layer>/<sublayer>"`` (opened again where the longer path matches), so that the blocks
            inside can be grouped (and frozen) one by one. Sublayers no pattern matches join the top group.

    Example:
        >>> GroupRule(blocks=(r"^(block\\d+)_",), stem=r"^stem_")
    """

    blocks: tuple[str, ...]
    stem: str | None = None
    top: str | None = None
    stem_until_branch: bool = False
    inner: str | None = None


def sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers ``layer`` holds directly (Keras tracks them as it builds the layer)."""
    return list(layer._flatten_layers(include_self=False, recursive=False))


def members(model: keras.Model, rule: GroupRule) -> dict[str, keras.layers.Layer]:
    """The layers that ``rule`` groups, by name, in order: ``model``'s layers, with each layer that
    ``rule.inner`` matches (by its path, ``"<layer>/<sublayer>"`` below the top) opened into its
    sublayers, recursively."""
    found: dict[str, keras.layers.Layer] = {}

    def visit(layer: keras.layers.Layer, path: str) -> None:
        if rule.inner and re.search(rule.inner, path):
            for child in sublayers(layer):
                visit(child, f"{path}/{child.name}")
        else:
            found[path] = layer

    for layer in model.layers:
        visit(layer, layer.name)
    return found


def containers(model: keras.Model, rule: GroupRule) -> dict[str, keras.layers.Layer]:
    """The layers ``rule.inner`` opens, by path, each before the ones inside it."""
    opened: dict[str, keras.layers.Layer] = {}

    def visit(layer: keras.layers.Layer, path: str) -> None:
        if rule.inner and re.search(rule.inner, path):
            opened[path] = layer
            for child in sublayers(layer):
                visit(child, f"{path}/{child.name}")

    for layer in model.layers:
        visit(layer, layer.name)
    return opened


def producers(node_args: Any) -> Iterator[str]:
    """Names of the layers whose outputs appear in a layer config's ``inbound_nodes``."""
    if isinstance(node_args, dict):
        history = node_args.get("config", {}).get("keras_history") if "config" in node_args else None
        if history:
            yield history[0]
        for value in node_args.values():
            yield from producers(value)
    elif isinstance(node_args, (list, tuple)):
        for value in node_args:
            yield from producers(value)


def _consumers(model: keras.Model) -> dict[str, list[str]]:
    consumers: dict[str, list[str]] = {layer.name: [] for layer in model.layers}
    for layer_config in model.get_config()["layers"]:
        name = layer_config["name"]
        for producer in set(producers(layer_config.get("inbound_nodes", []))):
            if producer in consumers and producer != name:
                consumers[producer].append(name)
    return consumers


def layer_groups(model: keras.Model, rule: GroupRule) -> dict[str, list[str]]:
    """Split ``model``'s layers into ordered groups.

    Returns:
        An ordered mapping ``{"stem": [...], "block_1": [...], ..., "top": [...]}`` of layer
        names; every layer of the model appears in exactly one group, empty groups are left out.
        A layer that ``rule.inner`` opens is replaced by its sublayers (see :func:`members`).

    Example:
        >>> groups = layer_groups(backbone, get_backbone("mobilenet").groups)
        >>> list(groups)[-1]
        'block_13'
    """
    found = members(model, rule)
    layers = list(model.layers)
    label: dict[str, str] = {}
    block_keys: list[str] = []
    for name, layer in found.items():
        if isinstance(layer, keras.layers.InputLayer) or (rule.stem and re.search(rule.stem, name)):
            label[name] = STEM
        elif rule.top and re.search(rule.top, name):
            label[name] = TOP
        else:
            for pattern in rule.blocks:
                match = re.search(pattern, name)
                if match:
                    key = match.group(1)
                    if key not in block_keys:
                        block_keys.append(key)
                    label[name] = key
                    break

    consumers = _consumers(model)
    if rule.stem_until_branch:
        for layer in layers:
            label.setdefault(layer.name, STEM)
            if len(consumers[layer.name]) > 1:
                break

    rank = {STEM: -1, TOP: len(block_keys), **{key: i for i, key in enumerate(block_keys)}}
    for name in reversed(found):
        if name in label:
            continue
        fed = [label[c] for c in consumers.get(name, ()) if c in label]
        label[name] = min(fed, key=rank.__getitem__) if fed else TOP

    names = {STEM: STEM, TOP: TOP, **{key: f"block_{i + 1}" for i, key in enumerate(block_keys)}}
    groups: dict[str, list[str]] = {STEM: []}
    groups.update({names[key]: [] for key in block_keys})
    groups[TOP] = []
    for name in found:
        groups[names[label[name]]].append(name)
    return {group: members for group, members in groups.items() if members}


def block_names(groups: dict[str, list[str]]) -> list[str]:
    """The ``block_*`` group names of ``groups``, input side first."""
    return [g for g in groups if g not in (STEM, TOP)]
