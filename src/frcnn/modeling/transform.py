"""Input transform: resize, normalise, batch with padding; and mapping boxes back.

This is the one place where the resize rule lives (docs/contracts.md): the data pipeline hands
over images at their own resolution, and detections come back in that resolution's pixels. The
data pipeline's optional resize and the anchor coverage tool use the same rule (``resized_size``).

Shape shorthand: N images, (h_i, w_i) an input image, (h'_i, w'_i) after resizing, (H, W) padded.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The resize rule: the shorter side becomes ``min_size`` unless the longer would exceed ``max_size``."""
    return min(min_size / min(height, width), max_size / max(height, width))


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The (h', w') the model resizes a (height, width) image to: ``floor(side * scale)`` with the
    scale of ``resize_scale`` taken as the exact fraction ``min_size / short`` or ``max_size / long``,
    in integers. A float product can land just below the integer it should be (600 / 333 * 333 is
    599.99... in double), which would leave the governing side a pixel short, and differently so in
    float32 and float64 (an exported graph, OpenVINO): integers make the size the same everywhere.
    Each side takes the smaller of its two candidates: the smaller scale is the same for both."""
    short, long = min(height, width), max(height, width)
    return tuple(min(side * min_size // short, side * max_size // long) for side in (height, width))


def resize_image(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """(3, h, w) -> (3, h', w'), bilinear, to ``resized_size``; the image itself when that is its size."""
    size = resized_size(image.shape[-2], image.shape[-1], min_size, max_size)
    if size == tuple(image.shape[-2:]):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


@dataclass
class ImageBatch:
    """A batch as the backbone sees it.

    tensor: (N, 3, H, W) normalised, zero-padded to a multiple of the stride (None once taken);
    image_sizes: (h'_i, w'_i) of each resized image inside it; original_sizes: (h_i, w_i) given;
    padded_size: (H, W); targets: the targets with boxes in resized pixels (None without targets).
    """

    tensor: Tensor | None
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    padded_size: tuple[int, int]
    targets: list[dict[str, Tensor]] | None = None

    def take_tensor(self) -> Tensor:
        """The padded tensor, handed over: the batch keeps only its sizes and targets, so the input
        (N * 3 * H * W floats) is freed once the backbone is done with it, not at the end of the forward."""
        tensor, self.tensor = self.tensor, None
        if tensor is None:
            raise RuntimeError("the batch's tensor was already taken")
        return tensor

    def to_original(self, boxes_per_image: Sequence[Tensor]) -> list[Tensor]:
        """Per image boxes (D_i, 4) in resized pixels -> (D_i, 4) in the original image's pixels."""
        return [
            map_back(boxes, size, original)
            for boxes, size, original in zip(boxes_per_image, self.image_sizes, self.original_sizes, strict=True)
        ]


def map_back(boxes: Tensor, resized: tuple[int, int], original: tuple[int, int]) -> Tensor:
    """boxes (D, 4) in the resized image's pixels -> (D, 4) in the original image's pixels."""
    ratio_h = original[0] / resized[0]
    ratio_w = original[1] / resized[1]
    return boxes * torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h], dtype=boxes.dtype, device=boxes.device)


