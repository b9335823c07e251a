"""The RPN's test-time proposals with static ranks: what ``RegionProposalNetwork.select_proposals``
computes, for a batch whose images share one size (an exported graph's input).

Shape shorthand: N images; L feature levels; Hl, Wl a level's map; A anchors per location;
M_l = Hl * Wl * A anchors of level l; k = ``pre_nms_top_n["test"]`` per level; P =
``post_nms_top_n["test"]`` per image.

Where the eager code keeps a data-dependent number of boxes, this keeps a fixed number and a
score of -inf for the slots that hold none: top-k over logits padded with k x -inf (so k never
exceeds a small image's M_l), NMS on -inf-free candidates only (``frcnn_export::nms``), and top-P
over the kept logits padded with P x -inf. The boxes that survive, their logits and their order
are the eager ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from frcnn.export.ops import batched_nms
from frcnn.modeling.boxes import clip_boxes
from frcnn.modeling.rpn import RegionProposalNetwork


def grid_anchors(rpn: RegionProposalNetwork, level: int, feature_map: Tensor, padded_h, padded_w) -> Tensor:
    """-> (Hl * Wl * A, 4) anchors of ``level`` for a batch padded to (padded_h, padded_w), as
    ``AnchorGenerator`` places them (stride ``H // Hl``, the same float32 arithmetic)."""
    generator = rpn.anchor_generator
    Hl, Wl = feature_map.shape[-2], feature_map.shape[-1]
    device = feature_map.device
    ys = (torch.arange(Hl, dtype=torch.float32, device=device) + generator.offset) * (padded_h // Hl)
    xs = (torch.arange(Wl, dtype=torch.float32, device=device) + generator.offset) * (padded_w // Wl)
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (Hl, Wl)
    shifts = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)  # (Hl*Wl, 1, 4)
    return (shifts + generator.base_anchors(level).to(device)[None]).reshape(-1, 4)


def top_k_padded(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """scores (N, E) -> the k best (N, k) and their indices (N, k) clamped to E - 1; slots beyond E
    hold -inf. ``k`` is a constant, so the graph has no data-dependent size here."""
    N, E = scores.shape
    padded = torch.cat((scores, scores.new_full((N, k), float("-inf"))), dim=1)
    values, index = padded.topk(k, dim=1)
    return values, index.clamp(max=E - 1)


def rpn_proposals(
    rpn: RegionProposalNetwork, maps: list[Tensor], padded_h, padded_w, image_h: Tensor, image_w: Tensor
) -> tuple[Tensor, Tensor]:
    """maps: L feature maps (N, C, Hl, Wl) of a batch padded to (padded_h, padded_w); image_h,
    image_w: float32 scalars, the resized images' size (clipping bounds).

    Returns proposals (N, P, 4) in resized pixels and their objectness logits (N, P), best first,
    -inf where an image has fewer than P proposals.
    """
    k, P = rpn.pre_nms_top_n["test"], rpn.post_nms_top_n["test"]
    N = maps[0].shape[0]
    boxes_per_level, logits_per_level = [], []
    for level, feature_map in enumerate(maps):
        Hl, Wl = feature_map.shape[-2], feature_map.shape[-1]
        pred_logits, pred_deltas = rpn.head(feature_map)  # (N, A, Hl, Wl), (N, A*4, Hl, Wl)
        A = pred_logits.shape[1]
        logits = pred_logits.permute(0, 2, 3, 1).reshape(N, -1)  # (N, M_l)
        # (N, A*4, Hl, Wl) -> (N, A, 4, Hl, Wl) -> (N, Hl, Wl, A, 4) -> (N, M_l, 4)
        deltas = pred_deltas.view(N, A, 4, Hl, Wl).permute(0, 3, 4, 1, 2).reshape(N, -1, 4)
        anchors = grid_anchors(rpn, level, feature_map, padded_h, padded_w)  # (M_l, 4)
        top_logits, top_index = top_k_padded(logits, k)  # (N, k)
        top_deltas = deltas.gather(1, top_index[..., None].expand(N, k, 4))  # (N, k, 4)
        boxes = rpn.box_coder.decode(top_deltas.reshape(-1, 4), anchors[top_index.reshape(-1)])  # (N*k, 4)
        boxes_per_level.append(clip_boxes(boxes.view(N, k, 4), image_h, image_w))
        logits_per_level.append(top_logits.float())
    L = len(maps)
    boxes = torch.stack(boxes_per_level, dim=1)  # (N, L, k, 4)
    logits = torch.stack(logits_per_level, dim=1)  # (N, L, k)

    widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    valid = (widths >= rpn.min_box_size) & (heights >= rpn.min_box_size) & torch.isfinite(logits)
    valid &= torch.sigmoid(logits) >= rpn.score_threshold
    candidates = torch.where(valid, logits, torch.full_like(logits, float("-inf")))
    # one NMS set per (image, level), as the eager batched_nms groups them
    selected = batched_nms(boxes.view(N * L, k, 4), candidates.view(N * L, 1, k), k, rpn.nms_threshold)  # (S, 3)
    kept = torch.zeros(N * L * k, dtype=torch.bool, device=boxes.device)
    kept = kept.index_put((selected[:, 0] * k + selected[:, 2],), torch.ones_like(selected[:, 0], dtype=torch.bool))
    kept_logits = torch.where(kept.view(N, L * k), candidates.view(N, L * k), float("-inf"))
    top_logits, top_index = top_k_padded(kept_logits, P)  # (N, P): each image's best P, best first
    proposals = boxes.view(N, L * k, 4).gather(1, top_index[..., None].expand(N, P, 4))
    return proposals, top_logits
