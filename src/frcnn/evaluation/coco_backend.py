"""Running the official COCO algorithm (pycocotools, or its C++ port faster-coco-eval) on in-memory
ground truth and detections built from per-image records.

Boxes of the records are `(N, 4)` float32 xyxy pixels; COCO wants `[x, y, w, h]` and an `area`,
here `w * h` of the box (COCO's JSON stores the segmentation area: only the small / medium / large
split can differ from an evaluation on the official JSON).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io

import numpy as np

from frcnn.evaluation.per_image import EvalRecord

# Fastest first, as measured by bench/metrics_cost.py (bench/README.md, "Evaluation cost"); both give
# the same numbers (tests/evaluation/test_coco_eval.py).
BACKENDS = ("faster_coco_eval", "pycocotools")

def available_backends() -> list[str]:
    """The installed COCOeval implementations, fastest first."""
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def _concat(records: list[EvalRecord], field: str, image_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One field over all images -> (values concatenated, (N,) image id of each row)."""
    values = [getattr(r, field) for r in records]
    owners = np.repeat(np.asarray(image_ids, dtype=np.int64), [len(v) for v in values])
    return np.concatenate(values), owners


def _boxes_and_areas(boxes: np.ndarray) -> tuple[list[list[float]], list[float]]:
    """(N, 4) float32 xyxy -> COCO `[x, y, w, h]` (float64) and area `w * h`, as Python lists."""
    boxes = boxes.astype(np.float64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)  # (N, 4)
    return xywh.tolist(), (xywh[:, 2] * xywh[:, 3]).tolist()


def coco_datasets(records: dict[int, EvalRecord], label_to_category_id: dict[int, int]) -> tuple[dict, dict]:
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
def gc_paused():
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
