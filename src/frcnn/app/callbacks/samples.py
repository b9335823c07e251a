"""The validation images the callbacks show: the first n of rank 0, with their targets and detections."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor


@dataclass
class Sample:
    """One validation image (3, H, W) float in [0, 1], its target and its detections, on the CPU."""

    image: Tensor
    target: dict[str, Tensor]
    pred: dict[str, Tensor]


class SampleCollector:
    """Keeps the first ``limit`` (image, target, detections) of a validation, on the CPU.

    The validation loader is not shuffled, so these are the same images every epoch. Only the
    caller decides which rank collects (rank 0: the images are drawn there).
    """

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.samples: list[Sample] = []

    def reset(self) -> None:
        self.samples = []

    @property
    def full(self) -> bool:
        return len(self.samples) >= self.limit

    def add(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]], preds: Sequence[dict[str, Tensor]]) -> None:
        """One batch: images (3, H_i, W_i), targets and detections per image."""
        for image, target, pred in zip(images, targets, preds, strict=True):
            if self.full:
                return
            self.samples.append(
                Sample(
                    image.detach().cpu(),
                    {k: v.detach().cpu() for k, v in target.items()},
                    {k: v.detach().cpu() for k, v in pred.items()},
                )
            )
