"""Anchors: sizes x aspect ratios placed on the stride grid of each feature map, in image pixels.

Shape shorthand: Hf, Wf feature map size; A = len(sizes) * len(aspect_ratios) anchors per location;
L feature levels (1 for the seed's single map, 5 for ResNet-50-FPN); M_l anchors of level l.
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
            Either one list used on every level, or one list per level (``[[32], [64], [128],
            [256], [512]]``: FPN's one size per level). The RPN head is shared by all levels, so
            every level needs the same number of sizes.
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
        sizes: Sequence[float] | Sequence[Sequence[float]] = (64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(sizes, str) or isinstance(aspect_ratios, str):
            raise ValueError(f"anchor sizes / aspect_ratios must be numbers, got {sizes!r} / {aspect_ratios!r}: 'auto' is "
                             "fitted to the training boxes by src/train.py before the model is built")
        if len(sizes) == 0:
            raise ValueError("AnchorGenerator needs at least one size")
        self.per_level = isinstance(sizes[0], Sequence)
        # A flat tuple of floats, or (per_level) a tuple of them per level, as given.
        self.sizes = (
            tuple(tuple(float(s) for s in level) for level in sizes) if self.per_level else tuple(float(s) for s in sizes)
        )
        if self.per_level and len({len(level) for level in self.sizes}) != 1:
            raise ValueError(
                f"every feature level needs the same number of anchor sizes (the RPN head is shared), got {sizes}"
            )
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.offset = float(offset)
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.level_sizes(0)) * len(self.aspect_ratios)

    def level_sizes(self, level: int) -> tuple[float, ...]:
        """The anchor sizes of feature level ``level`` (0 = the finest)."""
        if not self.per_level:
            return self.sizes
        if not 0 <= level < len(self.sizes):
            raise ValueError(f"anchor sizes are given for {len(self.sizes)} feature level(s), not for level {level}")
        return self.sizes[level]

    def base_anchors(self, level: int = 0) -> Tensor:
        """-> (A, 4) float32 anchors of level ``level`` centred at (0, 0)."""
        sizes = torch.tensor(self.level_sizes(level), dtype=torch.float32)
        ratios = torch.tensor(self.aspect_ratios, dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1.0 / h_ratios
        ws = (w_ratios[:, None] * sizes[None, :]).reshape(-1)  # (R, S) -> (A,)
        hs = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
        return (torch.stack((-ws, -hs, ws, hs), dim=1) / 2).round()

    def grid_anchors(
        self, feature_size: tuple[int, int], stride: tuple[int, int], device: torch.device, level: int = 0
    ) -> Tensor:
        """-> (Hf * Wf * A, 4) float32 anchors in image pixels; cached per size, stride, device and level."""
        key = (tuple(feature_size), tuple(stride), str(device), level)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        Hf, Wf = feature_size
        sy, sx = stride
        ys = (torch.arange(Hf, dtype=torch.float32, device=device) + self.offset) * sy
        xs = (torch.arange(Wf, dtype=torch.float32, device=device) + self.offset) * sx
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (Hf, Wf)
        shifts = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)  # (Hf*Wf, 1, 4)
        anchors = (shifts + self.base_anchors(level).to(device)[None]).reshape(-1, 4)  # (Hf*Wf*A, 4)
        if len(self._cache) > 64:  # many distinct image sizes: keep memory bounded
            self._cache.clear()
        self._cache[key] = anchors
        return anchors

    def forward(
        self, feature_maps: Tensor | Sequence[Tensor], padded_image_size: tuple[int, int]
    ) -> Tensor | list[Tensor]:
        """feature map (N, C, Hf, Wf), padded batch size (H, W) -> anchors (Hf * Wf * A, 4); or a list
        of L maps (finest first) -> a list of L anchor sets (M_l, 4).

        All images of a padded batch share one anchor set. A level's stride is ``H // Hf`` as in
        torchvision, also where the last level of a pyramid does not tile the batch exactly.
        """
        maps = [feature_maps] if isinstance(feature_maps, Tensor) else list(feature_maps)
        if self.per_level and len(maps) != len(self.sizes):
            raise ValueError(
                f"anchor sizes are given for {len(self.sizes)} feature level(s), the backbone gives {len(feature_maps)}"
            )
        anchors = [self._level_anchors(f, padded_image_size, level) for level, f in enumerate(maps)]
        return anchors[0] if isinstance(feature_maps, Tensor) else anchors

    def _level_anchors(self, feature_map: Tensor, padded_image_size: tuple[int, int], level: int) -> Tensor:
        Hf, Wf = feature_map.shape[-2:]
        H, W = padded_image_size
        return self.grid_anchors((Hf, Wf), (H // Hf, W // Wf), feature_map.device, level)
