"""Per-image storage shared by the evaluators, and how it is gathered under DDP.

Shape shorthand: D detections, G ground-truth boxes, M ignore boxes of one image.
Boxes are `(N, 4)` float32 `x1, y1, x2, y2` pixels, labels int64 in 1..K (docs/contracts.md).

The evaluators keep one record per image id, as numpy arrays on the CPU (no graph, no device memory).
Under DDP each rank holds the images its sampler gave it, and `DistributedSampler` pads the last
batches by repeating samples, so one image can reach two ranks (or one rank twice). Keeping the first
record of each image id, on every rank, makes each image count exactly once and every rank see the
same data.
"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


class EvalRecord(NamedTuple):
    """Detections and ground truth of one image, on the CPU (the data side's ``ImageRecord`` is an
    image's annotation on disk; this is what evaluation keeps of it)."""

    pred_boxes: np.ndarray  # (D, 4) float32
    pred_scores: np.ndarray  # (D,) float32
    pred_labels: np.ndarray  # (D,) int64
    gt_boxes: np.ndarray  # (G, 4) float32
    gt_labels: np.ndarray  # (G,) int64
    ignore_boxes: np.ndarray  # (M, 4) float32, COCO crowd / VOC difficult
    ignore_labels: np.ndarray  # (M,) int64


def _boxes(x: Tensor | None) -> np.ndarray:
    """(N, 4) tensor, or None for none -> (N, 4) float32 array."""
    if x is None:
        return np.zeros((0, 4), dtype=np.float32)
    return x.detach().to("cpu", torch.float32).numpy().reshape(-1, 4)


def _vector(x: Tensor | None, dtype: np.dtype) -> np.ndarray:
    """(N,) tensor, or None for none -> (N,) array of `dtype`."""
    if x is None:
        return np.zeros((0,), dtype=dtype)
    return x.detach().cpu().numpy().astype(dtype, copy=False).reshape(-1)


def image_record(pred: dict[str, Tensor], target: dict[str, Tensor]) -> tuple[int, EvalRecord]:
    """One image's detections (`boxes`, `scores`, `labels`) and target -> (image_id, record).

    A target without `ignore_boxes` / `ignore_labels` is read as having none.
    """
    record = EvalRecord(
        pred_boxes=_boxes(pred["boxes"]),
        pred_scores=_vector(pred["scores"], np.float32),
        pred_labels=_vector(pred["labels"], np.int64),
        gt_boxes=_boxes(target["boxes"]),
        gt_labels=_vector(target["labels"], np.int64),
        ignore_boxes=_boxes(target.get("ignore_boxes")),
        ignore_labels=_vector(target.get("ignore_labels"), np.int64),
    )
    return int(target["image_id"]), record


def merge_per_rank(per_rank: list[dict[int, T]]) -> dict[int, T]:
    """Union of every rank's {image_id: value}; the first value seen for an image id wins.

    Pure function: the deduplication step of the DDP gather, testable without a process group.
    The result is sorted by image id, so it does not depend on which rank saw which image.
    """
    merged: dict[int, T] = {}
    for per_image in per_rank:
        for image_id, value in per_image.items():
            merged.setdefault(image_id, value)
    return dict(sorted(merged.items()))


def gather_per_image(local: dict[int, T]) -> dict[int, T]:
    """Every rank's {image_id: value}, deduplicated; the same dict on every rank.

    Without an initialised process group of more than one rank this is `merge_per_rank([local])`.
    Collective: under DDP every rank must call it.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return merge_per_rank([local])
    per_rank: list[dict[int, T] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, local)
    return merge_per_rank(per_rank)


class RecordStore:
    """{image_id: EvalRecord} filled batch by batch; an image id seen again keeps its first record."""

    def __init__(self) -> None:
        self.records: dict[int, EvalRecord] = {}

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        """preds / targets: one dict per image, as in docs/contracts.md."""
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        for pred, target in zip(preds, targets):
            image_id, record = image_record(pred, target)
            self.records.setdefault(image_id, record)

    def gathered(self) -> dict[int, EvalRecord]:
        """All ranks' records, each image once, sorted by image id (collective under DDP)."""
        return gather_per_image(self.records)

    def reset(self) -> None:
        self.records = {}
