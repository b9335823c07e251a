"""Test-time augmentation: boxes of a flipped and of a rescaled view mapped back by hand, and both
merges (class-wise NMS, weighted box fusion) on hand-computed detections."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from frcnn.modeling.box_fusion import merge_nms, weighted_box_fusion
from frcnn.modeling.output import DetectorOutput
from frcnn.modeling.transform import InputTransform
from frcnn.modeling.tta import TestTimeAugmentation, unflip_boxes


def dets(boxes, scores, labels) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def test_unflip_boxes():
    # A box over columns 10..30 of the flipped 100 px wide image covers columns 70..90 of the image.
    flipped = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 5.0]])
    torch.testing.assert_close(unflip_boxes(flipped, 100), torch.tensor([[70.0, 20.0, 90.0, 40.0], [0.0, 0.0, 100.0, 5.0]]))


class FixedBoxDetector(nn.Module):
    """Sees the images through a real InputTransform and 'detects' box (10, 10, 20, 30) of the resized
    image, scored by the view's scale, mapped back to the image as FasterRCNN does."""

    num_classes = 1

    def __init__(self) -> None:
        super().__init__()
        self.transform = InputTransform(100, 1000, size_divisible=1, image_mean=(0.0,) * 3, image_std=(1.0,) * 3)
        self.seen: list[tuple[int, int]] = []

    def forward(self, images, targets=None, return_detections=None) -> DetectorOutput:
        batch = self.transform(images)
        self.seen += batch.image_sizes
        box = torch.tensor([[10.0, 10.0, 20.0, 30.0]])
        boxes = batch.to_original([box for _ in images])
        scale = batch.image_sizes[0][0] / 1000
        return DetectorOutput(detections=[dets(b.tolist(), [scale], [1]) for b in boxes])


def test_flipped_and_rescaled_views_come_back_in_image_pixels():
    detector = FixedBoxDetector().eval()
    tta = TestTimeAugmentation(detector, scales=[50, 100], flip=True, merge="nms", iou_threshold=0.99)
    image = torch.rand(3, 100, 200)  # (h, w) = (100, 200)
    merged = tta([image]).detections[0]
    # scale 50: resized 50 x 100, so (10, 10, 20, 30) -> x2 -> (20, 20, 40, 60); flipped: x -> 200 - x
    # scale 100: the image itself, (10, 10, 20, 30); flipped: (180, 10, 190, 30). Scores: 0.05 / 0.1.
    assert detector.seen == [(50, 100), (50, 100), (100, 200), (100, 200)]
    expected = {(10.0, 10.0, 20.0, 30.0), (180.0, 10.0, 190.0, 30.0), (20.0, 20.0, 40.0, 60.0), (160.0, 20.0, 180.0, 60.0)}
    assert {tuple(b) for b in merged["boxes"].tolist()} == expected
    torch.testing.assert_close(merged["scores"], torch.tensor([0.1, 0.1, 0.05, 0.05]))
    assert detector.transform.test_min_size == 100  # restored after the views


FIRST = dets([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], [1, 2])
SECOND = dets([[1, 0, 11, 10], [0, 0, 10, 10]], [0.7, 0.6], [1, 2])  # IoU of the label-1 pair: 90 / 110


def test_merge_nms():
    merged = merge_nms([FIRST, SECOND], iou_threshold=0.5)
    # (1, 0, 11, 10) overlaps the better label-1 box by 0.82: dropped; the label-2 boxes do not overlap
    torch.testing.assert_close(merged["boxes"], torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10]]))
    torch.testing.assert_close(merged["scores"], torch.tensor([0.9, 0.8, 0.6]))
    assert merged["labels"].tolist() == [1, 2, 2]


def test_weighted_box_fusion():
    fused = weighted_box_fusion([FIRST, SECOND], iou_threshold=0.55)
    # label 1: (0.9 * (0, 0, 10, 10) + 0.7 * (1, 0, 11, 10)) / 1.6, score mean(0.9, 0.7) * 2/2;
    # label 2: two lone boxes, each its score * 1/2.
    torch.testing.assert_close(fused["boxes"], torch.tensor([[0.4375, 0, 10.4375, 10], [50, 50, 60, 60], [0, 0, 10, 10]]))
    torch.testing.assert_close(fused["scores"], torch.tensor([0.8, 0.4, 0.3]))
    assert fused["labels"].tolist() == [1, 2, 2]


def test_merges_take_empty_views():
    empty = dets(torch.zeros(0, 4).tolist(), [], [])
    empty["boxes"] = empty["boxes"].reshape(0, 4)
    empty["labels"] = empty["labels"].long()
    for merge in (merge_nms, weighted_box_fusion):
        out = merge([empty, empty])
        assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["labels"].shape == (0,)


def test_unknown_merge_is_refused():
    with pytest.raises(ValueError, match="merge must be one of"):
        TestTimeAugmentation(FixedBoxDetector(), merge="mean")
