"""The RPN's own rules, with hand-computed values: anchor targets (IoU bands, the best-anchor
fallback, an image without objects), the balanced-sample losses, and proposal selection."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.boxes import BoxCoder
from frcnn.modeling.matcher import Matcher
from frcnn.modeling.rpn import RegionProposalNetwork, rpn_losses, rpn_targets, select_proposals

ANCHORS = torch.tensor([[0.0, 0, 10, 10], [0, 0, 20, 20], [30, 30, 40, 40], [5, 5, 15, 15]])
SEED_MATCHER = Matcher(0.5, 0.1, 0.0, allow_low_quality_matches=True)  # the seed's RPN rule


def test_targets_follow_the_seed_iou_bands_and_fallback():
    gt = [
        torch.tensor([[0.0, 0, 10, 10]]),  # IoU with the anchors: 1, 100/400, 0, 25/175
        torch.zeros(0, 4),  # no objects: every anchor is background
        torch.tensor([[28.0, 28, 44, 44]]),  # best IoU 100/256 = 0.39 < 0.5: anchor 2 by the fallback
    ]
    labels, deltas = rpn_targets(ANCHORS, gt, SEED_MATCHER, BoxCoder())
    assert labels.tolist() == [[1, -1, 0, -1], [0, 0, 0, 0], [0, 0, 1, 0]]
    assert labels.dtype == torch.int8 and deltas.shape == (3, 4, 4)
    assert_close(deltas[0, 0], torch.zeros(4))  # a perfect anchor needs no change
    # anchor [30, 30, 40, 40] (centre 35, side 10) -> box centre 36, side 16
    assert_close(deltas[2, 2], torch.tensor([0.1, 0.1, math.log(1.6), math.log(1.6)]))


def test_losses_on_the_whole_sample_hand_computed():
    labels = torch.tensor([[1, -1, 0, -1], [0, 0, 0, 0]], dtype=torch.int8)
    gt_deltas = torch.zeros(2, 4, 4)
    logits = torch.tensor([[2.0, 5.0, -1.0, 7.0], [0.0, 1.0, -2.0, 3.0]])
    pred_deltas = torch.zeros(2, 4, 4)
    pred_deltas[0, 0] = torch.tensor([0.5, 0.0, 0.0, 2.0])  # the one foreground anchor
    pred_deltas[0, 1] = torch.tensor([9.0, 9.0, 9.0, 9.0])  # ignored: must not count
    losses = rpn_losses(logits, pred_deltas, labels, gt_deltas, 256, 0.5, smooth_l1_beta=1 / 9)
    # sampled: anchor 0 (fg) and 2 (bg) of image 0, all four of image 1: S = 6
    bce = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0)), math.log(2.0), math.log1p(math.exp(1.0)),
           math.log1p(math.exp(-2.0)), math.log1p(math.exp(3.0))]
    assert_close(losses["loss_rpn_cls"], torch.tensor(sum(bce) / 6))
    # smooth L1 (beta 1/9) beyond beta: |x| - beta / 2, over the foreground, divided by S
    assert_close(losses["loss_rpn_reg"], torch.tensor((0.5 - 1 / 18 + 2.0 - 1 / 18) / 6))


def test_sample_keeps_the_positive_fraction():
    labels = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.int8)
    logits = torch.zeros(1, 8)
    logits[0, :4] = 10.0  # sampled fg anchors cost ~0; each sampled bg one costs log(1 + e^0) = log 2
    gt = torch.zeros(1, 8, 4)
    torch.manual_seed(0)
    losses = rpn_losses(logits, torch.zeros(1, 8, 4), labels, gt, batch_size_per_image=4, positive_fraction=0.25,
                        smooth_l1_beta=1.0)
    # 4 sampled: 1 foreground (25 %) and 3 background
    assert_close(losses["loss_rpn_cls"], torch.tensor((math.log1p(math.exp(-10.0)) + 3 * math.log(2.0)) / 4))


def test_proposal_selection_hand_computed():
    anchors = torch.tensor([
        [0.0, 0, 20, 20],       # logit 3.0: kept
        [1.0, 0, 21, 20],       # 2.5: IoU 380 / 420 = 0.90 with the first: suppressed by NMS 0.6
        [30.0, 30, 60, 60],     # 2.0: clipped to the 50 x 50 image of image 0
        [40.0, 0, 40.0005, 10],  # 1.5: narrower than min_box_size: dropped
        [0.0, 30, 10, 40],      # -3.0: objectness 0.047 < score_threshold 0.1: dropped
        [25.0, 0, 35, 10],      # 1.0: kept, last
    ])
    logits = torch.tensor([[3.0, 2.5, 2.0, 1.5, -3.0, 1.0], [3.0, 2.5, 2.0, 1.5, -3.0, 1.0]])
    deltas = torch.zeros(2, 6, 4)
    image_sizes = [(50, 50), (100, 45)]  # (h, w): image 1 clips x at 45
    kept = select_proposals(anchors, logits, deltas, image_sizes, [6], BoxCoder(), pre_nms_top_n=6,
                            post_nms_top_n=3, nms_threshold=0.6, min_box_size=1e-3, score_threshold=0.1)
    assert_close(kept.boxes[0], torch.tensor([[0.0, 0, 20, 20], [30, 30, 50, 50], [25, 0, 35, 10]]))
    assert_close(kept.logits[0], torch.tensor([3.0, 2.0, 1.0]))
    assert_close(kept.boxes[1], torch.tensor([[0.0, 0, 20, 20], [30, 30, 45, 60], [25, 0, 35, 10]]))
    top2 = select_proposals(anchors, logits, deltas, image_sizes, [6], BoxCoder(), 6, 2, 0.6, 1e-3, 0.1)
    assert [len(b) for b in top2.boxes] == [2, 2]  # post_nms_top_n per image
    top1_pre = select_proposals(anchors, logits, deltas, image_sizes, [6], BoxCoder(), 1, 5, 0.6, 1e-3, 0.1)
    assert_close(top1_pre.boxes[0], torch.tensor([[0.0, 0, 20, 20]]))  # pre_nms_top_n before NMS


def test_module_losses_for_constant_objectness_on_an_empty_image():
    """Head weights 0 and objectness bias b: every logit is b. On an image without objects every
    sampled anchor is background, so loss_rpn_cls = log(1 + e^b) exactly and loss_rpn_reg = 0."""
    rpn = RegionProposalNetwork(4, AnchorGenerator((8,), (1.0,)), conv_channels=4)
    with torch.no_grad():
        for layer in (rpn.head.conv, rpn.head.objectness, rpn.head.deltas):
            layer.weight.zero_()
            layer.bias.zero_()
        rpn.head.objectness.bias.fill_(0.7)
    features = torch.rand(1, 4, 4, 4, requires_grad=True)
    out = rpn(features, [(64, 64)], (64, 64), [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    assert_close(out.losses["loss_rpn_cls"], torch.tensor(math.log1p(math.exp(0.7))))
    assert out.losses["loss_rpn_reg"].item() == 0.0
    out.losses["loss_rpn_cls"].backward()
    assert rpn.head.objectness.bias.grad is not None and rpn.head.objectness.bias.grad.abs().sum() > 0
    assert not out.proposals.boxes[0].requires_grad  # proposals are detached
    assert rpn.eval()(features, [(64, 64)], (64, 64)).losses == {}  # no targets, no losses
