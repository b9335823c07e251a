"""torchvision's ``FasterRCNN`` computing what one of ours computes: same weights, same settings.

``torchvision_twin(ours)`` reads the architecture and every hyperparameter off a built
``frcnn.modeling.FasterRCNN`` and builds ``torchvision.models.detection.FasterRCNN`` with
torchvision's own components (``AnchorGenerator``, ``RPNHead``, ``MultiScaleRoIAlign``,
``TwoMLPHead``, ``FastRCNNPredictor``) and copies of our weights (``torchvision_keys``). In
evaluation both give the same proposals and detections to float rounding (tested in
``tests/model/test_torchvision_twin.py``); ``bench/vs_torchvision.py`` times the pair.

What torchvision cannot express raises ``ValueError`` naming it: crop-and-resize or RoI max pooling
(torchvision pools with RoIAlign only), ``aligned=True`` RoIAlign, an RPN conv narrower or wider
than its input, an R-CNN background band (``bg_iou_low > 0``), a per-class detection cap below the
per-image one. A ``ResNetC5Head`` (conv5 + average pool) is copied as it is: torchvision has no C4
head class of its own.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead as TorchvisionRPNHead
from torchvision.ops import MultiScaleRoIAlign

from frcnn.interop.torchvision_keys import ours_to_torchvision
from frcnn.modeling import FasterRCNN
from frcnn.modeling.roi_heads import FCHead, MultiLevelRoIPooler, RoIPooler


class TrunkForTorchvision(nn.Module):
    """A single-map backbone's trunk as torchvision's FasterRCNN wants it: ``body`` + ``out_channels``
    (the state-dict keys stay ``backbone.body.*``)."""

    def __init__(self, body: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) normalised -> (N, out_channels, H / stride, W / stride)."""
        return self.body(x)


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(f"no torchvision twin: {what}")


def _pooler(pooler: nn.Module) -> MultiScaleRoIAlign:
    level = pooler.pooler if isinstance(pooler, MultiLevelRoIPooler) else pooler
    _require(isinstance(level, RoIPooler) and level.method == "roi_align", "torchvision pools RoIs with RoIAlign only")
    _require(not level.aligned, "torchvision's MultiScaleRoIAlign uses aligned=False")
    if isinstance(pooler, MultiLevelRoIPooler):
        _require((pooler.canonical_size, pooler.canonical_level) == (224.0, 4), "torchvision's level mapper is 224 / 4")
        names = list(pooler.featmap_names)
    else:
        names = ["0"]
    return MultiScaleRoIAlign(names, level.output_size, level.sampling_ratio)


def torchvision_twin(ours: FasterRCNN) -> TorchvisionFasterRCNN:
    """-> torchvision's FasterRCNN with a copy of ``ours``' weights and settings, in ``ours``' mode."""
    rpn, heads, transform = ours.rpn, ours.roi_heads, ours.transform
    if hasattr(ours.backbone, "strides"):  # an FPNBackbone: body + fpn, as torchvision's BackboneWithFPN
        backbone = copy.deepcopy(ours.backbone)
    else:
        backbone = TrunkForTorchvision(copy.deepcopy(ours.backbone.body), ours.backbone.out_channels)
    generator = rpn.anchor_generator
    _require(generator.offset == 0.0, "torchvision centres anchors at offset 0")
    sizes = generator.sizes if generator.per_level else (generator.sizes,)
    anchors = TorchvisionAnchors(tuple(tuple(s) for s in sizes), (tuple(generator.aspect_ratios),) * len(sizes))
    _require(rpn.head.conv.out_channels == backbone.out_channels, "torchvision's RPN conv keeps its input width")
    _require(rpn.matcher.bg_iou_low == 0.0 and rpn.matcher.allow_low_quality_matches, "torchvision's RPN matcher")
    _require(heads.matcher.bg_iou_low == 0.0, "torchvision's R-CNN has no ignored band below the background")
    _require(heads.matcher.fg_iou_threshold == heads.matcher.bg_iou_threshold, "torchvision's R-CNN: fg = bg threshold")
    _require(heads.detections_per_class >= heads.detections_per_image, "torchvision caps detections per image only")
    if isinstance(heads.box_head, FCHead):
        box_head = TwoMLPHead(heads.box_head.fc1.in_features, heads.box_head.out_features)
    else:  # our ResNetC5Head (conv5 + average pool): torchvision has no such class
        box_head = copy.deepcopy(heads.box_head)
    twin = TorchvisionFasterRCNN(
        backbone,
        min_size=transform.min_size,
        max_size=transform.max_size,
        image_mean=list(transform.image_mean),
        image_std=list(transform.image_std),
        size_divisible=transform.size_divisible,
        rpn_anchor_generator=anchors,
        rpn_head=TorchvisionRPNHead(backbone.out_channels, generator.num_anchors_per_location),
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n["train"],
        rpn_pre_nms_top_n_test=rpn.pre_nms_top_n["test"],
        rpn_post_nms_top_n_train=rpn.post_nms_top_n["train"],
        rpn_post_nms_top_n_test=rpn.post_nms_top_n["test"],
        rpn_nms_thresh=rpn.nms_threshold,
        rpn_fg_iou_thresh=rpn.matcher.fg_iou_threshold,
        rpn_bg_iou_thresh=rpn.matcher.bg_iou_threshold,
        rpn_batch_size_per_image=rpn.batch_size_per_image,
        rpn_positive_fraction=rpn.positive_fraction,
        rpn_score_thresh=rpn.score_threshold,
        box_roi_pool=_pooler(heads.pooler),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(heads.box_head.out_features, ours.num_classes + 1),
        box_score_thresh=heads.score_threshold,
        box_nms_thresh=heads.nms_threshold,
        box_detections_per_img=heads.detections_per_image,
        box_fg_iou_thresh=heads.matcher.fg_iou_threshold,
        box_bg_iou_thresh=heads.matcher.bg_iou_threshold,
        box_batch_size_per_image=heads.batch_size_per_image,
        box_positive_fraction=heads.positive_fraction,
        bbox_reg_weights=heads.box_coder.weights,
    )
    twin.load_state_dict(ours_to_torchvision(ours.state_dict()), strict=True)
    return twin.to(next(ours.parameters()).device).train(ours.training)
