import math

import pytest
import torch
from torch.testing import assert_close
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from frcnn.modeling.boxes import BoxCoder, clip_boxes, validate_targets


def test_encode_hand_computed():
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # centre (5, 5), 10 x 10
    gt = torch.tensor([[2.0, 4.0, 12.0, 24.0]])  # centre (7, 14), 10 x 20
    assert_close(BoxCoder((1, 1, 1, 1)).encode(ref, gt), torch.tensor([[0.2, 0.9, 0.0, math.log(2.0)]]))
    assert_close(BoxCoder((10, 10, 5, 5)).encode(ref, gt), torch.tensor([[2.0, 9.0, 0.0, 5 * math.log(2.0)]]))


def test_decode_hand_computed_and_class_specific_groups():
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[0.2, 0.9, 0.0, math.log(2.0), 0.0, 0.0, 0.0, 0.0]])  # two classes
    out = BoxCoder().decode(deltas, ref)
    assert_close(out, torch.tensor([[2.0, 4.0, 12.0, 24.0, 0.0, 0.0, 10.0, 10.0]]))


def test_round_trip_and_torchvision_parity():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    ref = torch.cat((xy, xy + 1 + torch.rand(50, 2, generator=g) * 60), 1)
    xy = torch.rand(50, 2, generator=g) * 100
    gt = torch.cat((xy, xy + 1 + torch.rand(50, 2, generator=g) * 60), 1)
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        ours, theirs = BoxCoder(weights), TVBoxCoder(weights)
        deltas = ours.encode(ref, gt)
        assert_close(deltas, theirs.encode_single(gt, ref))
        assert_close(ours.decode(deltas, ref), gt, atol=1e-4, rtol=1e-5)
        assert_close(ours.decode(deltas, ref), theirs.decode_single(deltas, ref), atol=1e-4, rtol=1e-5)


def test_decode_clamps_scale_and_returns_float32():
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = BoxCoder().decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]], dtype=torch.float16), ref)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert_close(out[0, 2] - out[0, 0], torch.tensor(1000.0))  # 16 * exp(log(1000/16))


def test_clip_boxes_with_per_box_bounds():
    boxes = torch.tensor([[-5.0, -1.0, 50.0, 8.0], [3.0, 2.0, 9.0, 30.0]])
    out = clip_boxes(boxes, torch.tensor([[10.0], [20.0]]), torch.tensor([[40.0], [5.0]]))
    assert_close(out, torch.tensor([[0.0, 0.0, 40.0, 8.0], [3.0, 2.0, 5.0, 20.0]]))


def _t(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64)}


@pytest.mark.parametrize(
    "box, label, message",
    [
        ([5.0, 5.0, 5.0, 9.0], 1, r"image 1, box 1 .* x2 <= x1"),
        ([5.0, float("nan"), 8.0, 9.0], 1, r"image 1, box 1 .* not finite"),
        ([120.0, 5.0, 130.0, 9.0], 1, r"image 1, box 1 .* wholly outside the 100x50 image"),
        ([5.0, 5.0, 8.0, 9.0], 3, r"image 1, box 1: label 3 is outside 1..2"),
        ([5.0, 5.0, 8.0, 9.0], 0, r"image 1, box 1: label 0 is outside 1..2"),
    ],
)
def test_validate_targets_names_image_and_box(box, label, message):
    targets = [_t([[1, 1, 4, 4]], [1]), _t([[1, 1, 4, 4], box], [2, label])]
    with pytest.raises(ValueError, match=message):
        validate_targets(targets, [(50, 100), (50, 100)], num_classes=2)


def test_validate_targets_accepts_empty_and_partly_outside():
    validate_targets([_t([], []), _t([[-3, -3, 20, 20]], [1])], [(50, 100), (50, 100)], num_classes=1)
