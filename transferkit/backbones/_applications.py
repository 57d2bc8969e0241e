"""Specs for every family in ``keras.applications``.

Facts per family (input size, preprocessing, feature size) follow the Keras documentation;
the test-suite builds every spec with ``weights=None`` and checks them against the network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from transferkit.backbones._groups import GroupRule
from transferkit.backbones._registry import BackboneSpec, register_backbone

_MOBILENET = GroupRule(blocks=(r"^conv_(?:dw|pw|pad)_(\d+)",), stem=r"^conv1")
_MOBILENET_V2 = GroupRule(
    blocks=(r"^(expanded_conv|block_\d+)_",),
    stem=r"^(Conv1|bn_Conv1|Conv1_relu)$",
    top=r"^(Conv_1|Conv_1_bn|out_relu)$",
)
_MOBILENET_V3 = GroupRule(
    blocks=(r"^(expanded_conv(?:_\d+)?)_",), stem=r"^(conv|conv_bn)$", top=r"^(conv_1|conv_1_bn)$"
)
_RESNET = GroupRule(blocks=(r"^(conv\d)_block",), stem=r"^(conv1|pool1)_", top=r"^post_")
_VGG = GroupRule(blocks=(r"^(block\d+)_",))
_DENSENET = GroupRule(blocks=(r"^conv(\d)_block", r"^pool(\d)_"), stem=r"^(conv1_|pool1$)", top=r"^(bn|relu)$")
_EFFICIENTNET = GroupRule(blocks=(r"^block(\d)[a-z]_",), stem=r"^stem_", top=r"^top_")
# Downsampling layers carry the number of the stage before them; left unmatched, they join the
# stage they feed, which is where they belong.
_CONVNEXT = GroupRule(blocks=(r"_stage_(\d+)_",), stem=r"_(prestem_normalization|stem)$")
_INCEPTION_V3 = GroupRule(blocks=(r"^(mixed\d+)$",), stem_until_branch=True)
_INCEPTION_RESNET_V2 = GroupRule(
    blocks=(r"^(mixed_5b|mixed_6a|mixed_7a)$", r"^(block35|block17|block8)_\d+_"),
    top=r"^conv_7b",
    stem_until_branch=True,
)
_XCEPTION = GroupRule(blocks=(r"^block(\d+)_",), stem=r"^block1_")
_NASNET = GroupRule(
    blocks=(r"^(?:normal|reduction|separable_conv|adjust)\w*?_(stem_\d|reduce_\d+|\d+)$",),
    stem=r"^stem_(conv1|bn1)$",
)


# Parameter counts of the headless networks (independent of the input size).
_PARAMS = {
    "convnext_base": 87566464,
    "convnext_large": 196230336,
    "convnext_small": 49454688,
    "convnext_tiny": 27820128,
    "convnext_xlarge": 348147968,
    "densenet121": 7037504,
    "densenet169": 12642880,
    "densenet201": 18321984,
    "efficientnet_b0": 4049571,
    "efficientnet_b1": 6575239,
    "efficientnet_b2": 7768569,
    "efficientnet_b3": 10783535,
    "efficientnet_b4": 17673823,
    "efficientnet_b5": 28513527,
    "efficientnet_b6": 40960143,
    "efficientnet_b7": 64097687,
    "efficientnet_v2_b0": 5919312,
    "efficientnet_v2_b1": 6931124,
    "efficientnet_v2_b2": 8769374,
    "efficientnet_v2_b3": 12930622,
    "efficientnet_v2_l": 117746848,
    "efficientnet_v2_m": 53150388,
    "efficientnet_v2_s": 20331360,
    "inception_resnet_v2": 54336736,
    "inception_v3": 21802784,
    "mobilenet": 3228864,
    "mobilenet_v2": 2257984,
    "mobilenet_v3_large": 2996352,
    "mobilenet_v3_small": 939120,
    "nasnet_large": 84916818,
    "nasnet_mobile": 4269716,
    "resnet101": 42658176,
    "resnet101_v2": 42626560,
    "resnet152": 58370944,
    "resnet152_v2": 58331648,
    "resnet50": 23587712,
    "resnet50_v2": 23564800,
    "vgg16": 14714688,
    "vgg19": 20024384,
    "xception": 20861480,
}


def _keras(fn_name: str, *, include_top: bool = False, **fixed: Any) -> Callable[..., keras.Model]:
    """A constructor for ``keras.applications.<fn_name>``, resolved when called."""

    def build(*, input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
        fn = getattr(keras.applications, fn_name)
        return fn(include_top=include_top, weights=weights, input_shape=input_shape, **fixed)

    build.__name__ = build.__qualname__ = f"keras.applications.{fn_name}"
    return build


def _add(
    name: str,
    fn_name: str,
    *,
    family: str,
    size: int,
    features: int,
    preprocessing: str,
    groups: GroupRule,
    min_size: int = 32,
    weight_sizes: tuple[int, ...] | None = None,
    offline_weights: str | None = None,
    **fixed: Any,
) -> None:
    register_backbone(
        BackboneSpec(
            name=name,
            family=family,
            constructor=_keras(fn_name, **fixed),
            classifier_constructor=_keras(fn_name, include_top=True, **fixed),
            input_size=size,
            min_size=min_size,
            weight_sizes=weight_sizes,
            preprocessing=preprocessing,
            feature_dim=features,
            groups=groups,
            description=f"keras.applications.{fn_name}",
            source="keras.applications",
            offline_weights=offline_weights,
            params=_PARAMS[name],
        )
    )


def register_all() -> None:
    """Register every keras.applications backbone (called once on import)."""
    add = _add
    add("mobilenet", "MobileNet", family="mobilenet", size=224, features=1024, preprocessing="tf",
        groups=_MOBILENET, offline_weights="mobilenet_v1_1.0_imagenet_float16.npz")
    add("mobilenet_v2", "MobileNetV2", family="mobilenet_v2", size=224, features=1280,
        preprocessing="tf", groups=_MOBILENET_V2)
    for variant, fn, feats in (("small", "MobileNetV3Small", 576), ("large", "MobileNetV3Large", 960)):
        add(f"mobilenet_v3_{variant}", fn, family="mobilenet_v3", size=224, features=feats,
            preprocessing="builtin", groups=_MOBILENET_V3, include_preprocessing=True)
    for depth in (50, 101, 152):
        add(f"resnet{depth}", f"ResNet{depth}", family="resnet", size=224, features=2048,
            preprocessing="caffe", groups=_RESNET)
        add(f"resnet{depth}_v2", f"ResNet{depth}V2", family="resnet_v2", size=224, features=2048,
            preprocessing="tf", groups=_RESNET)
    for depth in (16, 19):
        add(f"vgg{depth}", f"VGG{depth}", family="vgg", size=224, features=512, preprocessing="caffe",
            groups=_VGG)
    for depth, feats in ((121, 1024), (169, 1664), (201, 1920)):
        add(f"densenet{depth}", f"DenseNet{depth}", family="densenet", size=224, features=feats,
            preprocessing="torch", groups=_DENSENET)
    for b, (size, feats) in enumerate(
        ((224, 1280), (240, 1280), (260, 1408), (300, 1536), (380, 1792), (456, 2048), (528, 2304),
         (600, 2560))
    ):
        add(f"efficientnet_b{b}", f"EfficientNetB{b}", family="efficientnet", size=size, features=feats,
            preprocessing="builtin", groups=_EFFICIENTNET)
    for variant, size, feats in (
        ("b0", 224, 1280), ("b1", 240, 1280), ("b2", 260, 1408), ("b3", 300, 1536),
        ("s", 384, 1280), ("m", 480, 1280), ("l", 480, 1280),
    ):
        add(f"efficientnet_v2_{variant}", f"EfficientNetV2{variant.upper()}", family="efficientnet_v2",
            size=size, features=feats, preprocessing="builtin", groups=_EFFICIENTNET,
            include_preprocessing=True)
    for variant, feats in (("tiny", 768), ("small", 768), ("base", 1024), ("large", 1536), ("xlarge", 2048)):
        fn = "ConvNeXt" + {"xlarge": "XLarge"}.get(variant, variant.capitalize())
        add(f"convnext_{variant}", fn, family="convnext", size=224, features=feats,
            preprocessing="builtin", groups=_CONVNEXT, include_preprocessing=True)
    add("inception_v3", "InceptionV3", family="inception", size=299, min_size=75, features=2048,
        preprocessing="tf", groups=_INCEPTION_V3)
    add("inception_resnet_v2", "InceptionResNetV2", family="inception_resnet", size=299, min_size=75,
        features=1536, preprocessing="tf", groups=_INCEPTION_RESNET_V2)
    add("xception", "Xception", family="xception", size=299, min_size=71, features=2048,
        preprocessing="tf", groups=_XCEPTION)
    add("nasnet_mobile", "NASNetMobile", family="nasnet", size=224, features=1056, preprocessing="tf",
        groups=_NASNET, weight_sizes=(224,))
    add("nasnet_large", "NASNetLarge", family="nasnet", size=331, features=4032, preprocessing="tf",
        groups=_NASNET, weight_sizes=(331,))
