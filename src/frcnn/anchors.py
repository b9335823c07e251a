"""Anchors: sizes x aspect ratios placed on the stride grid of the feature map, in image pixels.

Shape shorthand: Hf, Wf feature map size; A = len(sizes) * len(aspect_ratios) anchors per location.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class AnchorGenerator(nn.Module):
    """The seed's anchors: every (size, ratio) pair centred on every feature-map location.

    Args:
        sizes: anchor side lengths in pixels (sqrt of the area). Default 64..512: the seed's
            example 64/128/256 plus the paper's 512, which objects of a 600-1000 px image need.
        aspect_ratios: height / width of each anchor (0.5 is a wide box, 2.0 a tall one).
        offset: where in its stride cell an anchor is centred: 0.0 puts the centre of the anchors
            of feature cell (i, j) at image pixel (j * stride, i * stride) as torchvision and
            Detectron do; 0.5 at the cell centre.

    The stride is read off the shapes: ``image_size // feature_size`` (the input transform pads the
    batch to a multiple of the stride, so this is exact). Base anchors are rounded to whole pixels,
    as torchvision's are, so the same weights see the same anchors in both.

    Anchors are ordered location-major (row, then column), then ratio, then size: index
    ``((i * Wf + j) * len(aspect_ratios) + r) * len(sizes) + s``, the order in which the RPN head's
    ``(N, A, Hf, Wf)`` outputs are flattened.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        self.sizes = tuple(float(s) for s in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.offset = float(offset)
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.sizes) * len(self.aspect_ratios)

    def base_anchors(self) -> Tensor:
        """-> (A, 4) float32 anchors centred at (0, 0)."""
        sizes = torch.tensor(self.sizes, dtype=torch.float32)
        ratios = torch.tensor(self.aspect_ratios, dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1.0 / h_ratios
        ws = (w_ratios[:, None] * sizes[None, :]).reshape(-1)  # (R, S) -> (A,)
        hs = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
        return (torch.stack((-ws, -hs, ws, hs), dim=1) / 2).round()

    def grid_anchors(self, feature_size: tuple[int, int], stride: tuple[int, int], device: torch.device) -> Tensor:
        """-> (Hf * Wf * A, 4) float32 anchors in image pixels; cached per size, stride and device."""
        key = (tuple(feature_size), tuple(stride), str(device))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        Hf, Wf = feature_size
        sy, sx = stride
        ys = (torch.arange(Hf, dtype=torch.float32, device=device) + self.offset) * sy
        xs = (torch.arange(Wf, dtype=torch.float32, device=device) + self.offset) * sx
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (Hf, Wf)
        shifts = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)  # (Hf*Wf, 1, 4)
        anchors = (shifts + self.base_anchors().to(device)[None]).reshape(-1, 4)  # (Hf*Wf*A, 4)
        if len(self._cache) > 64:  # many distinct image sizes: keep memory bounded
            self._cache.clear()
        self._cache[key] = anchors
        return anchors

    def forward(self, feature_map: Tensor, padded_image_size: tuple[int, int]) -> Tensor:
        """feature_map (N, C, Hf, Wf), padded batch size (H, W) -> anchors (Hf * Wf * A, 4).

        All images of a padded batch share one anchor set.
        """
        Hf, Wf = feature_map.shape[-2:]
        H, W = padded_image_size
        return self.grid_anchors((Hf, Wf), (H // Hf, W // Wf), feature_map.device)
