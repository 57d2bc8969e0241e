"""Tools for adding your own backbones and for working with backbone networks directly.

The everyday names (:func:`transferkit.get_backbone`, :func:`transferkit.list_backbones`,
:func:`transferkit.register_backbone`, :class:`transferkit.BackboneSpec`) live at the top level;
this namespace holds what a spec author or a power user needs beyond them.

Example:
    >>> from transferkit.backbones import GroupRule, build_backbone, layer_groups
    >>> net = build_backbone(get_backbone("mobilenet"), weights=None, image_size=128)
    >>> list(layer_groups(net, get_backbone("mobilenet").groups))[:3]
    ['stem', 'block_1', 'block_2']
"""

from transferkit._public import publish as _publish
from transferkit.backbones._applications import register_all as _register_applications
from transferkit.backbones._groups import GroupRule, layer_groups
from transferkit.backbones._kerashub import FAMILIES as KERAS_HUB_FAMILIES
from transferkit.backbones._kerashub import kerashub_backbone, list_kerashub_presets
from transferkit.backbones._preprocessing import PREPROCESSING_MODES, Preprocess
from transferkit.backbones._registry import register_resolver, unregister_backbone
from transferkit.backbones._testing import register_test_backbones as _register_test_backbones
from transferkit.backbones._weights import build_backbone, build_classifier

_register_applications()
_register_test_backbones()

__all__ = [
    "KERAS_HUB_FAMILIES",
    "PREPROCESSING_MODES",
    "GroupRule",
    "Preprocess",
    "build_backbone",
    "build_classifier",
    "kerashub_backbone",
    "layer_groups",
    "list_kerashub_presets",
    "register_resolver",
    "unregister_backbone",
]

_publish(__name__, globals(), __all__)

