"""Merging several detection sets of one image into one (test-time augmentation's last step).

Two rules, both class-wise and both pure functions of the pooled detections of V views:

- ``merge_nms``: keep the best of each group of overlapping boxes (class-wise NMS over the union),
  as detectron2's and maskrcnn-benchmark's TTA do.
- ``weighted_box_fusion``: average each group instead (Solovyev et al., "Weighted boxes fusion",
  2019): boxes sorted by score join the first fused box they overlap by more than the threshold;
  a fused box is the score-weighted mean of its members, its score their mean score times
  ``min(members, V) / V`` (a box that only one view found is down-weighted).

Boxes follow ``frcnn.modeling.boxes``. Shape shorthand: D pooled detections, F fused ones.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

Detections = dict[str, Tensor]  # boxes (D, 4), scores (D,), labels (D,) int64


def pool(detections: list[Detections]) -> Detections:
    """The union of several detection sets of one image."""
    return {key: torch.cat([det[key] for det in detections]) for key in ("boxes", "scores", "labels")}


def _best_first(boxes: Tensor, scores: Tensor, labels: Tensor, keep: Tensor, max_detections: int) -> Detections:
    keep = keep[scores[keep].argsort(descending=True)][:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def merge_nms(detections: list[Detections], iou_threshold: float = 0.5, max_detections: int = 100) -> Detections:
    """Class-wise NMS over the union of ``detections`` -> at most ``max_detections``, best first."""
    pooled = pool(detections)
    keep = batched_nms(pooled["boxes"], pooled["scores"], pooled["labels"], iou_threshold)
    return _best_first(pooled["boxes"], pooled["scores"], pooled["labels"], keep, max_detections)


def weighted_box_fusion(
    detections: list[Detections], iou_threshold: float = 0.55, max_detections: int = 100
) -> Detections:
    """Weighted box fusion of the V = ``len(detections)`` sets -> at most ``max_detections``, best first."""
    pooled = pool(detections)
    views = len(detections)
    fused_boxes, fused_scores, fused_labels = [], [], []
    for label in pooled["labels"].unique().tolist():  # class-wise: a loop over the classes present
        mask = pooled["labels"] == label
        boxes, scores = pooled["boxes"][mask], pooled["scores"][mask]
        order = scores.argsort(descending=True)
        boxes, scores = boxes[order], scores[order]
        weighted = boxes.new_zeros((0, 4))  # (F, 4): sum of score * box per fused box
        weight = scores.new_zeros(0)  # (F,): sum of scores
        members = scores.new_zeros(0)  # (F,): how many boxes joined
        for box, score in zip(boxes, scores):  # best first: a box joins the fused boxes made so far
            fused = weighted / weight[:, None].clamp(min=1e-12)
            overlap = box_iou(box[None], fused)[0] if fused.shape[0] else fused.new_zeros(0)
            best = int(overlap.argmax()) if overlap.numel() else -1
            if best >= 0 and float(overlap[best]) > iou_threshold:
                weighted[best] += score * box
                weight[best] += score
                members[best] += 1
            else:
                weighted = torch.cat([weighted, (score * box)[None]])
                weight = torch.cat([weight, score[None]])
                members = torch.cat([members, members.new_ones(1)])
        fused_boxes.append(weighted / weight[:, None])
        fused_scores.append(weight / members * members.clamp(max=views) / views)
        fused_labels.append(torch.full_like(members, label, dtype=torch.int64))
    if not fused_boxes:
        return {key: value[:0] for key, value in pooled.items()}
    boxes, scores, labels = torch.cat(fused_boxes), torch.cat(fused_scores), torch.cat(fused_labels)
    return _best_first(boxes, scores, labels, torch.arange(len(scores), device=scores.device), max_detections)


MERGES = {"nms": merge_nms, "wbf": weighted_box_fusion}
