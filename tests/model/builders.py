"""A small Faster R-CNN for detector-level tests, built the way the configs build it."""

from __future__ import annotations

from functools import partial

import torch

from frcnn.modeling import FasterRCNN, RPNDetector
from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.backbone import build_backbone
from frcnn.modeling.roi_heads import RoIHeads
from frcnn.modeling.roi_heads.box_head import FCHead
from frcnn.modeling.roi_heads.poolers import RoIPooler
from frcnn.modeling.rpn import RegionProposalNetwork
from frcnn.modeling.transform import InputTransform


def small_rpn(**overrides):
    kwargs = dict(
        anchor_generator=AnchorGenerator(sizes=(24, 48, 96), aspect_ratios=(0.5, 1.0, 2.0)),
        conv_channels=128,
        pre_nms_top_n={"train": 600, "test": 300},
        post_nms_top_n={"train": 200, "test": 100},
        nms_threshold=0.7,
        generator=torch.Generator().manual_seed(0),
    )
    kwargs.update(overrides)
    return partial(RegionProposalNetwork, **kwargs)


def small_faster_rcnn(num_classes: int = 2, pooler: str = "crop_and_resize", **rpn_overrides) -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(
        build_backbone("tiny"),
        num_classes,
        rpn=small_rpn(**rpn_overrides),
        roi_heads=partial(
            RoIHeads,
            pooler=RoIPooler(pooler, 7),
            box_head=partial(FCHead, hidden_dim=256),
            generator=torch.Generator().manual_seed(1),
        ),
        transform=partial(InputTransform, 128, 128),
    )


def small_rpn_detector() -> RPNDetector:
    torch.manual_seed(0)
    return RPNDetector(build_backbone("tiny"), rpn=small_rpn(), transform=partial(InputTransform, 128, 128))
