"""The one operator the export graph adds: NMS over a batch of independent box sets.

Shape shorthand: B box sets (an image, or an image and a class), C score rows per set, n boxes per
set, S selected boxes over all sets.

``frcnn_export::nms(boxes (B, n, 4), scores (B, C, n), max_per_class, iou_threshold) -> (S, 3)``
is ONNX's ``NonMaxSuppression`` (rows ``(b, c, i)``, per (b, c) by decreasing score, at most
``max_per_class`` each) with one rule added: a score of -inf is no candidate. The export graph
marks padding and filtered boxes that way, so that every set keeps a static size. Why an operator
of our own rather than ``torchvision.ops.batched_nms``: that one shifts the boxes of each group by
an offset (its "coordinate trick") when they are few, which changes their float values; this one
runs each set on its own boxes, as ONNX's operator does, and translates to it one to one.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

# ONNX's NonMaxSuppression keeps boxes whose score is strictly above its score_threshold: with
# the lowest float every finite score is a candidate and -inf (padding, filtered) is none.
LOWEST_FLOAT = float(torch.finfo(torch.float32).min)


@torch.library.custom_op("frcnn_export::nms", mutates_args=())
def batched_nms(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float) -> Tensor:
    """boxes (B, n, 4) xyxy, scores (B, C, n) -> selected (S, 3) int64 rows ``(b, c, i)``."""
    B, C, _ = scores.shape
    rows = [boxes.new_zeros((0, 3), dtype=torch.int64)]
    for b in range(B):  # the eager reference; the exported graph runs ONNX's operator
        for c in range(C):
            candidates = (scores[b, c] > LOWEST_FLOAT).nonzero()[:, 0]
            keep = candidates[nms(boxes[b, candidates], scores[b, c, candidates], iou_threshold)][:max_per_class]
            index = torch.tensor([b, c], dtype=torch.int64, device=boxes.device).expand(keep.numel(), 2)
            rows.append(torch.cat((index, keep[:, None]), dim=1))
    return torch.cat(rows)


@batched_nms.register_fake
def _(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float) -> Tensor:
    selected = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((selected, 3), dtype=torch.int64)
