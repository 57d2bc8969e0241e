"""Backbone registry: pretrained networks with their preprocessing, input size and layer groups."""

from transferkit.backbones.applications import register_all as _register_applications
from transferkit.backbones.groups import GroupRule, layer_groups
from transferkit.backbones.registry import (
    BackboneSpec,
    describe,
    get_backbone,
    list_backbones,
    register_backbone,
)
from transferkit.backbones.testing import register_test_backbones as _register_test_backbones
from transferkit.backbones.weights import build_backbone

_register_applications()
_register_test_backbones()

__all__ = [
    "BackboneSpec",
    "GroupRule",
    "build_backbone",
    "describe",
    "get_backbone",
    "layer_groups",
    "list_backbones",
    "register_backbone",
]
