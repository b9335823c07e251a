"""Matcher: IoU with ground truth -> foreground / background / ignored, per anchor or proposal.

Shape shorthand: N images in a batch (optional leading dimension), G ground-truth boxes (padded
rows have IoU -1 everywhere), P anchors or proposals.
"""

from __future__ import annotations

import torch
from torch import Tensor

FOREGROUND = 1
BACKGROUND = 0
IGNORED = -1


class Matcher:
    """Assigns each anchor / proposal to its best ground-truth box and labels it.

    With ``m`` the best IoU of a column over the ground-truth boxes:
        foreground if ``m >= fg_iou_threshold``;
        background if ``bg_iou_low <= m < bg_iou_threshold``;
        ignored otherwise (between the two thresholds, or below ``bg_iou_low``).
    The seed's defaults: RPN fg 0.5, bg < 0.1 (``bg_iou_low = 0``, every non-overlapping anchor is
    background); R-CNN fg 0.5, bg in [0.1, 0.5) (``bg_iou_low = 0.1``: proposals that miss every
    object are ignored, to spend the mini-batch on the hard cases).

    ``allow_low_quality_matches`` is the seed's fallback: every ground-truth box keeps the
    anchor(s) with its highest IoU (ties included, if that IoU is > 0) as foreground, matched to
    that box's column-best ground truth, so small or oddly shaped objects always have a positive.

    An image with no ground-truth box gives every column background, whatever ``bg_iou_low``:
    a negative image is still evidence of what background looks like.
    """

    def __init__(
        self,
        fg_iou_threshold: float,
        bg_iou_threshold: float,
        bg_iou_low: float = 0.0,
        allow_low_quality_matches: bool = False,
    ) -> None:
        if not 0.0 <= bg_iou_low <= bg_iou_threshold <= fg_iou_threshold <= 1.0:
            raise ValueError(
                "Matcher needs 0 <= bg_iou_low <= bg_iou_threshold <= fg_iou_threshold <= 1, got "
                f"{bg_iou_low}, {bg_iou_threshold}, {fg_iou_threshold}"
            )
        self.fg_iou_threshold = fg_iou_threshold
        self.bg_iou_threshold = bg_iou_threshold
        self.bg_iou_low = bg_iou_low
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> tuple[Tensor, Tensor]:
        """iou ([N,] G, P) -> (matched_gt ([N,] P) int64, labels ([N,] P) int8 in {1, 0, -1}).

        ``matched_gt`` indexes the ground truth of each column (0 where the image has none).
        """
        if iou.shape[-2] == 0:  # no ground truth: all background
            shape = iou.shape[:-2] + iou.shape[-1:]
            return (
                torch.zeros(shape, dtype=torch.int64, device=iou.device),
                torch.full(shape, BACKGROUND, dtype=torch.int8, device=iou.device),
            )
        best_iou, matched_gt = iou.max(dim=-2)  # ([N,] P)
        labels = torch.full_like(matched_gt, IGNORED, dtype=torch.int8)
        labels[(best_iou >= self.bg_iou_low) & (best_iou < self.bg_iou_threshold)] = BACKGROUND
        labels[best_iou >= self.fg_iou_threshold] = FOREGROUND
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=-1, keepdim=True).values  # ([N,] G, 1)
            is_best = (iou == best_per_gt) & (best_per_gt > 0)  # ([N,] G, P)
            labels[is_best.any(dim=-2)] = FOREGROUND
        # An image in a padded batch with no real ground truth has all rows at IoU -1.
        no_gt = (best_iou < 0)
        labels[no_gt] = BACKGROUND
        matched_gt[no_gt] = 0
        return matched_gt, labels
