"""The page's example images: synthetic shapes drawn by ``frcnn.data.shapes.render_image`` from fixed
seeds, so they can be rebuilt at any time: ``python -m frcnn.serving.examples``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from frcnn.data.shapes import render_image

FOLDER = Path(__file__).resolve().parent / "static" / "examples"
EXAMPLES = {"shapes_1.jpg": (11, 320, 240, 3), "shapes_2.jpg": (12, 240, 320, 4), "shapes_3.jpg": (13, 400, 300, 2)}


def example_pixels(seed: int, width: int, height: int, num_objects: int) -> np.ndarray:
    """(H, W, 3) uint8: one shapes image, the same for the same arguments."""
    image, _, _ = render_image(np.random.default_rng(seed), width, height, num_objects, 24, 0.5)
    return image


def write_examples(folder: Path = FOLDER) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, args in EXAMPLES.items():
        path = folder / name
        Image.fromarray(example_pixels(*args)).save(path, quality=92)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_examples():
        print(written)
