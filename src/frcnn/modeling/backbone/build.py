"""``build_backbone``: the one way to make a backbone (Hydra's ``_target_`` for ``conf/backbone/*``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

from torch import nn
from torchvision.models import get_model

from frcnn.layers.batchnorm import convert_frozen_batchnorm

from .backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone
from .cuts import (
    Cut,
    cut_densenet121,
    cut_mobilenet_v2,
    cut_mobilenet_v3_large,
    cut_resnet,
    cut_vgg16,
)
from .freezing import freeze_stages
from .tiny import TINY_MEAN, TINY_STD, cut_tiny, tiny_net
from .weights import downloading, load_strict, read_state_dict, resolve_weights, weights_statistics

# name -> (torchvision classification model it is cut from, or None for our own, and the cut)
BACKBONES: dict[str, tuple[str | None, Callable[[nn.Module], Cut]]] = {
    "tiny": (None, cut_tiny),
    "vgg16": ("vgg16", cut_vgg16),
    "resnet18": ("resnet18", cut_resnet),
    "resnet34": ("resnet34", cut_resnet),
    "resnet50": ("resnet50", cut_resnet),
    "resnet101": ("resnet101", cut_resnet),
    "resnet152": ("resnet152", cut_resnet),
    "mobilenet_v2": ("mobilenet_v2", cut_mobilenet_v2),
    "mobilenet_v2_full": ("mobilenet_v2", partial(cut_mobilenet_v2, full=True)),
    "mobilenet_v3_large": ("mobilenet_v3_large", cut_mobilenet_v3_large),
    "mobilenet_v3_large_full": ("mobilenet_v3_large", partial(cut_mobilenet_v3_large, full=True)),
    "densenet121": ("densenet121", cut_densenet121),
}


def build_backbone(
    name: str,
    weights: str | None = None,
    weights_path: str | Path | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool = True,
) -> Backbone:
    """Build backbone ``name`` (a key of ``BACKBONES``), optionally from pretrained weights.

    weights: a torchvision weight name of the source classification model (``"IMAGENET1K_V1"``,
        ``"DEFAULT"``, ``"ResNet50_Weights.IMAGENET1K_V2"``); torchvision downloads it once into its
        cache. ``image_mean`` / ``image_std`` then follow those weights' preprocessing.
    weights_path: a local ``torch.save``-d state dict of the whole source classification model (for
        ``tiny``: of the tiny network), for machines without internet; loaded strictly before the cut.
        Statistics stay ImageNet's. At most one of ``weights`` and ``weights_path``.
    trainable_layers: how many stages, counted back from the deepest (``c5`` included, as the last
        stage of a ResNet), keep ``requires_grad``; the rest are frozen. Stages are listed in
        ``cuts.py``; e.g. ResNet: stem, layer1, layer2, layer3, c5 (5), so 3 freezes stem + layer1.
        ``None``: with pretrained weights, freeze the stages at stride <= 4 (their generic low-level
        filters, as detectron2 freezes stem + res2 and the Faster R-CNN paper conv1 + conv2 of
        VGG); without, nothing.
    frozen_bn: replace every BatchNorm2d by a FrozenBatchNorm2d holding the loaded statistics.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    if weights is not None and weights_path is not None:
        raise ValueError("give weights (a torchvision name) or weights_path (a local file), not both")
    arch, cut_network = BACKBONES[name]

    image_mean, image_std = IMAGENET_MEAN, IMAGENET_STD
    if arch is None:
        if weights is not None:
            raise ValueError(f"{name} has no torchvision weights; use weights_path for a local file")
        network, image_mean, image_std = tiny_net(), TINY_MEAN, TINY_STD
    else:
        resolved = resolve_weights(arch, weights) if weights is not None else None
        with downloading(resolved):  # torchvision downloads named weights on first use
            network = get_model(arch, weights=resolved)
        if resolved is not None:
            image_mean, image_std = weights_statistics(resolved)
    if weights_path is not None:
        load_strict(network, read_state_dict(weights_path), source=str(weights_path))
    pretrained = weights is not None or weights_path is not None

    cut = cut_network(network)
    stages = [list(stage.values()) for stage in cut.stages]
    strides = list(cut.stage_strides)
    if cut.c5 is not None:
        stages.append([cut.c5])
        strides.append(2 * cut.stride)
    if trainable_layers is None:
        trainable_layers = len(stages) - (sum(s <= 4 for s in strides) if pretrained else 0)
    freeze_stages(stages, trainable_layers)

    body = nn.Sequential()
    for stage in cut.stages:
        for module_name, module in stage.items():
            body.add_module(module_name, module)
    backbone = Backbone(
        body,
        name=name,
        out_channels=cut.out_channels,
        stride=cut.stride,
        image_mean=image_mean,
        image_std=image_std,
        c5=cut.c5,
        c5_out_channels=cut.c5_out_channels,
    )
    if frozen_bn:
        if not pretrained and any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()):
            warnings.warn(
                f"frozen_bn=True without pretrained weights fixes {name}'s BatchNorm at its identity "
                "initialisation; pass frozen_bn=False to train it from scratch",
                stacklevel=2,
            )
        convert_frozen_batchnorm(backbone)
        if cut.c5 is not None:  # offered, not a submodule: converted on its own
            convert_frozen_batchnorm(cut.c5)
    return backbone
