"""Tiny synthetic images with known boxes, for detector-level tests (no files, no dataset code)."""

from __future__ import annotations

import torch

# (label, box) per image; label 1 = red rectangle, 2 = green rectangle
SCENES = [
    [(1, (12.0, 16.0, 60.0, 56.0)), (2, (70.0, 60.0, 116.0, 112.0))],
    [(2, (20.0, 70.0, 64.0, 120.0)), (1, (72.0, 8.0, 120.0, 52.0)), (1, (30.0, 20.0, 58.0, 44.0))],
]
COLOURS = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.85, 0.2)}


def make_scene(objects, size=128, seed=0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    image = 0.35 + 0.15 * torch.rand(3, size, size, generator=g)  # textured grey background
    for label, (x1, y1, x2, y2) in objects:
        image[:, int(y1) : int(y2), int(x1) : int(x2)] = torch.tensor(COLOURS[label])[:, None, None]
    target = {
        "boxes": torch.tensor([box for _, box in objects], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([label for label, _ in objects], dtype=torch.int64),
    }
    return image, target


def batch(n: int = 2):
    scenes = [make_scene(SCENES[i % len(SCENES)], seed=i) for i in range(n)]
    return [s[0] for s in scenes], [s[1] for s in scenes]
