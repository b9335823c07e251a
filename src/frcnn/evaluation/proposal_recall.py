"""Recall of the RPN's proposals: the fraction of ground-truth boxes that one of the top-N proposals
overlaps by at least an IoU threshold (detectron2's convention: `>=`).

Shape shorthand: P proposals of one image (sorted by objectness, best first), G its ground-truth boxes,
N the number of `top_ns`, I the number of `iou_thresholds`.

Recall is pooled over boxes, not averaged over images: an image with many boxes weighs more. An image
with fewer than n proposals uses all it has. No ground truth at all gives NaN.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from frcnn.evaluation.per_image import gather_per_image


def recalled_counts(
    proposals: Tensor, gt_boxes: Tensor, top_ns: tuple[int, ...], iou_thresholds: tuple[float, ...]
) -> Tensor:
    """proposals (P, 4) sorted by score, gt_boxes (G, 4) -> (N, I) int64: boxes recalled per (n, t)."""
    gt_boxes = gt_boxes.detach().float().cpu()
    proposals = proposals.detach().float().cpu()[: max(top_ns)]
    thresholds = torch.tensor(iou_thresholds, dtype=torch.float32)  # (I,)
    iou = box_iou(gt_boxes, proposals)  # (G, P)
    counts = torch.zeros(len(top_ns), len(iou_thresholds), dtype=torch.int64)
    if iou.numel() == 0:  # no box (nothing to recall) or no proposal (nothing recalled)
        return counts
    for i, n in enumerate(top_ns):
        best = iou[:, :n].max(dim=1).values  # (G,)
        counts[i] = (best[:, None] >= thresholds).sum(dim=0)
    return counts


def recall_key(n: int, iou_threshold: float) -> str:
    return f"recall@{n}/iou{iou_threshold:g}"


def _as_metrics(
    counts: np.ndarray, num_gt: int, top_ns: tuple[int, ...], iou_thresholds: tuple[float, ...]
) -> dict[str, float]:
    """counts (N, I) recalled boxes of `num_gt` -> {"recall@n/iou<t>": recall}."""
    return {
        recall_key(n, t): float(counts[i, j]) / num_gt if num_gt else math.nan
        for i, n in enumerate(top_ns)
        for j, t in enumerate(iou_thresholds)
    }


def proposal_recall(
    proposals_per_image: list[Tensor],
    gt_boxes_per_image: list[Tensor],
    top_ns: tuple[int, ...] = (50, 300, 1000),
    iou_thresholds: tuple[float, ...] = (0.5, 0.7),
) -> dict[str, float]:
    """Per image proposals (P_i, 4) sorted by score and ground truth (G_i, 4) -> {"recall@50/iou0.5": ...}."""
    counts = np.zeros((len(top_ns), len(iou_thresholds)), dtype=np.int64)
    num_gt = 0
    for proposals, gt_boxes in zip(proposals_per_image, gt_boxes_per_image, strict=True):
        counts += recalled_counts(proposals, gt_boxes, top_ns, iou_thresholds).numpy()
        num_gt += len(gt_boxes)
    return _as_metrics(counts, num_gt, top_ns, iou_thresholds)


class ProposalRecall:
    """`proposal_recall` accumulated over a validation loop; each image id counts once under DDP."""

    def __init__(
        self, top_ns: tuple[int, ...] = (50, 300, 1000), iou_thresholds: tuple[float, ...] = (0.5, 0.7)
    ) -> None:
        self.top_ns = tuple(top_ns)
        self.iou_thresholds = tuple(iou_thresholds)
        self.per_image: dict[int, tuple[np.ndarray, int]] = {}  # image_id -> (counts (N, I), G)

    def update(self, proposals_per_image: list[Tensor], targets: list[dict[str, Tensor]]) -> None:
        """proposals_per_image: (P_i, 4) sorted by score; targets: `boxes` (G_i, 4) and `image_id`."""
        for proposals, target in zip(proposals_per_image, targets, strict=True):
            counts = recalled_counts(proposals, target["boxes"], self.top_ns, self.iou_thresholds)
            self.per_image.setdefault(int(target["image_id"]), (counts.numpy(), len(target["boxes"])))

    def compute(self) -> dict[str, float]:
        """{"recall@n/iou<t>": recall} over every rank's images. Collective under DDP."""
        per_image = gather_per_image(self.per_image)
        counts = np.zeros((len(self.top_ns), len(self.iou_thresholds)), dtype=np.int64)
        num_gt = 0
        for image_counts, image_num_gt in per_image.values():
            counts += image_counts
            num_gt += image_num_gt
        return _as_metrics(counts, num_gt, self.top_ns, self.iou_thresholds)

    def reset(self) -> None:
        self.per_image = {}
