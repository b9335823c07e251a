"""Helpers of bench/finetune_raccoon.py: the torchvision reference detector (torchvision's own
recipe on ``mobilenet_v2().features``, deliberately not a twin of ours), per-model random
streams, the lr shape over a time budget, and an evaluation independent of ``frcnn.evaluation``
(bench/_common.py names the machine and records the tables).

Boxes follow docs/contracts.md: (N, 4) float32 x1, y1, x2, y2 in 0-based pixel edges of the image
as the data pipeline delivered it (at evaluation: the original image).
"""

from __future__ import annotations

import contextlib
import io
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import torch
import torchvision
from torch import Tensor
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from frcnn.layers.batchnorm import convert_frozen_batchnorm

# --- the reference ------------------------------------------------------------------------------


def build_reference(
    weights_path: Path, num_classes: int, min_size: int, max_size: int, frozen_stages: int = 4
) -> TorchvisionFasterRCNN:
    """torchvision's FasterRCNN on ``mobilenet_v2().features`` as its docs build a custom backbone.

    The ImageNet weights are loaded strictly into ``torchvision.models.mobilenet_v2()``; BatchNorm is
    frozen; ``features[:frozen_stages]`` (the stride <= 4 blocks, as our ``build_backbone`` freezes
    by default) get no gradient. Everything else is torchvision's default: RPN 2000 / 2000 train and
    1000 / 1000 test proposals, 512 RoIs per image, the TwoMLPHead 1280*7*7 -> 1024 -> 1024.
    num_classes: K, without background (torchvision counts it: K + 1).
    """
    network = torchvision.models.mobilenet_v2()
    network.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True), strict=True)
    features = network.features
    convert_frozen_batchnorm(features)
    features[:frozen_stages].requires_grad_(False)
    features.out_channels = 1280
    anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    pooler = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    return TorchvisionFasterRCNN(
        features,
        num_classes=num_classes + 1,
        rpn_anchor_generator=anchors,
        box_roi_pool=pooler,
        min_size=min_size,
        max_size=max_size,
    )


# --- random streams and the lr shape --------------------------------------------------------------


class RandomStream:
    """A private copy of torch's global CPU generator state.

    Interleaved models draw (RPN / RoI sampling) from the one global generator; swapping a state in
    for each model's slice and for each data fetch keeps each stream as it would be alone.
    """

    def __init__(self) -> None:
        self.state = torch.get_rng_state()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outside = torch.get_rng_state()
        torch.set_rng_state(self.state)
        try:
            yield
        finally:
            self.state = torch.get_rng_state()
            torch.set_rng_state(outside)


def budget_lr_factor(
    fraction: float, warmup_fraction: float, min_factor: float, start_factor: float = 0.001
) -> float:
    """lr factor at ``fraction`` (0..1) of a training budget: a linear warm-up from ``start_factor``
    over the first ``warmup_fraction``, then a cosine decay from 1 to ``min_factor`` at the end."""
    fraction = min(max(fraction, 0.0), 1.0)
    if fraction < warmup_fraction:
        alpha = fraction / warmup_fraction
        return start_factor * (1.0 - alpha) + alpha
    progress = (fraction - warmup_fraction) / max(1e-12, 1.0 - warmup_fraction)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --- the independent evaluation --------------------------------------------------------------------


def voc_ground_truth(annotations: Path, stems: list[str], class_names: list[str]) -> dict:
    """A COCO ground-truth dataset read straight from the VOC XML files (not through ``frcnn.data``).

    Image id i is ``stems[i]``; category id k is ``class_names[k - 1]``; VOC's 1-based inclusive
    corners become 0-based edges (x1 = xmin - 1, x2 = xmax); ``difficult`` objects become crowd
    regions; area = w * h.
    """
    images, annotations_out = [], []
    for image_id, stem in enumerate(stems):
        root = ET.parse(annotations / f"{stem}.xml").getroot()
        images.append({"id": image_id, "file_name": stem})
        for obj in root.iter("object"):
            name = obj.findtext("name").strip()
            if name not in class_names:
                continue
            xmin, ymin, xmax, ymax = (
                float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")
            )
            x, y, w, h = xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0
            difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
            annotations_out.append(
                {
                    "id": len(annotations_out) + 1,
                    "image_id": image_id,
                    "category_id": class_names.index(name) + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(difficult),
                }
            )
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations_out, "categories": categories}


def pycocotools_ap(ground_truth: dict, detections: dict[int, dict[str, Tensor]]) -> tuple[float, float]:
    """pycocotools' COCOeval (bbox) on ``ground_truth`` and per-image-id detections -> (map, map_50)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = []
    for image_id, det in detections.items():
        boxes = det["boxes"].double()  # (D, 4)
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)  # (D, 4)
        results += [
            {"image_id": image_id, "category_id": int(c), "bbox": b, "score": float(s)}
            for b, c, s in zip(xywh.tolist(), det["labels"].tolist(), det["scores"].tolist())
        ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results) if results else COCO()
        evaluation = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1])
