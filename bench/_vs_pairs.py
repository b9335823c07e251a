"""The configurations of bench/vs_torchvision.py: one architecture built as ours, and its
torchvision twin (``frcnn.interop.torchvision_twin``: torchvision's FasterRCNN with copies of our
weights and our settings), plus the submodules whose forwards are the profiled stages.

Adding a configuration: write ``build_<name>(settings) -> Pair`` and add it to ``CONFIGS``
(``build_resnet50_fpn`` is the example); the runner, the checks and the tables need nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from _vs_data import NUM_CLASSES, synthetic_image
from torch import nn

from frcnn.interop.torchvision_twin import torchvision_twin
from frcnn.layers.batchnorm import calibrate_batchnorm
from frcnn.modeling import FasterRCNN
from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.backbone import build_backbone, build_fpn_backbone
from frcnn.modeling.matcher import Matcher
from frcnn.modeling.roi_heads import FCHead, MultiLevelRoIPooler, ResNetC5Head, RoIHeads, RoIPooler
from frcnn.modeling.rpn import RegionProposalNetwork
from frcnn.modeling.transform import InputTransform

MOBILENET_WEIGHTS = Path(__file__).resolve().parents[1] / "../shared/weights/mobilenet_v2_imagenet_int8derived.pth"
ROI_HEADS_REST = "sample/loss/postprocess"  # the RoI heads' own work: matching, sampling, losses, detections


@dataclass
class Settings:
    """What every configuration shares: image side, device, and the seed's detector hyperparameters.

    The only place these values are written: ours is built from them, the twin reads them off ours,
    and the report describes them from the built model (``_vs_report.methods``).

    ``image_size``, ``rois_per_image`` (R-CNN training RoIs) and ``test_proposals`` (RPN post-NMS
    top-n at test) are None to take each configuration's default (``Settings.resolve``).
    """

    image_size: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rois_per_image: int | None = None
    test_proposals: int | None = None
    anchor_sizes: tuple = (64, 128, 256, 512)  # or one tuple per feature level
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_batch: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_fg_iou: float = 0.5
    rpn_bg_iou: float = 0.1
    rpn_nms: float = 0.6
    pre_nms_top_n: tuple[int, int] = (12000, 6000)  # (train, test), per feature level
    train_proposals: int = 2000
    roi_positive_fraction: float = 0.25

    def resolve(self, image_size: int, rois_per_image: int, test_proposals: int, **fixed) -> Settings:
        """A copy with this configuration's defaults where the command line gave none, and ``fixed``."""
        return dataclasses.replace(
            self,
            image_size=self.image_size or image_size,
            rois_per_image=self.rois_per_image or rois_per_image,
            test_proposals=self.test_proposals or test_proposals,
            **fixed,
        )

    def describe(self) -> str:
        return (
            f"{self.image_size} x {self.image_size} images; R-CNN {self.rois_per_image} RoIs per image in "
            f"training; {self.test_proposals} proposals per image at test; pre-NMS top-n "
            f"{self.pre_nms_top_n[0]} / {self.pre_nms_top_n[1]} (train / test)"
        )


@dataclass
class Pair:
    """One architecture built twice, plus the submodules whose forwards are each profiled stage."""

    name: str
    description: str
    settings: Settings  # with the configuration's defaults resolved
    ours: nn.Module
    theirs: nn.Module
    ours_stages: dict[str, list[nn.Module]]
    theirs_stages: dict[str, list[nn.Module]]


# --------------------------------------------------------------------------- building the pairs


@torch.no_grad()
def calibrate(ours: FasterRCNN, image_size: int, seed: int = 0) -> None:
    """BatchNorm statistics of our trunk (and a C4 head's conv5) from synthetic images, then frozen:
    random weights with identity BatchNorm blow activations up layer after layer; calibrated, every
    layer has unit-scale outputs, as pretrained ones roughly would. Done before the twin is built,
    so both models get the same statistics."""
    images = torch.stack([synthetic_image(image_size, seed + i)[0] for i in range(4)])
    batch = ours.transform(list(images)).take_tensor()
    c5 = getattr(ours.roi_heads.box_head, "c5", None)

    def forward(module: nn.Module, x: torch.Tensor) -> None:
        features = module.backbone(x)
        if c5 is not None:
            c5(features)

    calibrate_batchnorm(ours, batch, forward=forward)


def _ours(
    backbone: nn.Module, s: Settings, pooler: RoIPooler, box_head: Callable[..., nn.Module]
) -> FasterRCNN:
    rpn = partial(
        RegionProposalNetwork,
        anchor_generator=AnchorGenerator(s.anchor_sizes, s.aspect_ratios),
        matcher=Matcher(s.rpn_fg_iou, s.rpn_bg_iou, 0.0, allow_low_quality_matches=True),
        conv_channels=backbone.out_channels,  # torchvision's RPNHead keeps the input width
        batch_size_per_image=s.rpn_batch,
        positive_fraction=s.rpn_positive_fraction,
        pre_nms_top_n={"train": s.pre_nms_top_n[0], "test": s.pre_nms_top_n[1]},
        post_nms_top_n={"train": s.train_proposals, "test": s.test_proposals},
        nms_threshold=s.rpn_nms,
    )
    roi_heads = partial(
        RoIHeads,
        pooler=pooler,
        box_head=box_head,
        # torchvision's R-CNN background is IoU in [0, 0.5): no ignored band below 0.1
        matcher=Matcher(0.5, 0.5, 0.0, allow_low_quality_matches=False),
        batch_size_per_image=s.rois_per_image,
        positive_fraction=s.roi_positive_fraction,
        smooth_l1_beta=1.0 / 9.0,  # torchvision's fastrcnn_loss
    )
    transform = partial(InputTransform, min_size=s.image_size, max_size=s.image_size)
    return FasterRCNN(backbone, NUM_CLASSES, rpn=rpn, roi_heads=roi_heads, transform=transform)


