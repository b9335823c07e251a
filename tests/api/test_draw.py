"""Detector.draw: per-class colours on a copy of the image, returned as the kind given."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageColor

from frcnn.api import DetectionResult
from frcnn.api.draw import PALETTE, class_colour, line_width


def one_box_result() -> DetectionResult:
    return DetectionResult(torch.tensor([[40.0, 50.0, 200.0, 180.0]]), torch.tensor([0.9]), torch.tensor([2]),
                           ("square",), (240, 320))


def test_draws_the_box_in_its_class_colour_and_nothing_else_inside(detector):
    pixels = np.full((240, 320, 3), 128, np.uint8)
    drawn = detector.draw(pixels, one_box_result())
    assert isinstance(drawn, np.ndarray) and drawn.shape == pixels.shape and (pixels == 128).all()  # a copy
    colour = np.array(ImageColor.getrgb(class_colour(2)), np.uint8)
    width = line_width(240, 320)
    changed = (drawn != pixels).any(axis=2)  # (H, W)
    rows = slice(100, 170)  # below the caption, above the bottom edge
    # PIL's outline (torchvision's draw_bounding_boxes) covers columns x1 .. x1 + w - 1 and x2 - w + 1 .. x2
    assert (drawn[rows, 40:40 + width] == colour).all() and (drawn[rows, 201 - width:201] == colour).all()
    assert not changed[rows, 40 + width:201 - width].any()  # inside: untouched
    assert not changed[:, :39].any() and not changed[:, 202:].any() and not changed[182:].any()


def test_same_kind_back(detector):
    tensor = torch.zeros(3, 240, 320)
    assert detector.draw(tensor, one_box_result()).dtype == torch.uint8
    assert isinstance(detector.draw(Image.new("RGB", (320, 240)), one_box_result()), Image.Image)
    assert class_colour(1) == PALETTE[0] and class_colour(21) == PALETTE[0]


def test_draw_refuses_a_result_of_another_image(detector):
    import pytest

    with pytest.raises(ValueError, match="result is for a"):
        detector.draw(torch.zeros(3, 100, 100), one_box_result())
