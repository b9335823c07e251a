"""The R-CNN stage's own rules, with hand-computed values: the seed's RoI sampling (ground truth
added as proposals, padding never sampled, the 25 % foreground cap, the [0.1, 0.5) background band)
and the class-specific box loss (only the deltas of each RoI's true class count)."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from frcnn.modeling.boxes import BoxCoder
from frcnn.modeling.matcher import Matcher
from frcnn.modeling.roi_heads import rcnn_losses, sample_rois

SEED_MATCHER = Matcher(0.5, 0.5, 0.1, allow_low_quality_matches=False)  # fg >= 0.5, bg [0.1, 0.5)
CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))
GT = torch.tensor([[0.0, 0.0, 10.0, 10.0]])


def _target(boxes=GT, labels=(2,)):
    return {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64)}


def test_background_band_and_ignored_low_overlap():
    proposals = torch.tensor([
        [0.0, 0, 10, 10],   # IoU 1: foreground
        [0.0, 0, 10, 20],   # 100 / 200 = 0.5: foreground (>= 0.5)
        [0.0, 0, 20, 15],   # 100 / 300 = 0.33: background
        [5.0, 5, 25, 25],   # 25 / 475 = 0.05 < 0.1: ignored, never sampled
        [50.0, 50, 60, 60],  # 0: ignored
    ])
    out = sample_rois([proposals], [_target()], SEED_MATCHER, CODER, batch_size_per_image=64,
                      positive_fraction=0.25, add_gt_as_proposals=False)
    sampled = {tuple(r.tolist()): int(c) for r, c in zip(out.rois[0], out.gt_classes)}
    assert sampled == {(0.0, 0.0, 10.0, 10.0): 2, (0.0, 0.0, 10.0, 20.0): 2, (0.0, 0.0, 20.0, 15.0): 0}
    # the IoU-0.5 RoI [0, 0, 10, 20] -> box [0, 0, 10, 10]: dy = 10 * (5 - 10) / 20, dh = 5 * log(10 / 20)
    row = [tuple(r.tolist()) for r in out.rois[0]].index((0.0, 0.0, 10.0, 20.0))
    assert_close(out.gt_deltas[row], torch.tensor([0.0, -2.5, 0.0, 5 * math.log(0.5)]))


def test_ground_truth_joins_the_proposals_and_padding_is_never_sampled():
    gt1 = torch.tensor([[20.0, 20, 40, 40], [0.0, 0, 8, 8]])
    proposals = [torch.zeros(0, 4), torch.tensor([[20.0, 20, 40, 40], [21, 20, 41, 40], [0, 30, 10, 40]])]
    out = sample_rois(proposals, [_target(), _target(gt1, (1, 3))], SEED_MATCHER, CODER, 64, 0.25,
                      add_gt_as_proposals=True)
    # image 0 had no proposal: its ground truth is its one RoI, a perfect foreground of class 2
    assert out.rois[0].tolist() == [[0.0, 0.0, 10.0, 10.0]]
    assert out.gt_classes[0].item() == 2 and out.gt_deltas[0].abs().max() == 0
    # image 1: 3 proposals + 2 boxes; [0, 30, 10, 40] overlaps nothing (ignored); the padding of
    # image 0 (its columns 1..4) never appears
    assert len(out.rois[1]) == 4 and len(out.rois[0]) == 1
    assert sorted(out.gt_classes[1:].tolist()) == [1, 1, 1, 3]


def test_foreground_is_capped_at_a_quarter_of_the_batch():
    boxes = [[0.0, 0, 10, 10 + 0.1 * i] for i in range(8)]  # 8 foreground (IoU >= 0.98)
    boxes += [[0.0, 0, 20, 10 + i] for i in range(1, 9)]  # 8 background (IoU 100 / 220 .. 100 / 360)
    torch.manual_seed(0)
    out = sample_rois([torch.tensor(boxes)], [_target()], SEED_MATCHER, CODER, batch_size_per_image=8,
                      positive_fraction=0.25, add_gt_as_proposals=False)
    assert len(out.rois[0]) == 8 and int((out.gt_classes > 0).sum()) == 2  # 25 % of 8
    few = sample_rois([torch.tensor(boxes[:1] + boxes[8:])], [_target()], SEED_MATCHER, CODER, 8, 0.25, False)
    assert int((few.gt_classes > 0).sum()) == 1 and len(few.rois[0]) == 8  # background fills the rest


def test_box_loss_reads_only_each_rois_true_class():
    K = 3
    pred_deltas = torch.full((3, 4 * K), 100.0)  # every other class's deltas are huge
    pred_deltas[0, 4:8] = torch.tensor([0.5, 0.0, 0.0, 0.0])  # RoI 0 is class 2: block 1
    pred_deltas[1, 8:12] = torch.tensor([0.0, -2.0, 0.0, 0.0])  # RoI 1 is class 3: block 2
    gt_classes = torch.tensor([2, 3, 0])  # RoI 2 is background: no box loss
    logits = torch.zeros(3, K + 1)
    losses = rcnn_losses(logits, pred_deltas, gt_classes, torch.zeros(3, 4), smooth_l1_beta=1.0)
    # smooth L1 (beta 1): 0.5 * 0.5^2 = 0.125 and |-2| - 0.5 = 1.5, summed, over the 3 sampled RoIs
    assert_close(losses["loss_box_reg"], torch.tensor((0.125 + 1.5) / 3))
    assert_close(losses["loss_cls"], torch.tensor(math.log(K + 1)))  # uniform logits over K + 1
