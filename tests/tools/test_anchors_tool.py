import re

import pytest
import torch
from torch.testing import assert_close
from torchvision.ops import box_iou

from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.transform import resized_size
from frcnn.tools.anchor_coverage import best_iou_per_shape, coverage_table, measure_coverage
from frcnn.tools.anchors import main


def test_best_iou_per_shape_hand_computed():
    shapes = AnchorGenerator((16,), (1.0,)).base_anchors()  # [-8, -8, 8, 8]
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 24.0, 24.0]])
    iou = best_iou_per_shape(boxes, (64, 64), shapes, stride=16)
    # box 0: best anchor centred at (0, 0) or (16, 16): overlap 8 x 8 = 64 over 256 + 256 - 64
    assert_close(iou, torch.tensor([[64 / 448], [1.0]]))


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_best_iou_per_shape_equals_brute_force(offset):
    g = torch.Generator().manual_seed(0)
    gen = AnchorGenerator((32, 64, 128), (0.5, 1.0, 2.0), offset=offset)
    xy = torch.rand(200, 2, generator=g) * 300
    boxes = torch.cat((xy, xy + 4 + torch.rand(200, 2, generator=g) * 200), dim=1)
    anchors = gen.grid_anchors((20, 25), (16, 16), torch.device("cpu"))  # image 320 x 400
    expected = box_iou(boxes, anchors).max(dim=1).values
    ours = best_iou_per_shape(boxes, (320, 400), gen.base_anchors(), 16, offset).max(dim=1).values
    assert_close(ours, expected)


def test_coverage_table_bins():
    gen = AnchorGenerator((16,), (1.0,))
    boxes = [torch.tensor([[8.0, 8.0, 24.0, 24.0], [0.0, 0.0, 16.0, 16.0], [100.0, 100.0, 200.0, 140.0]])]
    coverage = measure_coverage(boxes, [(256, 256)], gen, 16, min_size=256, max_size=256)
    table = coverage_table(coverage, 0.5)
    assert table["boxes"] == 3 and table["covered"] == pytest.approx(1 / 3)
    assert table["by_size"] == [("0-32 px", 2, 0.5), ("32-64 px", 1, 0.0)]
    assert resized_size(480, 640, 600, 1000) == (600, 800)
    assert resized_size(300, 1200, 600, 1000) == (250, 1000)


@pytest.mark.shared_data
def test_cli_on_coco128(capsys):
    assert main(["data=coco128", "~experiment", "backbone=tiny", "data.check_images=off"]) == 0
    out = capsys.readouterr().out
    assert "128 training images, stride 16, images resized to 600 / 1000" in out
    current, suggested = (float(v) for v in re.findall(r"([\d.]+)% of 929 boxes", out))
    assert current == pytest.approx(59.3, abs=0.05)  # the seed's anchors on COCO128 (brute force agrees)
    assert suggested > current
    assert "model.rpn.anchor_generator.sizes=[" in out
