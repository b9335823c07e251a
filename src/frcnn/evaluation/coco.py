"""COCO box AP, computed by the official algorithm (pycocotools or its C++ port faster-coco-eval).

Shape shorthand for the accumulated arrays (COCOeval's own layout):
    T  IoU thresholds 0.50:0.05:0.95 (10)
    R  recall thresholds 0:0.01:1 (101)
    K  classes, in label order: index k is label k + 1, `class_names[k]`
    A  area ranges: all, small (< 32^2), medium (< 96^2), large
    M  max detections per image: 1, 10, 100

The ground truth is built in memory from the targets the evaluator was given:
- every image that was updated is an image of the evaluation, including images without any box
  (their detections are all false positives);
- `ignore_boxes` become `iscrowd=1` annotations, which COCOeval honours its own way: a detection
  overlapping one (intersection over the detection's area) is neither a TP nor an FP;
- `area` is the box area `w * h` in the coordinates the boxes are given in (the original image at
  evaluation, docs/contracts.md). COCO's JSON stores the *segmentation* area instead, so the
  small / medium / large split (and only it) can differ from an evaluation on the official JSON.

Classes without any ground truth have no AP: their `ap/<name>` is NaN and they do not enter `map`,
as in COCOeval. Any COCO summary number that COCOeval reports as -1 (nothing to average) is NaN here.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from frcnn.evaluation.coco_backend import BACKENDS, available_backends, coco_datasets, gc_paused, run_cocoeval
from frcnn.evaluation.coco_result import AREAS, MAX_DETS, COCOResult, summarize
from frcnn.evaluation.per_image import RecordStore


class COCOEvaluator:
    """COCO box AP over a validation set, accumulated batch by batch; exact under DDP.

    Args:
        class_names: K names; `class_names[k]` is label k + 1.
        label_to_category_id: label (1..K) -> COCO category id; identity when None. Only the
            category ids COCO sees; the metrics are keyed by class name either way.
        backend: "pycocotools", "faster_coco_eval", or "auto" (the fastest installed; both give
            the same numbers).
    """

    def __init__(
        self,
        class_names: list[str],
        label_to_category_id: dict[int, int] | None = None,
        backend: str = "auto",
    ) -> None:
        if backend == "auto":
            installed = available_backends()
            if not installed:
                raise ImportError(f"COCOEvaluator needs one of {BACKENDS}")
            backend = installed[0]
        if backend not in BACKENDS:
            raise ValueError(f"unknown COCO backend {backend!r}, expected one of {BACKENDS} or 'auto'")
        num_classes = len(class_names)
        if label_to_category_id is None:
            label_to_category_id = {label: label for label in range(1, num_classes + 1)}
        if sorted(label_to_category_id) != list(range(1, num_classes + 1)):
            raise ValueError(f"label_to_category_id must map exactly the labels 1..{num_classes}")
        self.class_names = list(class_names)
        self.label_to_category_id = dict(label_to_category_id)
        self.backend = backend
        self.store = RecordStore()
        self.last_result: COCOResult | None = None

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        """preds: per image `boxes` (D, 4) xyxy, `scores` (D,), `labels` (D,) int64 in 1..K;
        targets: per image `boxes` (G, 4), `labels` (G,), `image_id` (), `ignore_boxes` (M, 4),
        `ignore_labels` (M,). Copied to the CPU as numpy; an image id seen before is skipped."""
        self.store.update(preds, targets)

    def reset(self) -> None:
        self.store.reset()
        self.last_result = None

    def evaluate(self) -> COCOResult:
        """Run COCOeval over every rank's images (each once); the same result on every rank.

        Collective under DDP: every rank must call it.
        """
        records = self.store.gathered()
        num_classes = len(self.class_names)
        T, R, A, M = 10, 101, len(AREAS), len(MAX_DETS)
        if records:
            with gc_paused():
                ground_truth, detections = coco_datasets(records, self.label_to_category_id)
                raw = run_cocoeval(ground_truth, detections, self.backend)
            # COCOeval orders K by category id; reorder to label order.
            column = {int(c): k for k, c in enumerate(raw["category_ids"])}
            order = [column[self.label_to_category_id[label]] for label in range(1, num_classes + 1)]
            precision = raw["precision"][:, :, order]
            recall = raw["recall"][:, order]
            scores = raw["scores"][:, :, order]
            iou_thresholds, recall_thresholds = raw["iou_thresholds"], raw["recall_thresholds"]
        else:
            precision = -np.ones((T, R, num_classes, A, M))
            recall = -np.ones((T, num_classes, A, M))
            scores = -np.ones((T, R, num_classes, A, M))
            iou_thresholds = np.linspace(0.5, 0.95, T)
            recall_thresholds = np.linspace(0.0, 1.0, R)
        self.last_result = COCOResult(
            metrics=summarize(precision, recall, iou_thresholds, self.class_names),
            precision=precision,
            recall=recall,
            scores=scores,
            iou_thresholds=iou_thresholds,
            recall_thresholds=recall_thresholds,
            class_names=self.class_names,
        )
        return self.last_result

    def compute(self) -> dict[str, float]:
        """`map`, `map_50`, `map_75`, `map_{small,medium,large}`, `mar_{1,10,100}`,
        `mar_{small,medium,large}`, and per class `ap/<name>` (AP@[.5:.95]) and `ap50/<name>`.
        NaN where COCOeval has nothing to average (e.g. a class without ground truth)."""
        return self.evaluate().metrics

    def summary(self) -> str:
        """The last `compute()`'s COCO summary table as a string."""
        if self.last_result is None:
            raise RuntimeError("call compute() first")
        return self.last_result.summary()
