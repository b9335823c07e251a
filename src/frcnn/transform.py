"""Input transform: resize, normalise, batch with padding; and mapping detections back.

This is the one place where images are resized (see docs/contracts.md): the data pipeline hands
over images at their own resolution, and detections come back in that resolution's pixels.

Shape shorthand: N images, (h_i, w_i) an input image, (h'_i, w'_i) after resizing, (H, W) padded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InputTransform(nn.Module):
    """Resize by min / max side, normalise, pad the batch to a multiple of the stride.

    Args:
        min_size: target length of the shorter side (the seed: 600). A list picks one at random
            per image in training (multi-scale training); evaluation uses the last.
        max_size: cap on the longer side (the seed: 1000); it wins when the two disagree.
        size_divisible: the padded batch is a multiple of this (the backbone's stride when None,
            so the feature map tiles the batch exactly).
        image_mean, image_std: per-channel statistics of the backbone's pretraining (filled in from
            the backbone by the detector when None).
    """

    def __init__(
        self,
        min_size: int | Sequence[int] = 600,
        max_size: int = 1000,
        size_divisible: int | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.min_size = (int(min_size),) if isinstance(min_size, int | float) else tuple(int(s) for s in min_size)
        self.max_size = int(max_size)
        self.size_divisible = size_divisible
        self.image_mean = tuple(image_mean) if image_mean is not None else None
        self.image_std = tuple(image_std) if image_std is not None else None

    def _target_min_size(self) -> int:
        if self.training and len(self.min_size) > 1:
            return self.min_size[int(torch.randint(len(self.min_size), (1,)))]
        return self.min_size[-1]

    def resize(self, image: Tensor, target_min: int) -> Tensor:
        """(3, h, w) -> (3, h', w') with the shorter side ``target_min`` unless the longer exceeds max."""
        h, w = image.shape[-2:]
        scale = min(target_min / min(h, w), self.max_size / max(h, w))
        if scale == 1.0:
            return image
        return F.interpolate(
            image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
        )[0]

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> tuple[Tensor, list[tuple[int, int]], list[dict[str, Tensor]] | None]:
        """images (3, h_i, w_i) float in [0, 1] (uint8 is accepted and scaled) ->
        (batch (N, 3, H, W), resized sizes [(h'_i, w'_i)], targets with boxes in resized pixels)."""
        if self.image_mean is None or self.image_std is None or self.size_divisible is None:
            raise RuntimeError("InputTransform needs image_mean, image_std and size_divisible (set by the detector)")
        if len(images) == 0:
            raise ValueError("the model got an empty list of images")
        device = images[0].device
        mean = torch.tensor(self.image_mean, device=device)[:, None, None]
        std = torch.tensor(self.image_std, device=device)[:, None, None]
        resized, sizes, out_targets = [], [], []
        for i, image in enumerate(images):  # images differ in size: a loop over images
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"image {i} must be a (3, H, W) tensor, got shape {tuple(image.shape)}")
            if image.dtype == torch.uint8:
                image = image.float() / 255.0
            image = self.resize((image.float() - mean) / std, self._target_min_size())
            resized.append(image)
            sizes.append((image.shape[-2], image.shape[-1]))
            if targets is not None:
                target = dict(targets[i])
                h, w = images[i].shape[-2:]
                ratio = torch.tensor(
                    [image.shape[-1] / w, image.shape[-2] / h] * 2, dtype=torch.float32, device=device
                )
                target["boxes"] = target["boxes"].float() * ratio
                out_targets.append(target)
        d = self.size_divisible
        H = int(math.ceil(max(s[0] for s in sizes) / d) * d)
        W = int(math.ceil(max(s[1] for s in sizes) / d) * d)
        batch = resized[0].new_zeros((len(resized), 3, H, W))
        for i, image in enumerate(resized):
            batch[i, :, : image.shape[-2], : image.shape[-1]] = image
        return batch, sizes, (out_targets if targets is not None else None)

    @staticmethod
    def map_back(boxes: Tensor, resized_size: tuple[int, int], original_size: tuple[int, int]) -> Tensor:
        """boxes (D, 4) in the resized image's pixels -> (D, 4) in the original image's pixels."""
        ratio_h = original_size[0] / resized_size[0]
        ratio_w = original_size[1] / resized_size[1]
        return boxes * torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h], dtype=boxes.dtype, device=boxes.device)
