"""R-CNN stage: RoI pooling, box head, class / box predictor, targets, losses and detections.

Shape shorthand: N images, R_i proposals of image i, G_i ground-truth boxes, S sampled RoIs over
the batch (<= N * batch_size_per_image), K classes, D head features.
Features are the backbone's: one map (N, C, Hf, Wf) with its stride, or an FPN's maps by name with
their strides by name; the pooler decides what to do with them.
Naming: ``gt_classes`` (S,) in 0..K (0 background), ``gt_deltas`` (S, 4) for the matched box,
``pred_class_logits`` (S, K+1), ``pred_deltas`` (S, 4*K).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from frcnn.box_head import BoxPredictor, FCHead
from frcnn.boxes import BoxCoder
from frcnn.losses import box_regression_loss, rcnn_classification_loss, select_class_deltas
from frcnn.matcher import FOREGROUND, IGNORED, Matcher
from frcnn.postprocess import postprocess_detections
from frcnn.roi_pool import MultiLevelRoIPooler, RoIPooler
from frcnn.sampler import subsample_labels


class RoIHeads(nn.Module):
    """The second stage of Faster R-CNN.

    Args:
        backbone: the detector's backbone (its channels size the head; ResNet heads reuse its conv5).
        num_classes: K, without background.
        pooler: RoI pooling (the seed: crop-and-resize to 14x14, 2x2 max pool to 7x7; an FPN:
            ``MultiLevelRoIPooler``).
        box_head: factory ``(backbone=, resolution=) -> module`` with ``out_features``
            (``FCHead`` 4096 wide by default, 1024 for FPN's two-layer MLP head; or ``ResNetC5Head``).
        box_coder: the seed's normalised targets, weights (10, 10, 5, 5).
        matcher: fg IoU >= 0.5, bg in [0.1, 0.5), ignored below 0.1 (bg_iou_low; 0 keeps all).
        batch_size_per_image, positive_fraction: the seed's 64 RoIs with at most 25 % foreground.
        add_gt_as_proposals: the ground-truth boxes join the proposals in training, so every object
            has a perfectly matching RoI from the first step.
        score_threshold, nms_threshold, detections_per_class, detections_per_image: post-processing.
        smooth_l1_beta: see ``frcnn.losses.box_regression_loss`` (the seed: sigma 1 -> beta 1).
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
        pooled = self.pooler(features, boxes_per_image, stride)  # (R, C, S, S)
        return self.predictor(self.box_head(pooled))

    def forward(
        self,
        features: Tensor | Mapping[str, Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        stride: int | Mapping[str, int],
        targets: Sequence[dict[str, Tensor]] | None = None,
        return_detections: bool = False,
    ) -> tuple[list[dict[str, Tensor]] | None, dict[str, Tensor]]:
        """Returns (detections per image or None, {loss_cls, loss_box_reg} when targets are given)."""
        losses: dict[str, Tensor] = {}
        if targets is not None:
            rois, gt_classes, gt_deltas = self.sample_rois(proposals, targets)
            pred_class_logits, pred_deltas = self.predict(features, rois, stride)
            losses = self.losses(pred_class_logits, pred_deltas, gt_classes, gt_deltas)
        detections = None
        if return_detections:
            pred_class_logits, pred_deltas = self.predict(features, proposals, stride)
            detections = postprocess_detections(
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
        return detections, losses

    @torch.no_grad()
    def sample_rois(
        self, proposals: Sequence[Tensor], targets: Sequence[dict[str, Tensor]]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Proposals (R_i, 4) + targets -> sampled RoIs per image, gt_classes (S,), gt_deltas (S, 4).

        Matching and sampling run once over the batch on (N, Gmax, Rmax) IoU padded with -1.
        """
        gt_boxes = [t["boxes"].to(p.dtype) for t, p in zip(targets, proposals)]
        if self.add_gt_as_proposals:
            proposals = [torch.cat((p, g)) for p, g in zip(proposals, gt_boxes)]
        N = len(proposals)
        R = max(p.shape[0] for p in proposals)
        G = max(g.shape[0] for g in gt_boxes)
        device = proposals[0].device
        iou = torch.full((N, G, R), -1.0, device=device)
        padded_props = proposals[0].new_zeros((N, R, 4))
        padded_gt = proposals[0].new_zeros((N, max(G, 1), 4))
        padded_cls = torch.zeros((N, max(G, 1)), dtype=torch.int64, device=device)
        is_real = torch.zeros((N, R), dtype=torch.bool, device=device)
        for i, (p, g, t) in enumerate(zip(proposals, gt_boxes, targets)):  # loop over images
            padded_props[i, : p.shape[0]] = p
            is_real[i, : p.shape[0]] = True
            if g.shape[0]:
                iou[i, : g.shape[0], : p.shape[0]] = box_iou(g, p)
                padded_gt[i, : g.shape[0]] = g
                padded_cls[i, : g.shape[0]] = t["labels"]
        matched, labels = self.matcher(iou)  # (N, R), (N, R)
        labels[~is_real] = IGNORED  # padding columns are never sampled
        sampled = subsample_labels(labels, self.batch_size_per_image, self.positive_fraction, self.generator)
        img, col = sampled.nonzero(as_tuple=True)  # (S,), (S,) grouped by image
        is_fg = labels[img, col] == FOREGROUND
        gt_idx = matched[img, col]
        gt_classes = torch.where(is_fg, padded_cls[img, gt_idx], 0)
        rois = padded_props[img, col]  # (S, 4)
        gt_deltas = self.box_coder.encode(rois, padded_gt[img, gt_idx])  # (S, 4); bg rows unused
        counts = torch.bincount(img, minlength=N).tolist()
        return list(rois.split(counts)), gt_classes, gt_deltas

    def losses(
        self, pred_class_logits: Tensor, pred_deltas: Tensor, gt_classes: Tensor, gt_deltas: Tensor
    ) -> dict[str, Tensor]:
        """(S, K+1), (S, 4*K), (S,), (S, 4) -> {loss_cls, loss_box_reg}."""
        fg = gt_classes > 0
        return {
            "loss_cls": rcnn_classification_loss(pred_class_logits, gt_classes),
            "loss_box_reg": box_regression_loss(
                select_class_deltas(pred_deltas[fg], gt_classes[fg]),
                gt_deltas[fg],
                num_sampled=gt_classes.numel(),
                beta=self.smooth_l1_beta,
            ),
        }
