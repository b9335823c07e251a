"""RPN training: anchor targets (IoU matching with the best-anchor fallback) and the two losses.

Shape shorthand: N images, M anchors per image (all levels), G_i ground-truth boxes of image i.
Naming: ``gt_labels`` (N, M) int8 in {1 foreground, 0 background, -1 ignored}, ``gt_deltas``
(N, M, 4) the encoded offset of each anchor to its matched box (meaningful where foreground),
``pred_objectness_logits`` (N, M), ``pred_anchor_deltas`` (N, M, 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from frcnn.modeling.batched import pad_per_image, padded_iou
from frcnn.modeling.boxes import BoxCoder
from frcnn.modeling.losses import box_regression_loss
from frcnn.modeling.matcher import FOREGROUND, Matcher
from frcnn.modeling.sampling import subsample_labels


@torch.no_grad()
def rpn_targets(
    anchors: Tensor, gt_boxes: Sequence[Tensor], matcher: Matcher, box_coder: BoxCoder
) -> tuple[Tensor, Tensor]:
    """anchors (M, 4), gt boxes per image (G_i, 4) -> gt_labels (N, M) int8, gt_deltas (N, M, 4).

    IoU is padded to (N, Gmax, M) with -1 so the matcher runs once over the whole batch; an image
    without ground truth gets all-background labels (the matcher's rule).
    """
    N, M = len(gt_boxes), anchors.shape[0]
    iou = padded_iou(gt_boxes, [anchors] * N)  # (N, Gmax, M)
    matched, gt_labels = matcher(iou)  # (N, M), (N, M)
    padded_gt, _ = pad_per_image([g.to(anchors.dtype) for g in gt_boxes], min_length=1)  # (N, max(Gmax, 1), 4)
    matched_boxes = padded_gt.gather(1, matched[..., None].expand(N, M, 4))  # (N, M, 4)
    gt_deltas = box_coder.encode(anchors.repeat(N, 1), matched_boxes.reshape(-1, 4)).reshape(N, M, 4)
    return gt_labels, gt_deltas


def rpn_objectness_loss(pred_logits: Tensor, gt_labels: Tensor) -> Tensor:
    """pred_logits (S,), gt_labels (S,) in {0, 1} -> scalar binary cross-entropy, mean over S."""
    if pred_logits.numel() == 0:
        return pred_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(pred_logits.float(), gt_labels.float())


def rpn_losses(
    pred_objectness_logits: Tensor,
    pred_anchor_deltas: Tensor,
    gt_labels: Tensor,
    gt_deltas: Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
    smooth_l1_beta: float,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """(N, M), (N, M, 4), (N, M), (N, M, 4) -> ``loss_rpn_cls``, ``loss_rpn_reg`` on a balanced sample.

    Per image, ``batch_size_per_image`` anchors with at most ``positive_fraction`` foreground
    (the seed: 256 at 50 %). Cross-entropy over the sample; smooth L1 over its foreground, divided
    by the sample size (``frcnn.modeling.losses``).
    """
    sampled = subsample_labels(gt_labels, batch_size_per_image, positive_fraction, generator)  # (N, M)
    foreground = sampled & (gt_labels == FOREGROUND)
    return {
        "loss_rpn_cls": rpn_objectness_loss(pred_objectness_logits[sampled], gt_labels[sampled]),
        "loss_rpn_reg": box_regression_loss(
            pred_anchor_deltas[foreground], gt_deltas[foreground], int(sampled.sum()), smooth_l1_beta
        ),
    }
