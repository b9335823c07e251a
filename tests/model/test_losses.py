import math

import torch
from torch.testing import assert_close

from frcnn.modeling.losses import box_regression_loss
from frcnn.modeling.roi_heads.losses import rcnn_classification_loss, select_class_deltas
from frcnn.modeling.rpn.losses import rpn_objectness_loss


def test_rpn_objectness_bce():
    loss = rpn_objectness_loss(torch.tensor([0.0, 2.0]), torch.tensor([1, 0], dtype=torch.int8))
    expected = (math.log(2.0) + math.log(1.0 + math.exp(2.0))) / 2
    assert_close(loss, torch.tensor(expected))


def test_smooth_l1_normalised_by_sampled_count():
    pred = torch.tensor([[0.5, 0.0, 0.0, 2.0]])
    # beta 1: 0.5 * 0.5^2 = 0.125 and 2 - 0.5 = 1.5 -> 1.625, over 4 sampled -> 0.40625
    assert_close(box_regression_loss(pred, torch.zeros(1, 4), num_sampled=4, beta=1.0), torch.tensor(0.40625))
    # beta 1/9: 0.5 >= 1/9 -> 0.5 - 1/18; 2 - 1/18 -> (2.5 - 1/9) / 4
    assert_close(box_regression_loss(pred, torch.zeros(1, 4), 4, beta=1 / 9), torch.tensor((2.5 - 1 / 9) / 4))


def test_rcnn_cross_entropy():
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    expected = (math.log(1 + 2 / math.e) + math.log(1 + 2 * math.exp(-3.0))) / 2
    assert_close(rcnn_classification_loss(logits, torch.tensor([0, 1])), torch.tensor(expected))


def test_select_class_deltas_takes_the_gt_class():
    deltas = torch.arange(16.0).reshape(2, 8)  # K = 2
    assert_close(select_class_deltas(deltas, torch.tensor([2, 1])), torch.tensor([[4.0, 5, 6, 7], [8.0, 9, 10, 11]]))


def test_empty_inputs_give_zero_with_grad():
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = box_regression_loss(pred, torch.zeros(0, 4), 0, 1.0)
    loss.backward()
    assert loss.item() == 0.0
