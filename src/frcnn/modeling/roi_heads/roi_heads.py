"""R-CNN stage: RoI pooling, box head, class / box predictor; training losses and detections.

Shape shorthand: N images, R_i proposals of image i, R = sum of R_i, K classes, D head features.
Features are the backbone's: one map (N, C, Hf, Wf) with its stride, or an FPN's maps by name with
their strides by name; the pooler decides what to do with them. Training RoIs come from
``frcnn.modeling.roi_heads.sampling``, losses from ``.losses``, detections from ``.postprocess``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from frcnn.modeling.boxes import BoxCoder
from frcnn.modeling.matcher import Matcher
from frcnn.modeling.roi_heads.box_head import BoxPredictor, FCHead
from frcnn.modeling.roi_heads.losses import rcnn_losses
from frcnn.modeling.roi_heads.poolers import MultiLevelRoIPooler, RoIPooler
from frcnn.modeling.roi_heads.postprocess import postprocess_detections
from frcnn.modeling.roi_heads.sampling import sample_rois


@dataclass
class RoIHeadsOutput:
    """Per image detections (``boxes`` (D, 4) in the resized image's pixels, ``scores`` (D,),
    ``labels`` (D,) int64 in 1..K) when asked for, and ``loss_cls`` / ``loss_box_reg`` with targets."""

    detections: list[dict[str, Tensor]] | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)


class RoIHeads(nn.Module):
    """The second stage of Faster R-CNN.

    Args:
        backbone: the detector's backbone (its channels size the head; a C4 head takes its conv5).
        num_classes: K, without background.
        pooler: RoI pooling (the seed: crop-and-resize to 14x14, 2x2 max pool to 7x7; an FPN:
            ``MultiLevelRoIPooler``).
        box_head: factory ``(backbone=, resolution=) -> module`` with ``out_features``
            (``FCHead`` 4096 wide by default, 1024 for FPN's two-layer MLP head; or ``ResNetC5Head``).
        box_coder: the seed's normalised targets, weights (10, 10, 5, 5).
        matcher: fg IoU >= 0.5, bg in [0.1, 0.5), ignored below 0.1 (bg_iou_low; 0 keeps all).
        batch_size_per_image, positive_fraction: the seed's 64 RoIs with at most 25 % foreground.
        add_gt_as_proposals: the ground-truth boxes join the proposals in training.
        score_threshold, nms_threshold, detections_per_class, detections_per_image: post-processing.
        smooth_l1_beta: see ``frcnn.modeling.losses.box_regression_loss`` (the seed: sigma 1 -> beta 1).
        generator: optional seeded ``torch.Generator`` for the sampling.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        pooler: RoIPooler | MultiLevelRoIPooler | None = None,
        box_head: Callable[..., nn.Module] = FCHead,
        box_coder: BoxCoder | None = None,
        matcher: Matcher | None = None,
        batch_size_per_image: int = 64,
        positive_fraction: float = 0.25,
        add_gt_as_proposals: bool = True,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        detections_per_class: int = 100,
        detections_per_image: int = 100,
        smooth_l1_beta: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (background is extra), got {num_classes}")
        self.num_classes = num_classes
        self.pooler = pooler or RoIPooler()
        self.box_head = box_head(backbone=backbone, resolution=self.pooler.output_size)
        self.predictor = BoxPredictor(self.box_head.out_features, num_classes)
        self.box_coder = box_coder or BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.matcher = matcher or Matcher(0.5, 0.5, 0.1, allow_low_quality_matches=False)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.add_gt_as_proposals = add_gt_as_proposals
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.detections_per_class = detections_per_class
        self.detections_per_image = detections_per_image
        self.smooth_l1_beta = smooth_l1_beta
        self.generator = generator

    def predict(
        self, features: Tensor | Mapping[str, Tensor], boxes_per_image: Sequence[Tensor], stride: int | Mapping[str, int]
    ) -> tuple[Tensor, Tensor]:
        """features (N, C, Hf, Wf) or {name: map}, boxes (R_i, 4) -> (class logits (R, K+1), deltas (R, 4*K))."""
        layout = getattr(self.box_head, "input_memory_format", torch.contiguous_format)
        pooled = self.pooler(features, boxes_per_image, stride, layout)  # (R, C, S, S)
        return self.predictor(self.box_head(pooled))

    def forward(
        self,
        features: Tensor | Mapping[str, Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        stride: int | Mapping[str, int],
        targets: Sequence[dict[str, Tensor]] | None = None,
        return_detections: bool = False,
    ) -> RoIHeadsOutput:
        """Losses on a sampled mini-batch when ``targets`` are given; detections over all the
        proposals when ``return_detections`` (both from one call in validation)."""
        output = RoIHeadsOutput()
        if targets is not None:
            sampled = sample_rois(
                proposals,
                targets,
                self.matcher,
                self.box_coder,
                self.batch_size_per_image,
                self.positive_fraction,
                self.add_gt_as_proposals,
                self.generator,
            )
            pred_class_logits, pred_deltas = self.predict(features, sampled.rois, stride)
            output.losses = rcnn_losses(
                pred_class_logits, pred_deltas, sampled.gt_classes, sampled.gt_deltas, self.smooth_l1_beta
            )
        if return_detections:
            pred_class_logits, pred_deltas = self.predict(features, proposals, stride)
            output.detections = postprocess_detections(
                pred_class_logits,
                pred_deltas,
                proposals,
                image_sizes,
                self.box_coder,
                self.score_threshold,
                self.nms_threshold,
                self.detections_per_class,
                self.detections_per_image,
            )
        return output
