"""R-CNN training RoIs: match proposals to ground truth, label them, sample the seed's mini-batch.

Shape shorthand: N images, R_i proposals of image i (R_i + G_i with the ground truth added), G_i its
ground-truth boxes, Rmax / Gmax the largest, S sampled RoIs over the batch (<= N *
batch_size_per_image). Naming: ``gt_classes`` (S,) in 0..K (0 background), ``gt_deltas`` (S, 4)
the encoded offset of each sampled RoI to its matched box (meaningful where foreground).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from frcnn.modeling.batched import pad_per_image, padded_iou
from frcnn.modeling.boxes import BoxCoder
from frcnn.modeling.matcher import FOREGROUND, IGNORED, Matcher
from frcnn.modeling.sampling import subsample_labels


@dataclass
class SampledRoIs:
    """The R-CNN's training mini-batch: ``rois`` per image (S_i, 4), ``gt_classes`` (S,) and
    ``gt_deltas`` (S, 4) over the batch, rows grouped by image in the order of ``rois``."""

    rois: list[Tensor]
    gt_classes: Tensor
    gt_deltas: Tensor


@torch.no_grad()
def sample_rois(
    proposals: Sequence[Tensor],
    targets: Sequence[dict[str, Tensor]],
    matcher: Matcher,
    box_coder: BoxCoder,
    batch_size_per_image: int = 64,
    positive_fraction: float = 0.25,
    add_gt_as_proposals: bool = True,
    generator: torch.Generator | None = None,
) -> SampledRoIs:
    """Proposals (R_i, 4) + targets (``boxes`` (G_i, 4), ``labels`` (G_i,)) -> ``SampledRoIs``.

    The seed's rules: with ``add_gt_as_proposals`` the ground-truth boxes join the proposals (every
    object has a perfect RoI from the first step); ``matcher`` labels each RoI foreground (best IoU
    >= 0.5), background ([0.1, 0.5)) or ignored (below 0.1); per image at most
    ``batch_size_per_image`` RoIs, at most ``positive_fraction`` of them foreground, background
    filling the rest. Matching and sampling run once over the batch on (N, Gmax, Rmax) IoU padded
    with -1; padding columns are never sampled.
    """
    gt_boxes = [t["boxes"].to(p.dtype) for t, p in zip(targets, proposals, strict=True)]
    if add_gt_as_proposals:
        proposals = [torch.cat((p, g)) for p, g in zip(proposals, gt_boxes)]
    N = len(proposals)
    iou = padded_iou(gt_boxes, proposals)  # (N, Gmax, Rmax)
    padded_props, is_real = pad_per_image(list(proposals), min_length=iou.shape[2])  # (N, Rmax, 4), (N, Rmax)
    padded_gt, _ = pad_per_image(gt_boxes, min_length=1)  # (N, max(Gmax, 1), 4)
    padded_cls, _ = pad_per_image([t["labels"] for t in targets], min_length=1)  # (N, max(Gmax, 1))

    matched, labels = matcher(iou)  # (N, Rmax), (N, Rmax)
    labels[~is_real] = IGNORED
    sampled = subsample_labels(labels, batch_size_per_image, positive_fraction, generator)  # (N, Rmax)
    img, col = sampled.nonzero(as_tuple=True)  # (S,), (S,) grouped by image
    gt_idx = matched[img, col]
    is_fg = labels[img, col] == FOREGROUND
    gt_classes = torch.where(is_fg, padded_cls[img, gt_idx], 0)
    rois = padded_props[img, col]  # (S, 4)
    gt_deltas = box_coder.encode(rois, padded_gt[img, gt_idx])  # (S, 4); background rows unused
    counts = torch.bincount(img, minlength=N).tolist()
    return SampledRoIs(list(rois.split(counts)), gt_classes, gt_deltas)
