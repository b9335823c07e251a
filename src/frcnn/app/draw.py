"""Boxes on images: drawn into pixels (PNG, TensorBoard) or described for W&B's box overlay.

Boxes follow ``frcnn.modeling.boxes``: (N, 4) float x1, y1, x2, y2 pixels of the image given; labels 1..K
index ``class_names[label - 1]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

GT_COLOUR = (0, 200, 0)
PRED_COLOUR = (230, 30, 30)


def to_uint8(image: Tensor) -> Tensor:
    """(3, H, W) float in [0, 1] -> (3, H, W) uint8."""
    return (image.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8)


def draw_boxes(
    image: Tensor, boxes: Tensor, labels: Tensor, class_names: Sequence[str], colour, scores: Tensor | None = None
) -> Tensor:
    """(3, H, W) uint8 with boxes (N, 4) drawn and captioned ``name`` or ``name 0.93``."""
    if len(boxes) == 0:
        return image
    captions = [class_names[int(label) - 1] for label in labels]
    if scores is not None:
        captions = [f"{text} {float(s):.2f}" for text, s in zip(captions, scores)]
    return draw_bounding_boxes(image, boxes.detach().cpu().float(), labels=captions, colors=colour, width=1)


def draw_detections(
    image: Tensor,
    target: Mapping[str, Tensor] | None,
    pred: Mapping[str, Tensor],
    class_names: Sequence[str],
    score_threshold: float = 0.5,
) -> Tensor:
    """(3, H, W) float in [0, 1] -> (3, H, W) uint8 with the ground truth (green) and the
    detections scoring >= ``score_threshold`` (red, with scores)."""
    out = to_uint8(image)
    if target is not None:
        out = draw_boxes(out, target["boxes"], target["labels"], class_names, GT_COLOUR)
    keep = pred["scores"] >= score_threshold
    return draw_boxes(out, pred["boxes"][keep], pred["labels"][keep], class_names, PRED_COLOUR, pred["scores"][keep])


def _box_data(boxes: Tensor, labels: Tensor, class_labels: Mapping[int, str], scores: Tensor | None) -> list[dict]:
    data = []
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        label = int(labels[i])
        entry = {
            "position": {"minX": x1, "minY": y1, "maxX": x2, "maxY": y2},
            "domain": "pixel",
            "class_id": label,
            "box_caption": class_labels[label],
        }
        if scores is not None:
            entry["scores"] = {"score": float(scores[i])}
            entry["box_caption"] = f"{class_labels[label]} {float(scores[i]):.2f}"
        data.append(entry)
    return data


def wandb_boxes(target: Mapping[str, Tensor], pred: Mapping[str, Tensor], class_labels: Mapping[int, str]) -> dict:
    """The ``boxes=`` argument of ``wandb.Image``: ``ground_truth`` and ``predictions`` (all of them,
    with scores, so the W&B slider can filter) in pixel coordinates."""
    return {
        "ground_truth": {
            "box_data": _box_data(target["boxes"], target["labels"], class_labels, None),
            "class_labels": dict(class_labels),
        },
        "predictions": {
            "box_data": _box_data(pred["boxes"], pred["labels"], class_labels, pred["scores"]),
            "class_labels": dict(class_labels),
        },
    }