class InputTransform(nn.Module):
    """Resize by min / max side, normalise, pad the batch to a multiple of the stride.

    A detector builds its transform by calling the configured factory with its backbone
    (``InputTransform(min_size, max_size, backbone=backbone)``); values left None come from it.

    Args:
        min_size: target length of the shorter side (the seed: 600). A list is multi-scale
            training: each training batch is resized to one of them, drawn by ``size_seed``.
        max_size: cap on the longer side (the seed: 1000); it wins when the two disagree.
        test_min_size: the shorter side in evaluation (None: the last of ``min_size``).
        size_seed: seed of the multi-scale draw, a generator of its own: the sizes depend on the
            seed and the step only (not on the RPN's sampling), and every DDP rank draws the same.
        size_divisible: the padded batch is a multiple of this (None: the backbone's
            ``size_divisible`` (an FPN's 32), else its stride, so the feature map tiles the batch).
        image_mean, image_std: per-channel statistics of the backbone's pretraining (None: the
            backbone's).
        backbone: where the values left None come from; not kept.
    """

    def __init__(
        self,
        min_size: int | Sequence[int] = 600,
        max_size: int = 1000,
        size_divisible: int | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        backbone: nn.Module | None = None,
        test_min_size: int | None = None,
        size_seed: int = 0,
    ) -> None:
        super().__init__()
        if backbone is not None:
            size_divisible = size_divisible or getattr(backbone, "size_divisible", None) or backbone.stride
            image_mean = image_mean if image_mean is not None else backbone.image_mean
            image_std = image_std if image_std is not None else backbone.image_std
        if size_divisible is None or image_mean is None or image_std is None:
            raise ValueError("InputTransform needs size_divisible, image_mean and image_std, or a backbone to take them from")
        self.min_size = (int(min_size),) if isinstance(min_size, int | float) else tuple(int(s) for s in min_size)
        self.test_min_size = int(test_min_size) if test_min_size is not None else self.min_size[-1]
        self.max_size = int(max_size)
        self.size_divisible = int(size_divisible)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.size_generator = torch.Generator().manual_seed(int(size_seed))

    def draw_min_size(self) -> int:
        """The shorter side for the next batch: in training one of ``min_size`` (uniformly, from the
        transform's own generator), in evaluation ``test_min_size``."""
        if self.training and len(self.min_size) > 1:
            return self.min_size[int(torch.randint(len(self.min_size), (1,), generator=self.size_generator))]
        return self.min_size[0] if self.training else self.test_min_size

    @contextlib.contextmanager
    def evaluated_at(self, min_size: int) -> Iterator[None]:
        """Evaluate at shorter side ``min_size`` inside the block (test-time augmentation's scales)."""
        saved, self.test_min_size = self.test_min_size, int(min_size)
        try:
            yield
        finally:
            self.test_min_size = saved

    def resize(self, image: Tensor, target_min: int) -> Tensor:
        """(3, h, w) -> (3, h', w'): ``resize_image`` to this transform's sizes."""
        return resize_image(image, target_min, self.max_size)

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None) -> ImageBatch:
        """images (3, h_i, w_i) float in [0, 1] (uint8 is accepted and scaled) -> ``ImageBatch``."""
        if len(images) == 0:
            raise ValueError("the model got an empty list of images")
        device = images[0].device
        mean = torch.tensor(self.image_mean, device=device)[:, None, None]
        std = torch.tensor(self.image_std, device=device)[:, None, None]
        resized, sizes, out_targets = [], [], []
        target_min = self.draw_min_size()  # one size per batch: the batch pads to one scale
        for i, image in enumerate(images):  # images differ in size: a loop over images
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"image {i} must be a (3, H, W) tensor, got shape {tuple(image.shape)}")
            if image.dtype == torch.uint8:
                image = image.float() / 255.0
            image = self.resize((image.float() - mean) / std, target_min)
            resized.append(image)
            sizes.append((image.shape[-2], image.shape[-1]))
            if targets is not None:
                target = dict(targets[i])
                h, w = images[i].shape[-2:]
                ratio = torch.tensor([image.shape[-1] / w, image.shape[-2] / h] * 2, dtype=torch.float32, device=device)
                target["boxes"] = target["boxes"].float() * ratio
                out_targets.append(target)
        d = self.size_divisible
        H = int(math.ceil(max(s[0] for s in sizes) / d) * d)
        W = int(math.ceil(max(s[1] for s in sizes) / d) * d)
        batch = resized[0].new_zeros((len(resized), 3, H, W))
        for i, image in enumerate(resized):
            batch[i, :, : image.shape[-2], : image.shape[-1]] = image
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        return ImageBatch(batch, sizes, original_sizes, (H, W), out_targets if targets is not None else None)
