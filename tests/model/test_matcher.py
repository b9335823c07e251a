import torch
from torch.testing import assert_close

from frcnn.modeling.matcher import Matcher

IOU = torch.tensor(
    [
        [0.9, 0.3, 0.05, 0.0],
        [0.2, 0.6, 0.08, 0.0],
        [0.1, 0.2, 0.02, 0.3],
    ]
)


def test_rpn_thresholds_without_fallback():
    matched, labels = Matcher(0.5, 0.1, 0.0, allow_low_quality_matches=False)(IOU)
    # column maxima: 0.9 (gt 0) fg, 0.6 (gt 1) fg, 0.08 (gt 1) bg, 0.3 (gt 2) between -> ignored
    assert_close(labels, torch.tensor([1, 0 + 1, 0, -1], dtype=torch.int8))
    assert_close(matched, torch.tensor([0, 1, 1, 2]))


def test_best_anchor_fallback():
    matched, labels = Matcher(0.5, 0.1, 0.0, allow_low_quality_matches=True)(IOU)
    # gt 2 reaches 0.3 at most, at column 3: that column becomes its foreground
    assert_close(labels, torch.tensor([1, 1, 0, 1], dtype=torch.int8))
    assert_close(matched, torch.tensor([0, 1, 1, 2]))


def test_fallback_keeps_ties_and_skips_zero_overlap():
    iou = torch.tensor([[0.2, 0.2, 0.1], [0.0, 0.0, 0.0]])
    _, labels = Matcher(0.5, 0.1, 0.0, allow_low_quality_matches=True)(iou)
    assert_close(labels, torch.tensor([1, 1, -1], dtype=torch.int8))


def test_rcnn_thresholds_ignore_below_low():
    _, labels = Matcher(0.5, 0.5, 0.1)(IOU)
    # 0.9 fg, 0.6 fg, 0.08 < 0.1 ignored, 0.3 in [0.1, 0.5) background
    assert_close(labels, torch.tensor([1, 1, -1, 0], dtype=torch.int8))
    _, labels = Matcher(0.5, 0.5, 0.0)(IOU)  # lower bound 0 keeps all
    assert_close(labels, torch.tensor([1, 1, 0, 0], dtype=torch.int8))


def test_empty_ground_truth_is_all_background():
    matched, labels = Matcher(0.5, 0.5, 0.1)(torch.zeros(0, 5))
    assert_close(labels, torch.zeros(5, dtype=torch.int8))
    assert_close(matched, torch.zeros(5, dtype=torch.int64))


def test_batched_with_padded_image_without_ground_truth():
    iou = torch.full((2, 3, 4), -1.0)
    iou[0] = IOU
    matched, labels = Matcher(0.5, 0.5, 0.1, allow_low_quality_matches=True)(iou)
    assert_close(labels[0], torch.tensor([1, 1, -1, 1], dtype=torch.int8))
    assert_close(labels[1], torch.zeros(4, dtype=torch.int8))
    assert_close(matched[1], torch.zeros(4, dtype=torch.int64))
