"""VOC AP on a hand-computed example with a difficult object."""

import math

import numpy as np
import pytest
import torch

from frcnn.evaluation import VOCEvaluator, voc_ap


def _target(image_id, boxes, labels, difficult_boxes=(), difficult_labels=()):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "image_id": torch.tensor(image_id),
        "ignore_boxes": torch.tensor(difficult_boxes, dtype=torch.float32).reshape(-1, 4),
        "ignore_labels": torch.tensor(difficult_labels, dtype=torch.int64),
    }


def _pred(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


# Classes: 1 cat, 2 dog (no box anywhere), 3 bird (boxes, never detected).
# Image 0: cats G1 [0,0,10,10], G2 [20,20,30,30], a difficult cat D [40,40,50,50], a bird.
# Image 1: cat G3 [0,0,10,10].
TARGETS = [
    _target(0, [[0, 0, 10, 10], [20, 20, 30, 30], [60, 60, 90, 90]], [1, 1, 3], [[40, 40, 50, 50]], [1]),
    _target(1, [[0, 0, 10, 10]], [1]),
]
# Cat detections by score (IoU with plain areas, no +1):
#   d1 0.9  image 0 [0,0,10,10]    IoU 1 with G1                  -> TP
#   d2 0.8  image 0 [40,40,50,50]  IoU 1 with the difficult D     -> ignored (neither TP nor FP)
#   d3 0.7  image 1 [50,50,60,60]  no overlap                     -> FP
#   d4 0.6  image 0 [0,0,10,9]     IoU 90/100 = 0.9 with G1, taken -> FP (duplicate)
#   d5 0.5  image 1 [0,0,10,10]    IoU 1 with G3                  -> TP
#   d6 0.4  image 0 [20,20,30,31]  IoU 100/110 = 0.91 with G2     -> TP
# A dog detection (0.95, image 0) has no dog box to match: dog has no AP.
PREDS = [
    _pred([[0, 0, 10, 10], [40, 40, 50, 50], [0, 0, 10, 9], [20, 20, 30, 31], [0, 0, 10, 10]],
          [0.9, 0.8, 0.6, 0.4, 0.95], [1, 1, 1, 1, 2]),
    _pred([[50, 50, 60, 60], [0, 0, 10, 10]], [0.7, 0.5], [1, 1]),
]  # fmt: skip
# Positives (non-difficult cats): 3. Over the ranked list d1..d6:
#   cumulative TP 1, 1, 1, 1, 2, 3;  FP 0, 0, 1, 2, 2, 2
#   recall    1/3, 1/3, 1/3, 1/3, 2/3, 1
#   precision 1,   1,   1/2, 1/3, 2/4, 3/5
# Area (VOC2010+): precision envelope from the right 1, 1, 3/5, 3/5, 3/5, 3/5; recall rises by 1/3
#   at d1 (envelope 1), at d5 (3/5) and at d6 (3/5): AP = 1/3 + 1/5 + 1/5 = 11/15.
# 11-point (VOC2007): best precision at recall >= t is 1 for t = 0, .1, .2, .3 (4 points),
#   3/5 for t = .4, .5, .6 (recall 2/3 and 1) and 3/5 for t = .7, .8, .9, 1 (recall 1):
#   AP = (4 + 1.8 + 2.4) / 11 = 41/55.
CAT_RECALL = np.array([1 / 3, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
CAT_PRECISION = np.array([1, 1, 1 / 2, 1 / 3, 2 / 4, 3 / 5])


def test_voc_ap_by_hand():
    assert voc_ap(CAT_RECALL, CAT_PRECISION, use_07_metric=False) == pytest.approx(11 / 15, abs=1e-6)
    assert voc_ap(CAT_RECALL, CAT_PRECISION, use_07_metric=True) == pytest.approx(41 / 55, abs=1e-6)


def test_voc_ap_edge_cases():
    empty = np.zeros(0)
    assert voc_ap(empty, empty, use_07_metric=False) == 0.0
    assert voc_ap(empty, empty, use_07_metric=True) == 0.0
    # The devkit's 11 thresholds come from np.arange: the fourth is 0.30000000000000004, so a
    # recall of exactly 0.3 only reaches the first three.
    assert voc_ap(np.array([0.3]), np.array([1.0]), use_07_metric=True) == pytest.approx(3 / 11, abs=1e-6)


@pytest.mark.parametrize(("use_07_metric", "cat_ap"), [(False, 11 / 15), (True, 41 / 55)])
def test_voc_evaluator_by_hand(use_07_metric, cat_ap):
    evaluator = VOCEvaluator(["cat", "dog", "bird"], use_07_metric=use_07_metric)
    evaluator.update(PREDS[:1], TARGETS[:1])
    evaluator.update(PREDS[1:], TARGETS[1:])
    metrics = evaluator.compute()
    assert list(metrics) == ["map_50", "ap50/cat", "ap50/dog", "ap50/bird"]
    assert metrics["ap50/cat"] == pytest.approx(cat_ap, abs=1e-6)
    assert math.isnan(metrics["ap50/dog"])  # no dog box: no AP, left out of the mean
    assert metrics["ap50/bird"] == 0.0  # a bird box, never detected
    assert metrics["map_50"] == pytest.approx(cat_ap / 2, abs=1e-6)


def test_difficult_as_plain_box_changes_the_answer():
    """Without the difficult flag, d2 becomes a TP and D a positive: 4 positives, TP at d1, d2, d5, d6.
    recall 1/4, 2/4, 2/4, 2/4, 3/4, 1; precision 1, 1, 2/3, 1/2, 3/5, 2/3;
    area AP = 1/4 * 1 + 1/4 * 1 + 1/4 * 2/3 + 1/4 * 2/3 = 5/6."""
    plain = [dict(TARGETS[0]), TARGETS[1]]
    plain[0]["boxes"] = torch.cat([TARGETS[0]["boxes"], TARGETS[0]["ignore_boxes"]])
    plain[0]["labels"] = torch.cat([TARGETS[0]["labels"], TARGETS[0]["ignore_labels"]])
    plain[0]["ignore_boxes"], plain[0]["ignore_labels"] = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    evaluator = VOCEvaluator(["cat", "dog", "bird"])
    evaluator.update(PREDS, plain)
    assert evaluator.compute()["ap50/cat"] == pytest.approx(5 / 6, abs=1e-6)


def test_iou_threshold_is_strict_and_names_the_keys():
    """d4-like box of IoU exactly 0.9 is not a match at threshold 0.9 (the devkit's `>`)."""
    evaluator = VOCEvaluator(["cat"], iou_threshold=0.9)
    evaluator.update([_pred([[0, 0, 10, 9]], [0.5], [1])], [_target(0, [[0, 0, 10, 10]], [1])])
    assert evaluator.compute() == {"map_90": 0.0, "ap90/cat": 0.0}
