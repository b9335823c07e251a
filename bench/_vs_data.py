"""The benchmark's inputs: seeded synthetic images with boxes, the same for both models.

Boxes follow docs/contracts.md: (G, 4) float32 x1, y1, x2, y2 pixels; labels (G,) int64 in 1..K.
"""

from __future__ import annotations

import torch
from torch import Tensor

NUM_CLASSES = 20
IMAGES_PER_STEP = 2


def synthetic_image(size: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """-> image (3, size, size) in [0, 1], boxes (G, 4) xyxy pixels, labels (G,) in 1..K; G in 3..5.

    Each box is a filled rectangle of its own colour on a smooth gradient, so the backbone sees
    edges where the boxes are."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    image = 0.3 + 0.4 * (torch.rand(3, 1, 1, generator=g) * ramp[None, :, None] + 0.2 * ramp[None, None, :])
    image = image.expand(3, size, size).clone()
    num = int(torch.randint(3, 6, (), generator=g))
    wh = (0.1 + 0.4 * torch.rand(num, 2, generator=g)) * size
    xy = torch.rand(num, 2, generator=g) * (size - wh)
    boxes = torch.cat([xy, xy + wh], dim=1).round()
    for x1, y1, x2, y2 in boxes.long().tolist():
        image[:, y1:y2, x1:x2] = torch.rand(3, 1, 1, generator=g)
    image += 0.02 * torch.randn(image.shape, generator=g)
    labels = torch.randint(1, NUM_CLASSES + 1, (num,), generator=g)
    return image.clamp(0, 1), boxes, labels


def batch(size: int, step: int, device: torch.device) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """The seeded batch of step ``step``: the same for both models."""
    images, targets = [], []
    for i in range(IMAGES_PER_STEP):
        image, boxes, labels = synthetic_image(size, 1000 + IMAGES_PER_STEP * step + i)
        images.append(image.to(device))
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets
