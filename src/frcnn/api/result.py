"""``DetectionResult``: the detections of one image, as ``Detector.predict`` returns them."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from frcnn.api.filters import select

BOX_DECIMALS = 2  # as predict.py's COCO JSON
SCORE_DECIMALS = 5


@dataclass(frozen=True)
class DetectionResult:
    """Detections of one image, sorted by score (highest first).

    Attributes:
        boxes: (D, 4) float32 x1, y1, x2, y2 in the pixels of the image given to ``predict``.
        scores: (D,) float32 in [0, 1].
        labels: (D,) int64 in 1..K.
        names: D class names, ``names[i]`` is the class of ``labels[i]``.
        image_size: (height, width) of the image.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    names: tuple[str, ...]
    image_size: tuple[int, int]

    @classmethod
    def from_detections(cls, det: dict[str, Tensor], class_names: Sequence[str],
                        image_size: tuple[int, int]) -> DetectionResult:
        """A backend's ``{"boxes", "scores", "labels"}`` of one image -> a result sorted by score."""
        det = select(det)
        names = tuple(class_names[int(label) - 1] for label in det["labels"])
        return cls(det["boxes"].float(), det["scores"].float(), det["labels"].long(), names, tuple(image_size))

    def __len__(self) -> int:
        return len(self.scores)

    def filter(self, min_score: float | None = None, max_detections: int | None = None,
               labels: Collection[int] | None = None) -> DetectionResult:
        """The detections scoring >= ``min_score`` with a label in ``labels``, at most ``max_detections``."""
        det = select({"boxes": self.boxes, "scores": self.scores, "labels": self.labels,
                      "index": torch.arange(len(self))}, min_score, max_detections, labels)
        names = tuple(self.names[int(i)] for i in det["index"])
        return DetectionResult(det["boxes"], det["scores"], det["labels"], names, self.image_size)

    def to_dict(self) -> dict:
        """JSON-ready: ``{"image": {"width", "height"}, "detections": [{"box": [x1, y1, x2, y2],
        "label", "class_name", "score"}]}``, boxes rounded to 0.01 px and scores to 1e-5 (predict.py's JSON)."""
        height, width = self.image_size
        detections = [
            {"box": [round(v, BOX_DECIMALS) for v in box], "label": int(label), "class_name": name,
             "score": round(float(score), SCORE_DECIMALS)}
            for box, score, label, name in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist(), self.names)
        ]
        return {"image": {"width": int(width), "height": int(height)}, "detections": detections}

