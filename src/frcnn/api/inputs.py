"""What ``Detector.predict`` accepts, turned into the model's input: (3, H, W) float32 RGB in [0, 1].

- a path (``str`` or ``Path``): decoded as displayed (EXIF orientation applied), like predict.py;
- a PIL image: its pixels as they are in the object (any mode: converted to RGB, alpha dropped);
- a numpy array (H, W, 3) uint8 RGB;
- a tensor (3, H, W): uint8, or float in [0, 1].
Anything else, or a wrong shape, dtype or value range, raises a ``TypeError`` / ``ValueError`` that
says what was given and what is expected: never a silently wrong box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from frcnn.data import image_to_tensor, read_image
from frcnn.data.decode import to_rgb

ImageInput = Union[str, Path, Image.Image, np.ndarray, Tensor]  # noqa: UP007 (a runtime alias, py3.10)


def is_batch(x: Any) -> bool:
    """A list or tuple of images (as opposed to one image)."""
    return isinstance(x, (list, tuple))


def to_image_tensor(x: ImageInput) -> Tensor:
    """One image -> (3, H, W) float32 in [0, 1] on the CPU."""
    if isinstance(x, (str, Path)):
        pixels, _ = read_image(x)  # (H, W, 3) uint8; raises ImageDecodeError naming the file
        return image_to_tensor(pixels)
    if isinstance(x, Image.Image):
        return image_to_tensor(to_rgb(x))
    if isinstance(x, np.ndarray):
        return _from_numpy(x)
    if isinstance(x, Tensor):
        return _from_tensor(x)
    raise TypeError(f"cannot predict on a {type(x).__name__}: give a path, a PIL image, an (H, W, 3) uint8 "
                    "numpy array or a (3, H, W) tensor (or a list of them)")


def _from_numpy(array: np.ndarray) -> Tensor:
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"a numpy image must be (H, W, 3) RGB, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"a numpy image must be uint8 (0..255), got {array.dtype}; "
                         "a float image goes in as a (3, H, W) tensor in [0, 1]")
    _check_size(array.shape[0], array.shape[1])
    return image_to_tensor(np.ascontiguousarray(array))


def _from_tensor(tensor: Tensor) -> Tensor:
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"a tensor image must be (3, H, W), got shape {tuple(tensor.shape)} "
                         "(an (H, W, 3) array goes in as numpy uint8)")
    _check_size(tensor.shape[1], tensor.shape[2])
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    if not tensor.is_floating_point():
        raise ValueError(f"a tensor image must be uint8 or float in [0, 1], got {tensor.dtype}")
    low, high = float(tensor.min()), float(tensor.max())
    if not (0.0 <= low and high <= 1.0):  # also catches NaN
        raise ValueError(f"a float tensor image must hold values in [0, 1], got [{low:g}, {high:g}] "
                         "(uint8 0..255 goes in as a uint8 tensor)")
    return tensor.float()


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"an image must have pixels, got {height} x {width}")
