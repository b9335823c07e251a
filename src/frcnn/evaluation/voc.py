"""Pascal VOC mAP at one IoU threshold, following the VOC devkit's `voc_eval`.

Shape shorthand: N detections of one class over the whole set, G boxes of one class in one image.

Per class, detections of all images are ranked by score; each takes the ground-truth box (of its
class, in its image) it overlaps most, difficult ones included:
- IoU > threshold (strictly, as in the devkit) with a difficult box: ignored, neither TP nor FP;
- IoU > threshold with a box not matched yet: TP, the box is now matched;
- otherwise (a lower overlap, or a box already matched): FP.
Recall is over the non-difficult boxes. Our `ignore_boxes` / `ignore_labels` are the difficult ones.

Differences from the devkit, both deliberate:
- boxes are 0-based pixel edges (docs/contracts.md), so areas and intersections are plain
  `(x2 - x1) * (y2 - y1)`, without the devkit's `+ 1` for inclusive pixel indices;
- ties in score are ranked in the order the detections were given (a stable sort); the devkit's
  `argsort` leaves their order unspecified.
A class without any non-difficult box has no AP (NaN) and does not enter the mean.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from frcnn.evaluation.per_image import EvalRecord, RecordStore


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Average precision from a ranked list's cumulative recall (N,) and precision (N,).

    use_07_metric: VOC2007's 11-point AP (mean of the best precision at recall >= 0, 0.1, ..., 1);
    otherwise VOC2010+'s area under the precision envelope (all points).
    """
    if use_07_metric:
        ap = 0.0
        # np.arange, exactly as the devkit: its thresholds are 0.30000000000000004 etc., which
        # matters when a recall lands exactly on 0.3, 0.6 or 0.7.
        for threshold in np.arange(0.0, 1.1, 0.1):
            reached = precision[recall >= threshold]
            ap += (float(reached.max()) if reached.size else 0.0) / 11.0
        return ap
    mrec = np.concatenate([[0.0], recall, [1.0]])  # (N + 2,)
    mpre = np.concatenate([[0.0], precision, [0.0]])  # (N + 2,)
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope: best precision to the right
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])  # where recall changes
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def voc_class_pr(
    records: dict[int, EvalRecord], label: int, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """One class's ranked detections -> (recall (N,), precision (N,), number of non-difficult boxes)."""
    scores, image_ids, best_iou, best_gt = [], [], [], []
    num_positives = 0
    difficult_per_image = {}
    for image_id, r in records.items():
        gt = np.concatenate([r.gt_boxes[r.gt_labels == label], r.ignore_boxes[r.ignore_labels == label]])
        difficult = np.zeros(len(gt), dtype=bool)
        difficult[int(np.sum(r.gt_labels == label)) :] = True  # (G,)
        num_positives += int(np.sum(~difficult))
        difficult_per_image[image_id] = difficult
        keep = r.pred_labels == label
        pred = r.pred_boxes[keep]  # (D, 4)
        if len(gt):
            iou = box_iou(torch.from_numpy(pred), torch.from_numpy(gt)).numpy()  # (D, G)
            best_iou.append(iou.max(axis=1))
            best_gt.append(iou.argmax(axis=1))
        else:
            best_iou.append(np.zeros(len(pred)))
            best_gt.append(np.zeros(len(pred), dtype=np.int64))
        scores.append(r.pred_scores[keep])
        image_ids.append(np.full(len(pred), image_id, dtype=np.int64))
    if not scores:
        return np.zeros(0), np.zeros(0), num_positives
    scores_all = np.concatenate(scores)  # (N,)
    order = np.argsort(-scores_all, kind="stable")
    image_ids_all = np.concatenate(image_ids)[order]
    best_iou_all = np.concatenate(best_iou)[order]
    best_gt_all = np.concatenate(best_gt)[order]

    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    matched = {image_id: np.zeros(len(d), dtype=bool) for image_id, d in difficult_per_image.items()}
    for i, (image_id, iou, j) in enumerate(zip(image_ids_all.tolist(), best_iou_all, best_gt_all)):
        if iou > iou_threshold:
            if difficult_per_image[image_id][j]:
                continue
            if not matched[image_id][j]:
                tp[i] = 1.0
                matched[image_id][j] = True
            else:
                fp[i] = 1.0
        else:
            fp[i] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / num_positives if num_positives else np.full(len(tp), math.nan)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision, num_positives


class VOCEvaluator:
    """VOC mAP at `iou_threshold`, accumulated batch by batch; exact under DDP.

    Args:
        class_names: K names; `class_names[k]` is label k + 1.
        iou_threshold: a detection matches a box above this IoU (0.5 in VOC).
        use_07_metric: VOC2007 11-point AP instead of the VOC2010+ area.
    """

    def __init__(
        self, class_names: list[str], iou_threshold: float = 0.5, use_07_metric: bool = False
    ) -> None:
        self.class_names = list(class_names)
        self.iou_threshold = iou_threshold
        self.use_07_metric = use_07_metric
        self.store = RecordStore()

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        """Same inputs as `COCOEvaluator.update`; `ignore_boxes` are the difficult objects."""
        self.store.update(preds, targets)

    def reset(self) -> None:
        self.store.reset()

    def compute(self) -> dict[str, float]:
        """`map_50` (mean over classes with ground truth) and per class `ap50/<name>` (NaN without);
        50 is `round(100 * iou_threshold)`, so `map_70` at 0.7.

        Collective under DDP: every rank must call it.
        """
        records = self.store.gathered()
        suffix = round(100 * self.iou_threshold)
        metrics = {}
        for k, name in enumerate(self.class_names):
            recall, precision, num_positives = voc_class_pr(records, k + 1, self.iou_threshold)
            ap = voc_ap(recall, precision, self.use_07_metric) if num_positives else math.nan
            metrics[f"ap{suffix}/{name}"] = ap
        aps = [ap for ap in metrics.values() if not math.isnan(ap)]
        return {f"map_{suffix}": float(np.mean(aps)) if aps else math.nan, **metrics}
