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

import contextlib
import gc
import importlib.util
import io
import math
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from frcnn.metrics.records import ImageRecord, RecordStore

# Fastest first, as measured by bench/metrics_cost.py (bench/README.md, "Evaluation cost"); both give
# the same numbers (tests/metrics/test_coco_eval.py).
BACKENDS = ("faster_coco_eval", "pycocotools")

# The COCO summary lines: (key, is_ap, iou_threshold or None for the 0.50:0.95 mean, area, max_dets).
_SUMMARY = (
    ("map", True, None, "all", 100),
    ("map_50", True, 0.5, "all", 100),
    ("map_75", True, 0.75, "all", 100),
    ("map_small", True, None, "small", 100),
    ("map_medium", True, None, "medium", 100),
    ("map_large", True, None, "large", 100),
    ("mar_1", False, None, "all", 1),
    ("mar_10", False, None, "all", 10),
    ("mar_100", False, None, "all", 100),
    ("mar_small", False, None, "small", 100),
    ("mar_medium", False, None, "medium", 100),
    ("mar_large", False, None, "large", 100),
)
_AREAS = ("all", "small", "medium", "large")
_MAX_DETS = (1, 10, 100)


def available_backends() -> list[str]:
    """The installed COCOeval implementations, fastest first."""
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


