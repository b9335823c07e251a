"""One COCO evaluation's outcome: the accumulated arrays, the summary numbers, PR curves, a table.

Shape shorthand (COCOeval's own layout):
    T  IoU thresholds 0.50:0.05:0.95 (10)
    R  recall thresholds 0:0.01:1 (101)
    K  classes, in label order: index k is label k + 1, `class_names[k]`
    A  area ranges: all, small (< 32^2), medium (< 96^2), large
    M  max detections per image: 1, 10, 100
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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
AREAS = ("all", "small", "medium", "large")
MAX_DETS = (1, 10, 100)


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
        a, m = AREAS.index(area), MAX_DETS.index(max_dets)
        metrics[key] = _mean_valid(values[..., a, m])
    t50 = np.isclose(iou_thresholds, 0.5)
    for k, name in enumerate(class_names):
        metrics[f"ap/{name}"] = _mean_valid(precision[:, :, k, 0, -1])
        metrics[f"ap50/{name}"] = _mean_valid(precision[t50, :, k, 0, -1])
    return metrics
