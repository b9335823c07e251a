"""Backbones: torchvision classification networks cut at one stride-16 (or 32) feature map."""

from .backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone
from .build import BACKBONES, build_backbone

__all__ = ["BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "Backbone", "build_backbone"]
