"""Where each torchvision classification network is cut to give the detector its feature map.

Every cut keeps torchvision's module names, so a backbone's state-dict keys read like the source
network's (``body.layer3.5.conv2.weight`` is ``layer3.5.conv2.weight`` of the ResNet).

A *stage* is a run of modules whose output has the same stride. Stages are what ``trainable_layers``
counts (from the deepest one back) and what the fine-tuning default freezes (those at stride <= 4).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torchvision.models import VGG, DenseNet, MobileNetV2, MobileNetV3, ResNet


@dataclass
class Cut:
    """A network cut at its detection feature map."""

    stages: list[dict[str, nn.Module]]  # from the input to the deepest; names as in the source network
    stage_strides: list[int]  # output stride of each stage
    out_channels: int
    c5: nn.Module | None = None  # ResNet's conv5 stage for the C4 R-CNN head; its stride is 2 * the cut's
    c5_out_channels: int | None = None

    @property
    def stride(self) -> int:
        return self.stage_strides[-1]


def cut_vgg16(model: VGG) -> Cut:
    """conv1_1 .. conv5_3 + ReLU: ``features[:30]``, without the last max-pool. Stride 16, 512 channels.

    Stages: conv1 .. conv5 blocks (each closing max-pool belongs to its block), strides 2, 4, 8, 16, 16.
    """
    features = model.features
    if not isinstance(features[29], nn.ReLU) or not isinstance(features[30], nn.MaxPool2d):
        raise ValueError("unexpected VGG layout: features[29] should be conv5_3's ReLU, [30] a max-pool")
    bounds = [(0, 5), (5, 10), (10, 17), (17, 24), (24, 30)]
    stages = [{str(i): features[i] for i in range(lo, hi)} for lo, hi in bounds]
    return Cut(stages, [2, 4, 8, 16, 16], out_channels=512)


def cut_resnet(model: ResNet) -> Cut:
    """C4: stem + layer1..layer3, stride 16; 256 channels (ResNet-18/34) or 1024 (50/101/152).

    ``layer4`` becomes ``c5`` (512 or 2048 channels, stride 32), untouched: its first block keeps
    stride 2, so the R-CNN head turns a 14x14 RoI into 7x7 as in the Faster R-CNN ResNet design.
    Stages: stem (conv1, bn1, relu, maxpool; stride 4), layer1 (4), layer2 (8), layer3 (16), and c5.
    """
    stem = {"conv1": model.conv1, "bn1": model.bn1, "relu": model.relu, "maxpool": model.maxpool}
    stages = [stem, {"layer1": model.layer1}, {"layer2": model.layer2}, {"layer3": model.layer3}]
    return Cut(
        stages,
        [4, 4, 8, 16],
        out_channels=model.layer4[0].conv1.in_channels,  # what layer3 hands to layer4
        c5=model.layer4,
        c5_out_channels=model.fc.in_features,
    )


def cut_mobilenet_v2(model: MobileNetV2, full: bool = False) -> Cut:
    """``features[:14]``: through the last 96-channel inverted residual, stride 16 (the detection cut:
    the next block would halve the map again). ``full``: all of ``features``, 1280 channels,
    stride 32, as torchvision's ``FasterRCNN`` examples use ``mobilenet_v2().features``.

    Stages by output stride: [0:2] 2, [2:4] 4, [4:7] 8, [7:14] 16, and with ``full`` [14:19] 32.
    """
    bounds = [(0, 2), (2, 4), (4, 7), (7, 14)] + ([(14, 19)] if full else [])
    stages = [{str(i): model.features[i] for i in range(lo, hi)} for lo, hi in bounds]
    return Cut(stages, [2, 4, 8, 16, 32][: len(bounds)], out_channels=1280 if full else 96)


def cut_mobilenet_v3_large(model: MobileNetV3, full: bool = False) -> Cut:
    """``features[:13]``: through the last 112-channel block, stride 16. ``full``: all of
    ``features``, 960 channels, stride 32.

    Stages by output stride: [0:2] 2, [2:4] 4, [4:7] 8, [7:13] 16, and with ``full`` [13:17] 32.
    """
    bounds = [(0, 2), (2, 4), (4, 7), (7, 13)] + ([(13, 17)] if full else [])
    stages = [{str(i): model.features[i] for i in range(lo, hi)} for lo, hi in bounds]
    return Cut(stages, [2, 4, 8, 16, 32][: len(bounds)], out_channels=960 if full else 112)


def cut_densenet121(model: DenseNet) -> Cut:
    """Through denseblock3, then transition3's BatchNorm + ReLU only: stride 16, 1024 channels.

    DenseNet is pre-activation: a dense block's output is a concatenation that its consumer
    normalises first, so the cut keeps that BN + ReLU, and stops before transition3's 1x1 conv
    (which only compresses to 512 channels for the pooled block 4). Stages: stem (conv0 .. pool0;
    stride 4), denseblock1 (4), transition1 + denseblock2 (8), transition2 + denseblock3 + that
    BN-ReLU (16).
    """
    f = model.features
    t3 = f.transition3
    head = nn.Sequential()  # keeps the names "norm" / "relu" so the keys read transition3.norm.*
    head.add_module("norm", t3.norm)
    head.add_module("relu", t3.relu)
    stages = [
        {"conv0": f.conv0, "norm0": f.norm0, "relu0": f.relu0, "pool0": f.pool0},
        {"denseblock1": f.denseblock1},
        {"transition1": f.transition1, "denseblock2": f.denseblock2},
        {"transition2": f.transition2, "denseblock3": f.denseblock3, "transition3": head},
    ]
    return Cut(stages, [4, 4, 8, 16], out_channels=t3.norm.num_features)