def _stages(model: nn.Module, torchvision: bool) -> dict[str, list[nn.Module]]:
    heads = model.roi_heads
    if torchvision:
        pool, head = heads.box_roi_pool, [heads.box_head, heads.box_predictor]
    else:
        pool, head = heads.pooler, [heads.box_head, heads.predictor]
    return {
        "transform": [model.transform],
        "backbone": [model.backbone],
        "rpn": [model.rpn],
        ROI_HEADS_REST: [heads],  # minus the two stages nested in it
        "roi_pool": [pool],
        "box_head": head,
    }


def _pair(name: str, description: str, s: Settings, ours: FasterRCNN) -> Pair:
    """Calibrate ours (unless pretrained), build its twin, put both on the device."""
    theirs = torchvision_twin(ours)
    ours, theirs = ours.to(s.device), theirs.to(s.device)
    return Pair(name, description, s, ours, theirs, _stages(ours, False), _stages(theirs, True))


def build_resnet50_c4(s: Settings) -> Pair:
    """ResNet-50 C4: layer1-3 trunk (stride 16, 1024 ch), RoIAlign 14x14 (sampling 2, legacy
    alignment), layer4 + average pool as the box head (2048 features), as torchvision's and
    Detectron's C4 models. No pretrained weights offline: BatchNorm calibrated, then frozen.

    16 RoIs per image and 50 test proposals, not the seed's 64 / 300: the layer4 head costs
    1.6 GFLOP per RoI, so the seed's values take ~40 s per step on a 2-core CPU."""
    s = s.resolve(image_size=384, rois_per_image=16, test_proposals=50)
    backbone = build_backbone("resnet50", trainable_layers=3, frozen_bn=False)  # stem + layer1 frozen
    pooler = RoIPooler("roi_align", output_size=14, sampling_ratio=2, aligned=False)
    ours = _ours(backbone, s, pooler, ResNetC5Head)
    calibrate(ours, s.image_size)
    description = (
        "ResNet-50 C4: trunk to layer3 (stride 16, 1024 ch, stem + layer1 frozen, random weights with calibrated "
        f"BatchNorm), RoIAlign 14x14 (sampling 2, aligned=False), layer4 + average pool head; {s.describe()}"
    )
    return _pair("resnet50_c4", description, s, ours)


def build_mobilenet_v2(s: Settings) -> Pair:
    """MobileNetV2 features (1280 ch, stride 32), RoIAlign 7x7 (sampling 2), two-layer MLP head 1024
    wide: torchvision's documented FasterRCNN-on-MobileNetV2 example, with the issue's 64 RoIs per image."""
    s = s.resolve(image_size=384, rois_per_image=64, test_proposals=300)
    pretrained = MOBILENET_WEIGHTS.is_file()
    if pretrained:
        backbone = build_backbone("mobilenet_v2_full", weights_path=MOBILENET_WEIGHTS)
    else:
        backbone = build_backbone("mobilenet_v2_full", frozen_bn=False)
    pooler = RoIPooler("roi_align", output_size=7, sampling_ratio=2, aligned=False)
    ours = _ours(backbone, s, pooler, partial(FCHead, hidden_dim=1024))
    if not pretrained:
        calibrate(ours, s.image_size)
    weights = "ImageNet weights (int8-derived)" if pretrained else "random weights"
    description = (
        f"MobileNetV2 features (1280 ch, stride 32, {weights}, stride <= 4 frozen), RoIAlign 7x7 (sampling 2, "
        f"aligned=False), two-layer MLP head 1024 wide; {s.describe()}"
    )
    return _pair("mobilenet_v2", description, s, ours)


def build_resnet50_fpn(s: Settings) -> Pair:
    """torchvision's fasterrcnn_resnet50_fpn at a small size: ResNet-50 + FPN (256 ch, levels at
    strides 4..64), one anchor size per level, RoIAlign 7x7 by box size over levels "0".."3",
    two-layer MLP head 1024 wide; pre-NMS top-n per level as torchvision's (2000 / 1000). Our
    side is ``FPNBackbone`` + ``MultiLevelRoIPooler`` (conf/model/faster_rcnn_fpn.yaml)."""
    s = s.resolve(
        image_size=256,
        rois_per_image=64,
        test_proposals=300,
        anchor_sizes=((32,), (64,), (128,), (256,), (512,)),
        pre_nms_top_n=(2000, 1000),
    )
    backbone = build_fpn_backbone("resnet50_fpn", trainable_layers=3, frozen_bn=False)  # conv1 + layer1 frozen
    pooler = MultiLevelRoIPooler("roi_align", output_size=7, sampling_ratio=2, aligned=False)
    ours = _ours(backbone, s, pooler, partial(FCHead, hidden_dim=1024))
    calibrate(ours, s.image_size)
    description = (
        "ResNet-50-FPN as torchvision's fasterrcnn_resnet50_fpn (random weights with calibrated BatchNorm, "
        f"conv1 + layer1 frozen), RoIAlign 7x7 over 4 levels, two-layer MLP head 1024 wide; {s.describe()}"
    )
    return _pair("resnet50_fpn", description, s, ours)


CONFIGS: dict[str, Callable[[Settings], Pair]] = {
    "resnet50_c4": build_resnet50_c4,
    "mobilenet_v2": build_mobilenet_v2,
    "resnet50_fpn": build_resnet50_fpn,
}
