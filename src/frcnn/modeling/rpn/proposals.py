"""Proposal selection: the RPN's scored anchors -> a few hundred boxes per image (pure function).

Shape shorthand: N images, M anchors per image (all levels), M_l anchors of level l, K_l =
min(pre_nms_top_n, M_l) kept per level before NMS, K = sum of K_l, P_i proposals of image i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from frcnn.modeling.batched import top_k_per_group
from frcnn.modeling.boxes import BoxCoder, clip_boxes
from frcnn.modeling.nms import nms_top_k


@dataclass
class Proposals:
    """Per image: ``boxes`` (P_i, 4) in the resized image's pixels, best first, and their
    objectness ``logits`` (P_i,). Detached: the R-CNN's loss does not flow into the coordinates."""

    boxes: list[Tensor]
    logits: list[Tensor]


@torch.no_grad()
def select_proposals(
    anchors: Tensor,
    pred_objectness_logits: Tensor,
    pred_anchor_deltas: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    num_anchors_per_level: Sequence[int],
    box_coder: BoxCoder,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_threshold: float,
    min_box_size: float = 1e-3,
    score_threshold: float = 0.0,
) -> Proposals:
    """anchors (M, 4), logits (N, M), deltas (N, M, 4) -> ``Proposals``.

    The seed's post-processing, with torchvision's FPN rules: keep the ``pre_nms_top_n`` best
    anchors of each level (the many anchors of the finest level would otherwise crowd out the few
    large ones), decode, clip to the image (``image_sizes`` (h, w)), drop boxes narrower or shorter
    than ``min_box_size`` and those whose objectness probability is below ``score_threshold``, NMS
    per image and level at ``nms_threshold``, keep the ``post_nms_top_n`` best of each image. All
    images at once: NMS runs once over the batch with (image, level) as the group.
    """
    N, M = pred_objectness_logits.shape
    device = anchors.device
    top_logits, top_idx, top_level = [], [], []
    start = 0
    for level, M_l in enumerate(num_anchors_per_level):  # a loop over levels
        k = min(pre_nms_top_n, M_l)
        level_logits, level_idx = pred_objectness_logits[:, start : start + M_l].topk(k, dim=1)  # (N, K_l)
        top_logits.append(level_logits)
        top_idx.append(level_idx + start)
        top_level.append(torch.full((k,), level, dtype=torch.int64, device=device))
        start += M_l
    top_logits, top_idx = torch.cat(top_logits, dim=1), torch.cat(top_idx, dim=1)  # (N, K)
    K = top_idx.shape[1]
    top_deltas = pred_anchor_deltas.gather(1, top_idx[..., None].expand(N, K, 4))  # (N, K, 4)
    boxes = box_coder.decode(top_deltas.reshape(-1, 4), anchors[top_idx.reshape(-1)])  # (N*K, 4)
    sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=device)  # (N, 2) as (h, w)
    boxes = clip_boxes(boxes.view(N, K, 4), sizes[:, None, 0:1], sizes[:, None, 1:2]).view(-1, 4)
    image_idx = torch.arange(N, device=device).repeat_interleave(K)  # (N*K,)
    group = image_idx * len(top_level) + torch.cat(top_level).repeat(N)  # (N*K,) one group per (image, level)
    logits = top_logits.reshape(-1).float()

    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    valid = (w >= min_box_size) & (h >= min_box_size) & torch.isfinite(logits)
    valid &= torch.sigmoid(logits) >= score_threshold
    keep = valid.nonzero()[:, 0]
    # An image's best post_nms_top_n come from the first post_nms_top_n survivors of each level.
    keep = keep[nms_top_k(boxes[keep], logits[keep], group[keep], nms_threshold, post_nms_top_n)]
    keep = keep[top_k_per_group(logits[keep], image_idx[keep], post_nms_top_n)]  # by image, best first
    counts = torch.bincount(image_idx[keep], minlength=N).tolist()
    return Proposals(list(boxes[keep].split(counts)), list(logits[keep].split(counts)))
