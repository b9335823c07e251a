"""Confusion matrix of a detector, with a background row and column.

Shape shorthand: K classes, D detections and G ground-truth boxes of one image.

Convention: `matrix[true, predicted]`, index 0 = background, 1..K = the labels.
- row 1..K, column 1..K: a ground-truth box and the detection matched to it (the diagonal is right);
- row 0 (background), column c: a detection of class c matched to no box (a false positive);
- row c, column 0 (background): a box of class c no detection matched (a miss).
`matrix[0, 0]` is always 0.

Matching, per image: detections with score >= `score_threshold` are taken by decreasing score; each
takes the unmatched ground-truth box of *any* class with the highest IoU, if that IoU >= `iou_threshold`
(class-agnostic, so a wrong class shows up as a confusion, not as a miss plus a false positive).
An unmatched detection with IoU >= `iou_threshold` to an ignore box (COCO crowd, VOC difficult) is
left out rather than counted as a false positive, and ignore boxes are never misses.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou


def image_confusion(
    pred: dict[str, Tensor],
    target: dict[str, Tensor],
    num_classes: int,
    iou_threshold: float,
    score_threshold: float,
) -> Tensor:
    """One image's detections and target -> (K + 1, K + 1) int64 confusion counts."""
    matrix = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.int64)
    keep = pred["scores"].detach().cpu() >= score_threshold
    order = torch.argsort(pred["scores"].detach().cpu()[keep], descending=True, stable=True)
    pred_boxes = pred["boxes"].detach().cpu().float()[keep][order]  # (D, 4)
    pred_labels = pred["labels"].detach().cpu()[keep][order]  # (D,)
    gt_boxes = target["boxes"].detach().cpu().float()  # (G, 4)
    gt_labels = target["labels"].detach().cpu()  # (G,)
    ignore_boxes = target.get("ignore_boxes", torch.zeros(0, 4)).detach().cpu().float()  # (M, 4)

    iou = box_iou(pred_boxes, gt_boxes)  # (D, G)
    gt_matched = torch.zeros(len(gt_boxes), dtype=torch.bool)
    for d in range(len(pred_boxes)):
        candidates = iou[d].masked_fill(gt_matched, -1.0)  # (G,)
        if len(candidates) and candidates.max() >= iou_threshold:
            g = int(candidates.argmax())
            gt_matched[g] = True
            matrix[gt_labels[g], pred_labels[d]] += 1
        elif len(ignore_boxes) == 0 or box_iou(pred_boxes[d : d + 1], ignore_boxes).max() < iou_threshold:
            matrix[0, pred_labels[d]] += 1
    missed = gt_labels[~gt_matched]
    matrix[:, 0] += torch.bincount(missed, minlength=num_classes + 1)
    return matrix


def confusion_matrix(
    preds: list[dict[str, Tensor]],
    targets: list[dict[str, Tensor]],
    num_classes: int,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> Tensor:
    """Per image detections (`boxes` (D, 4), `scores` (D,), `labels` (D,)) and targets (`boxes` (G, 4),
    `labels` (G,), optional `ignore_boxes` (M, 4)) -> (K + 1, K + 1) int64, `[true, predicted]`,
    index 0 = background. Sums over images, so batches can be added up."""
    matrix = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.int64)
    for pred, target in zip(preds, targets, strict=True):
        matrix += image_confusion(pred, target, num_classes, iou_threshold, score_threshold)
    return matrix
