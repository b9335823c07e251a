"""``Detector.draw``: boxes in per-class colours, captioned ``name 0.93``, on a copy of the image.

The palette is the one the web page uses (the server sends it in ``/api/info``), so a class has
the same colour in Python, in PNGs and in the browser.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from frcnn.api.inputs import ImageInput, to_image_tensor
from frcnn.api.result import DetectionResult

# Tableau's 10 colours and their light variants: distinct on photos, label k -> PALETTE[(k - 1) % 20].
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5")


def class_colour(label: int) -> str:
    """Label 1..K -> '#rrggbb'."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def line_width(height: int, width: int) -> int:
    """Box outline in pixels: visible on a 100 px thumbnail and on a 4000 px photo alike."""
    return max(1, round(min(height, width) / 250))


def draw_result(image: ImageInput, result: DetectionResult):
    """``image`` with ``result``'s boxes drawn; the same kind as given (path -> PIL image;
    tensor -> (3, H, W) uint8 tensor; numpy -> (H, W, 3) uint8 array; PIL -> RGB PIL image)."""
    pixels = (to_image_tensor(image) * 255).round().to(torch.uint8)  # (3, H, W) uint8
    if tuple(pixels.shape[-2:]) != tuple(result.image_size):
        raise ValueError(f"the result is for a {result.image_size} (height, width) image, "
                         f"the image is {tuple(pixels.shape[-2:])}")
    if len(result):
        captions = [f"{name} {float(score):.2f}" for name, score in zip(result.names, result.scores)]
        colours = [class_colour(int(label)) for label in result.labels]
        pixels = draw_bounding_boxes(pixels, result.boxes, labels=captions, colors=colours,
                                     width=line_width(*result.image_size))
    if isinstance(image, Tensor):
        return pixels
    hwc = pixels.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    if isinstance(image, np.ndarray):
        return hwc
    assert isinstance(image, (Image.Image, str, Path))
    return Image.fromarray(hwc)
