"""Proposal recall on a hand-made case."""

import math

import pytest
import torch

from frcnn.evaluation import ProposalRecall, proposal_recall

TOP_NS = (1, 2, 3)
THRESHOLDS = (0.5, 0.75, 0.8)

# Image 0: boxes g1 [0,0,10,10] and g2 [20,20,40,40]; proposals, best first:
#   p1 [0,0,10,10]   IoU 1 with g1
#   p2 [20,20,40,35] IoU 300/400 = 0.75 with g2 (recalled at 0.75: the threshold is >=)
#   p3 [20,20,40,30] IoU 200/400 = 0.5 with g2
# Image 1: box [0,0,10,10], no proposal at all. Image 2: proposals, no box.
PROPOSALS = [
    torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 35], [20, 20, 40, 30]]),
    torch.zeros(0, 4),
    torch.tensor([[0.0, 0, 5, 5]]),
]
GT_BOXES = [
    torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]),
    torch.tensor([[0.0, 0, 10, 10]]),
    torch.zeros(0, 4),
]
# Recalled boxes out of 3:  top 1: g1 at every threshold -> 1, 1, 1
#                           top 2: g1, and g2 at 0.5 and 0.75 -> 2, 2, 1;  top 3: the same.
EXPECTED = {
    "recall@1/iou0.5": 1 / 3, "recall@1/iou0.75": 1 / 3, "recall@1/iou0.8": 1 / 3,
    "recall@2/iou0.5": 2 / 3, "recall@2/iou0.75": 2 / 3, "recall@2/iou0.8": 1 / 3,
    "recall@3/iou0.5": 2 / 3, "recall@3/iou0.75": 2 / 3, "recall@3/iou0.8": 1 / 3,
}  # fmt: skip


def test_proposal_recall_by_hand():
    metrics = proposal_recall(PROPOSALS, GT_BOXES, TOP_NS, THRESHOLDS)
    assert metrics == pytest.approx(EXPECTED, abs=1e-6)
    assert list(metrics) == list(EXPECTED)


def test_default_keys_and_no_ground_truth():
    metrics = proposal_recall([torch.zeros(0, 4)], [torch.zeros(0, 4)])
    assert list(metrics) == [f"recall@{n}/iou{t}" for n in (50, 300, 1000) for t in (0.5, 0.7)]
    assert all(math.isnan(v) for v in metrics.values())


def test_accumulator_counts_each_image_once():
    targets = [{"boxes": boxes, "image_id": torch.tensor(i)} for i, boxes in enumerate(GT_BOXES)]
    recall = ProposalRecall(TOP_NS, THRESHOLDS)
    recall.update(PROPOSALS[:2], targets[:2])
    recall.update(PROPOSALS[2:], targets[2:])
    recall.update(PROPOSALS[:1], targets[:1])  # a padded repeat of image 0
    assert recall.compute() == pytest.approx(EXPECTED, abs=1e-6)
    recall.reset()
    assert all(math.isnan(v) for v in recall.compute().values())
