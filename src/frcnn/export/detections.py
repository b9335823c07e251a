"""The R-CNN stage's test-time detections with static ranks: what ``RoIHeads.predict`` and
``postprocess_detections`` compute, for a batch whose images share one size.

Shape shorthand: N images; P proposal slots per image; R real proposals over the batch; K classes;
D = ``detections_per_image``; M detections over the batch.

The head runs on the R real proposals only (gathered by ``nonzero``). NMS needs one box set per
(image, class), so scores and class boxes go back to the padded (N, P) layout, where a non-candidate
(padding, score <= threshold, a box under ``min_box_size``) scores -inf. ONNX's NMS caps each set
at ``detections_per_class``, which equals the eager cap applied after NMS (NMS picks in score
order); top-D per image over the kept pairs, padded with D x -inf, is the eager per-image cap.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from frcnn.export.ops import batched_nms
from frcnn.export.pooling import pool_rois
from frcnn.export.proposals import top_k_padded
from frcnn.modeling.boxes import clip_boxes
from frcnn.modeling.roi_heads import RoIHeads
from frcnn.modeling.roi_heads.postprocess import postprocess_detections

# RoIHeads does not pass it: postprocess_detections' default is the model's value.
MIN_BOX_SIZE = inspect.signature(postprocess_detections).parameters["min_box_size"].default


def rcnn_detections(
    heads: RoIHeads, features, strides, proposals: Tensor, proposal_logits: Tensor, image_h: Tensor, image_w: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """proposals (N, P, 4) in resized pixels with logits (N, P) (-inf: no proposal) ->
    (boxes (M, 4) in resized pixels, scores (M,), labels (M,) int64 in 1..K, batch_index (M,) int64),
    grouped by image, by decreasing score within an image."""
    N, P = proposal_logits.shape
    real = torch.isfinite(proposal_logits).reshape(-1).nonzero()[:, 0]  # (R,) flat slots n * P + p
    rois = proposals.reshape(-1, 4)[real]  # (R, 4)
    image_index = real // P
    pooled = pool_rois(heads.pooler, features, strides, torch.cat((image_index[:, None].to(rois.dtype), rois), dim=1))
    pred_class_logits, pred_deltas = heads.predictor(heads.box_head(pooled))  # (R, K+1), (R, 4K)
    R, K = pred_class_logits.shape[0], pred_class_logits.shape[1] - 1
    scores = torch.softmax(pred_class_logits.float(), dim=1)[:, 1:]  # (R, K)
    boxes = clip_boxes(heads.box_coder.decode(pred_deltas, rois).view(R, K, 4), image_h, image_w)
    widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    candidate = (scores > heads.score_threshold) & (widths >= MIN_BOX_SIZE) & (heights >= MIN_BOX_SIZE)
    scores = torch.where(candidate, scores, float("-inf"))

    # back to the padded layout: (N * P, K, 4) boxes and (N * P, K) scores, -inf where nothing
    padded_boxes = boxes.new_zeros((N * P, K, 4)).index_put((real,), boxes)
    padded_scores = scores.new_full((N * P, K), float("-inf")).index_put((real,), scores)
    class_boxes = padded_boxes.view(N, P, K, 4).permute(0, 2, 1, 3).reshape(N * K, P, 4)  # set = (image, class)
    class_scores = padded_scores.view(N, P, K).permute(0, 2, 1).reshape(N * K, 1, P)
    selected = batched_nms(class_boxes, class_scores, heads.detections_per_class, heads.nms_threshold)  # (S, 3)
    kept = torch.zeros(N * K * P, dtype=torch.bool, device=boxes.device)
    kept = kept.index_put((selected[:, 0] * P + selected[:, 2],), torch.ones_like(selected[:, 0], dtype=torch.bool))
    kept_scores = torch.where(kept, class_scores.reshape(-1), float("-inf")).view(N, K * P)

    D = heads.detections_per_image
    top_scores, top_index = top_k_padded(kept_scores, D)  # (N, D) by decreasing score
    found = torch.isfinite(top_scores).reshape(-1).nonzero()[:, 0]  # (M,) flat slots n * D + d
    batch_index = found // D
    pair = top_index.reshape(-1)[found]  # (M,) in 0 .. K*P - 1: class k, slot p
    labels = pair // P + 1
    out_boxes = class_boxes.reshape(N, K * P, 4)[batch_index, pair]
    return out_boxes, top_scores.reshape(-1)[found], labels, batch_index
