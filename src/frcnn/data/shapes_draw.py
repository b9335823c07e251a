"""Drawing one synthetic shapes image: a textured background and 1-4 shapes with exact boxes.

Boxes are measured on the drawn pixels (the tight box of the shape's own mask, before later shapes
overlap it), so they are exact, in 0-based pixel edges. Every call draws from the generator it is
given, so an image is a pure function of its seed.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ("circle", "square", "triangle")
# Two shapes may share at most this fraction of the smaller one's box: each stays clearly visible.
MAX_OVERLAP = 0.25


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 texture: a base colour, smooth blobs and stripes."""
    base = rng.uniform(40, 215, size=3)
    grid_h, grid_w = rng.integers(2, 7, size=2)
    coarse = rng.normal(0.0, 30.0, size=(grid_h, grid_w, 3)).astype(np.float32)
    blobs = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)  # (H, W, 3)
    angle, frequency, phase = rng.uniform(0, math.pi), rng.uniform(0.1, 0.6), rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * frequency + phase)  # (H, W)
    stripe_colour = rng.uniform(-20, 20, size=3)
    return (base + blobs + stripes[:, :, None] * stripe_colour).astype(np.float32)


def _shape_mask(kind: str, box: tuple[int, int, int, int], width: int, height: int,
                rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool mask of a shape filling the pixel-edge box (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = box
    right, bottom = x2 - 1, y2 - 1  # PIL draws inclusive pixel coordinates
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if kind == "square":
        draw.rectangle([x1, y1, right, bottom], fill=255)
    elif kind == "circle":
        draw.ellipse([x1, y1, right, bottom], fill=255)
    else:  # triangle, apex up, down, left or right
        mid_x, mid_y = (x1 + right) / 2, (y1 + bottom) / 2
        corners = {
            0: [(x1, bottom), (right, bottom), (mid_x, y1)],
            1: [(x1, y1), (right, y1), (mid_x, bottom)],
            2: [(right, y1), (right, bottom), (x1, mid_y)],
            3: [(x1, y1), (x1, bottom), (right, mid_y)],
        }[int(rng.integers(4))]
        draw.polygon(corners, fill=255)
    return np.asarray(mask) > 0


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Intersection of two boxes over the smaller one's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def render_image(
    rng: np.random.Generator,
    width: int,
    height: int,
    num_objects: int,
    min_box_size: int,
    max_box_fraction: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image.

    Returns:
        image (H, W, 3) uint8; boxes (N, 4) float32 pixel edges, exact to the drawn pixels;
        labels (N,) int64 in 1..len(SHAPE_CLASSES).
    """
    canvas = _background(rng, width, height)
    max_side = max(min_box_size, int(max_box_fraction * min(width, height)))
    boxes: list[tuple[int, int, int, int]] = []
    labels: list[int] = []
    for _ in range(num_objects):
        label = int(rng.integers(len(SHAPE_CLASSES))) + 1
        kind = SHAPE_CLASSES[label - 1]
        for _attempt in range(30):
            side = int(round(math.exp(rng.uniform(math.log(min_box_size), math.log(max_side)))))
            box_w = side
            box_h = side if kind != "triangle" else int(np.clip(round(side * rng.uniform(0.8, 1.2)),
                                                                min_box_size, height))
            x1 = int(rng.integers(0, width - box_w + 1))
            y1 = int(rng.integers(0, height - box_h + 1))
            box = (x1, y1, x1 + box_w, y1 + box_h)
            if all(_overlap(box, other) <= MAX_OVERLAP for other in boxes):
                break
        else:
            continue  # no room left for this one
        mask = _shape_mask(kind, box, width, height, rng)  # (H, W)
        # The colour farthest from the background under the box, of a few candidates: always visible.
        under = canvas[box[1]:box[3], box[0]:box[2]].reshape(-1, 3).mean(axis=0)
        candidates = rng.uniform(0, 255, size=(8, 3))
        colour = candidates[np.abs(candidates - under).sum(axis=1).argmax()]
        canvas[mask] = colour
        ys, xs = np.nonzero(mask)
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        labels.append(label)
    canvas += rng.normal(0.0, 6.0, size=canvas.shape)
    image = np.clip(canvas, 0, 255).round().astype(np.uint8)
    return image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)
