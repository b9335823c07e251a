"""Backbones: torchvision classification networks cut at one stride-16 (or 32) feature map, or
topped with a feature pyramid (``build_fpn_backbone``)."""

from .backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone, feature_levels_of, feature_strides
from .build import BACKBONES, build_backbone
from .fpn import FPN_BACKBONES, FPNBackbone, build_fpn_backbone

__all__ = [
    "BACKBONES",
    "FPN_BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "FPNBackbone",
    "build_backbone",
    "build_fpn_backbone",
    "feature_levels_of",
    "feature_strides",
]
