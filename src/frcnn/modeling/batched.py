"""Batch-wide operations over per-image lists: padding, padded IoU, top-k per group.

The RPN's and the R-CNN's targets, the proposal selection and the post-processing all work on
lists of different lengths per image. These helpers turn such lists into one padded tensor, so the
matcher, the sampler and the top-k run once over the whole batch instead of once per image.

Shape shorthand: N images; L_i items of image i (boxes, proposals); Lmax = max L_i; G ground-truth
boxes, P anchors or proposals; E entries of a flat list that belong to groups (images, classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou


def pad_per_image(tensors: Sequence[Tensor], fill: float = 0.0, min_length: int = 0) -> tuple[Tensor, Tensor]:
    """Per image (L_i, ...) -> (padded (N, max(Lmax, min_length), ...), valid (N, that length) bool).

    Every tensor needs the same trailing shape and dtype; padding rows hold ``fill``.
    """
    first = tensors[0]
    length = max(max((t.shape[0] for t in tensors), default=0), min_length)
    padded = first.new_full((len(tensors), length, *first.shape[1:]), fill)
    valid = torch.zeros((len(tensors), length), dtype=torch.bool, device=first.device)
    for i, t in enumerate(tensors):  # a loop over images
        padded[i, : t.shape[0]] = t
        valid[i, : t.shape[0]] = True
    return padded, valid


def padded_iou(gt_boxes: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
    """gt boxes (G_i, 4) and boxes (P_i, 4) per image -> IoU (N, Gmax, Pmax), -1 at every padded pair.

    The -1 rows of an image without ground truth, and the -1 columns of padded boxes, are what
    ``Matcher`` reads as "no ground truth here" and what samplers must treat as ignored.
    IoU is ``torchvision.ops.box_iou`` of each image's pair (exactly its values).
    """
    G = max((g.shape[0] for g in gt_boxes), default=0)
    P = max((b.shape[0] for b in boxes), default=0)
    iou = boxes[0].new_full((len(boxes), G, P), -1.0)
    for i, (g, b) in enumerate(zip(gt_boxes, boxes, strict=True)):  # a loop over images
        if g.shape[0] and b.shape[0]:
            iou[i, : g.shape[0], : b.shape[0]] = box_iou(g.to(b.dtype), b)
    return iou


def top_k_per_group(scores: Tensor, groups: Tensor, k: int) -> Tensor:
    """scores (E,), groups (E,) int64 >= 0 -> indices of the ``k`` best entries of each group.

    The result is ordered by group, then by decreasing score; entries of equal score keep their
    input order. No Python loop over groups: a stable sort by score, a stable sort by group, and
    each entry's rank within its group from the group sizes.
    """
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=scores.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]
    counts = torch.bincount(groups[order])
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=scores.device) - starts.repeat_interleave(counts)
    return order[rank < k]