@dataclass
class COCOResult:
    """Everything one COCO evaluation produced."""

    metrics: dict[str, float]  # the `COCOEvaluator.compute()` dict
    precision: np.ndarray  # (T, R, K, A, M) float64, -1 where a class has no ground truth
    recall: np.ndarray  # (T, K, A, M) float64, -1 likewise
    scores: np.ndarray  # (T, R, K, A, M) float64, detection score at each recall threshold
    iou_thresholds: np.ndarray  # (T,)
    recall_thresholds: np.ndarray  # (R,)
    class_names: list[str]

    def pr_curves(self, iou_threshold: float = 0.5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{class name: (recall (R,), precision (R,))} at one IoU threshold, all areas, 100 dets.

        Classes without ground truth are left out. Precision is COCO's interpolated precision
        (the running maximum from the right), 0 beyond the highest recall reached.
        """
        t = int(np.flatnonzero(np.isclose(self.iou_thresholds, iou_threshold))[0])
        curves = {}
        for k, name in enumerate(self.class_names):
            precision = self.precision[t, :, k, 0, -1]  # (R,)
            if np.all(precision == -1):
                continue
            curves[name] = (self.recall_thresholds.copy(), precision.copy())
        return curves

    def summary(self) -> str:
        """COCO's 12-line summary followed by a per-class AP table."""
        lines = []
        for key, is_ap, iou, area, max_dets in _SUMMARY:
            title = "Average Precision  (AP)" if is_ap else "Average Recall     (AR)"
            iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
            value = self.metrics[key]
            lines.append(
                f" {title} @[ IoU={iou_text:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = "
                f"{-1.0 if math.isnan(value) else value:0.3f}"
            )
        width = max([len(name) for name in self.class_names] + [5])
        lines.append("")
        lines.append(f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}")
        for name in self.class_names:
            ap, ap50 = self.metrics[f"ap/{name}"], self.metrics[f"ap50/{name}"]
            lines.append(f"{name:<{width}}  {ap:6.3f}  {ap50:6.3f}")
        return "\n".join(lines)


def _concat(records: list[ImageRecord], field: str, image_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One field over all images -> (values concatenated, (N,) image id of each row)."""
    values = [getattr(r, field) for r in records]
    owners = np.repeat(np.asarray(image_ids, dtype=np.int64), [len(v) for v in values])
    return np.concatenate(values), owners


def _boxes_and_areas(boxes: np.ndarray) -> tuple[list[list[float]], list[float]]:
    """(N, 4) float32 xyxy -> COCO `[x, y, w, h]` (float64) and area `w * h`, as Python lists."""
    boxes = boxes.astype(np.float64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)  # (N, 4)
    return xywh.tolist(), (xywh[:, 2] * xywh[:, 3]).tolist()


def coco_datasets(records: dict[int, ImageRecord], label_to_category_id: dict[int, int]) -> tuple[dict, dict]:
    """Per-image records -> (ground truth, detections) as COCO dataset dicts (annotation ids from 1).

    The ground truth holds `images`, `categories` and `annotations` with `bbox`, `area` = w * h,
    `iscrowd` (1 for ignore boxes); the detections add `score`, as pycocotools' `loadRes` would.
    Built from whole-set arrays rather than image by image: this runs once per epoch over up to
    millions of boxes.
    """
    image_ids, per_image = list(records), list(records.values())
    num_classes = len(label_to_category_id)
    category_of = np.zeros(num_classes + 1, dtype=np.int64)  # label -> category id, index 0 unused
    category_of[list(label_to_category_id)] = list(label_to_category_id.values())

    def categories_of(labels: np.ndarray) -> list[int]:
        if labels.size and (labels.min() < 1 or labels.max() > num_classes):
            raise ValueError(f"labels must lie in 1..{num_classes}, got {labels.min()}..{labels.max()}")
        return category_of[labels].tolist()

    gt_annotations: list[dict] = []
    for boxes_field, labels_field, iscrowd in (
        ("gt_boxes", "gt_labels", 0),
        ("ignore_boxes", "ignore_labels", 1),
    ):
        boxes, owners = _concat(per_image, boxes_field, image_ids)  # (G, 4), (G,)
        labels, _ = _concat(per_image, labels_field, image_ids)  # (G,)
        bboxes, areas = _boxes_and_areas(boxes)
        gt_annotations += [
            {"image_id": i, "category_id": c, "bbox": b, "area": a, "iscrowd": iscrowd}
            for i, c, b, a in zip(owners.tolist(), categories_of(labels), bboxes, areas)
        ]
    for number, annotation in enumerate(gt_annotations, start=1):
        annotation["id"] = number

    boxes, owners = _concat(per_image, "pred_boxes", image_ids)  # (D, 4), (D,)
    labels, _ = _concat(per_image, "pred_labels", image_ids)  # (D,)
    scores, _ = _concat(per_image, "pred_scores", image_ids)  # (D,)
    bboxes, areas = _boxes_and_areas(boxes)
    dt_annotations = [
        {"id": n, "image_id": i, "category_id": c, "bbox": b, "score": s, "area": a, "iscrowd": 0}
        for n, (i, c, b, s, a) in enumerate(
            zip(owners.tolist(), categories_of(labels), bboxes, scores.tolist(), areas), start=1
        )
    ]

    images = [{"id": image_id} for image_id in image_ids]
    categories = [{"id": c, "name": str(c)} for c in sorted(label_to_category_id.values())]
    ground_truth = {"images": images, "categories": categories, "annotations": gt_annotations}
    detections = {"images": list(images), "categories": categories, "annotations": dt_annotations}
    return ground_truth, detections


def run_cocoeval(ground_truth: dict, detections: dict, backend: str) -> dict[str, np.ndarray]:
    """COCOeval (bbox) on two in-memory COCO datasets -> its `eval` dict (`precision`, `recall`,
    `scores`) plus `iou_thresholds`, `recall_thresholds` and `category_ids` (the K order).

    The backends' progress prints are swallowed.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt, coco_dt = COCO(), COCO()
            coco_gt.dataset, coco_dt.dataset = ground_truth, detections
            coco_gt.createIndex()
            coco_dt.createIndex()
            evaluation = COCOeval(coco_gt, coco_dt, iouType="bbox")
        elif backend == "faster_coco_eval":
            from faster_coco_eval import COCO, COCOeval_faster

            def silent(*args, **kwargs) -> None:
                pass

            coco_gt = COCO(ground_truth, print_function=silent)
            coco_dt = COCO(detections, print_function=silent)
            evaluation = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=silent)
        else:
            raise ValueError(f"unknown COCO backend {backend!r}, expected one of {BACKENDS}")
        evaluation.evaluate()
        evaluation.accumulate()
    params = evaluation.params
    return {
        "precision": np.asarray(evaluation.eval["precision"], dtype=np.float64),
        "recall": np.asarray(evaluation.eval["recall"], dtype=np.float64),
        "scores": np.asarray(evaluation.eval["scores"], dtype=np.float64),
        "iou_thresholds": np.asarray(params.iouThrs, dtype=np.float64),
        "recall_thresholds": np.asarray(params.recThrs, dtype=np.float64),
        "category_ids": np.asarray(sorted(params.catIds)),
    }


@contextlib.contextmanager
def _gc_paused():
    """Pause Python's cyclic garbage collector.

    Building COCO's datasets creates a dict per box (millions on COCO val), and each allocation burst
    triggers a collection that walks all of them again: with the collector on, that doubles the
    cost of `compute()` (bench/metrics_cost.py). None of these objects forms a cycle.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _mean_valid(values: np.ndarray) -> float:
    """Mean of the entries > -1 (COCOeval's `_summarize`), NaN when there are none."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else math.nan


def summarize(
    precision: np.ndarray, recall: np.ndarray, iou_thresholds: np.ndarray, class_names: list[str]
) -> dict[str, float]:
    """precision (T, R, K, A, M), recall (T, K, A, M) -> the metrics dict of `COCOEvaluator.compute`."""
    metrics = {}
    for key, is_ap, iou, area, max_dets in _SUMMARY:
        values = precision if is_ap else recall
        if iou is not None:
            values = values[np.isclose(iou_thresholds, iou)]
        a, m = _AREAS.index(area), _MAX_DETS.index(max_dets)
        metrics[key] = _mean_valid(values[..., a, m])
    t50 = np.isclose(iou_thresholds, 0.5)
    for k, name in enumerate(class_names):
        metrics[f"ap/{name}"] = _mean_valid(precision[:, :, k, 0, -1])
        metrics[f"ap50/{name}"] = _mean_valid(precision[t50, :, k, 0, -1])
    return metrics


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
        T, R, A, M = 10, 101, len(_AREAS), len(_MAX_DETS)
        if records:
            with _gc_paused():
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
