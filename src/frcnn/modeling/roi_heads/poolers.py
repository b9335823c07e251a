"""RoI pooling: a fixed-size feature map for every proposal, from one map or from a pyramid.

Shape shorthand: N images, C channels, Hf, Wf feature size, R RoIs over the batch, S output side.

Feature-map coordinates: cell (i, j) of a stride-s map covers image pixels [j*s, (j+1)*s), so its
centre, image x = (j + 0.5) * s, is feature *index* j. Image x therefore maps to index x / s - 0.5
(the "aligned" convention of RoIAlign).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_pool

from frcnn.layers.roi_align import crop_and_resize, roi_align

# Inference: the most bytes a multi-level pooler's per-call result takes (``MultiLevelRoIPooler``).
POOL_CHUNK_BYTES = 4 * 2**20


def boxes_to_rois(boxes_per_image: Sequence[Tensor]) -> Tensor:
    """Per image boxes (R_i, 4) -> (R, 5) rows ``(batch_index, x1, y1, x2, y2)``."""
    index = torch.cat(
        [torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes_per_image)]
    )
    return torch.cat((index, torch.cat(list(boxes_per_image))), dim=1)


class RoIPooler(nn.Module):
    """Selectable RoI pooling of image-pixel boxes from a stride-``s`` feature map.

    Methods:
        ``crop_and_resize`` (the seed's): bilinear crop to ``2 * output_size`` squared, then 2x2 max
            pool to ``output_size`` (14x14 -> 7x7 by default).
        ``roi_align``: RoIAlign to ``output_size`` with ``sampling_ratio``^2 samples per bin
            (``aligned`` as in torchvision; False reproduces torchvision's detection models).
        ``roi_pool``: the original Fast R-CNN RoI max pooling (torchvision's kernel).
    The bilinear methods run on ``frcnn.layers.roi_align``: equal to torchvision's RoIAlign in value, and
    several times faster forward and backward on a CPU.
    """

    METHODS = ("crop_and_resize", "roi_align", "roi_pool")

    def __init__(
        self, method: str = "crop_and_resize", output_size: int = 7, sampling_ratio: int = 2, aligned: bool = True
    ) -> None:
        super().__init__()
        if method not in self.METHODS:
            raise ValueError(f"unknown RoI pooling method {method!r}; choose one of {self.METHODS}")
        self.method = method
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def forward(
        self, features: Tensor, boxes_per_image: Sequence[Tensor], stride: int,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> Tensor:
        """features (N, C, Hf, Wf), boxes per image (R_i, 4) in image pixels -> (R, C, S, S)."""
        return self.pool_rois(features, boxes_to_rois(boxes_per_image), stride, memory_format)

    def pool_rois(
        self, features: Tensor, rois: Tensor, stride: int, memory_format: torch.memory_format = torch.contiguous_format
    ) -> Tensor:
        """features (N, C, Hf, Wf), rois (R, 5) ``(batch_index, x1, y1, x2, y2)`` in image pixels
        -> (R, C, S, S) in ``memory_format`` (what the box head's convolutions want: the head's
        ``input_memory_format``)."""
        # Boxes stay float32 under mixed precision (bfloat16 would move a 500 px coordinate by up to 2 px);
        # float64 features (gradient checks) get float64 RoIs.
        rois = rois.to(torch.promote_types(features.dtype, torch.float32))
        S = self.output_size
        if self.method == "roi_align":
            return roi_align(features, rois, S, 1.0 / stride, self.sampling_ratio, self.aligned, memory_format=memory_format)
        if self.method == "roi_pool":  # torchvision's kernel wants one dtype for both
            pooled = roi_pool(features.to(rois.dtype), rois, (S, S), 1.0 / stride).to(features.dtype)
            return pooled.contiguous(memory_format=memory_format)
        index_rois = torch.cat((rois[:, :1], rois[:, 1:] / stride - 0.5), dim=1)  # image px -> index
        crops = crop_and_resize(features, index_rois, 2 * S, memory_format)
        return F.max_pool2d(crops, kernel_size=2, stride=2).contiguous(memory_format=memory_format)


def fpn_levels(
    boxes: Tensor, k_min: int, k_max: int, canonical_size: float = 224.0, canonical_level: int = 4, eps: float = 1e-6
) -> Tensor:
    """boxes (R, 4) -> (R,) int64 index of the pyramid level to pool each from, 0 = level ``k_min``.

    The FPN paper's eq. 1: ``k = floor(canonical_level + log2(sqrt(area) / canonical_size))``,
    clamped to [k_min, k_max], where level k has stride 2^k: a 224 px box (ImageNet's object size)
    goes to level 4 (stride 16), a box half as large one level finer. Written with torchvision's
    operations (``LevelMapper``, eps included) so that boundary boxes land on the same level.
    """
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    k = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_size) + torch.tensor(eps, dtype=area.dtype))
    return (torch.clamp(k, min=k_min, max=k_max).to(torch.int64) - k_min).to(torch.int64)


class MultiLevelRoIPooler(nn.Module):
    """FPN RoI pooling: each RoI is pooled, by a ``RoIPooler``, from the one level its size selects.

    Args:
        method, output_size, sampling_ratio, aligned: the per-level ``RoIPooler``. The defaults
            (RoIAlign, 7x7, 2x2 samples per bin, ``aligned=False``) are torchvision's
            ``MultiScaleRoIAlign``, which its COCO checkpoints were trained with.
        featmap_names: the maps RoIs are pooled from, out of the backbone's (a ResNet FPN gives
            "0".."3" at strides 4..32 and "pool", which only the RPN uses; names missing from the
            backbone's maps are skipped, as in torchvision, so MobileNetV3's "0", "1" also fit).
        canonical_size, canonical_level: see ``fpn_levels``.

    The level range comes from the strides of the pooled maps: k_min = log2 of the finest, k_max of
    the coarsest. A single map (the seed's design) is pooled as ``RoIPooler`` would.
    """

    def __init__(
        self,
        method: str = "roi_align",
        output_size: int = 7,
        sampling_ratio: int = 2,
        aligned: bool = False,
        featmap_names: Sequence[str] = ("0", "1", "2", "3"),
        canonical_size: float = 224.0,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        self.pooler = RoIPooler(method, output_size, sampling_ratio, aligned)
        self.featmap_names = tuple(str(name) for name in featmap_names)
        self.canonical_size = float(canonical_size)
        self.canonical_level = int(canonical_level)

    @property
    def output_size(self) -> int:
        return self.pooler.output_size

    def forward(
        self,
        features: Tensor | Mapping[str, Tensor],
        boxes_per_image: Sequence[Tensor],
        strides: int | Mapping[str, int],
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> Tensor:
        """features {name: (N, C, Hl, Wl)} with strides {name: s_l}, boxes per image (R_i, 4) in image
        pixels -> (R, C, S, S) in ``memory_format``."""
        if isinstance(features, Tensor):
            return self.pooler(features, boxes_per_image, int(strides), memory_format)
        names = [name for name in features if name in self.featmap_names]
        if not names:
            raise ValueError(f"none of the backbone's maps {list(features)} is in featmap_names {self.featmap_names}")
        rois = boxes_to_rois(boxes_per_image)  # (R, 5)
        if len(names) == 1:
            return self.pooler.pool_rois(features[names[0]], rois, strides[names[0]], memory_format)
        k_min, k_max = (int(round(math.log2(strides[name]))) for name in (names[0], names[-1]))
        if k_max - k_min + 1 > len(names):
            raise ValueError(f"pooled maps {names} at strides {[strides[n] for n in names]} skip a pyramid level")
        levels = fpn_levels(rois[:, 1:], k_min, k_max, self.canonical_size, self.canonical_level)  # (R,)
        first = features[names[0]]
        S = self.output_size
        out = torch.empty((rois.shape[0], first.shape[1], S, S), dtype=first.dtype, device=first.device,
                          memory_format=memory_format).zero_()
        # Without autograd each level is pooled in chunks of RoIs, so no level-sized result sits beside
        # ``out`` (at test time most RoIs pool from one level: that was ~40 % of FPN inference's memory
        # peak). With autograd a level is one call: each call's backward makes a map-sized gradient.
        # Traced / compiled graphs keep one call per level (a loop over data-dependent chunks would be
        # baked in at its traced length).
        chunked = not (
            (torch.is_grad_enabled() and any(features[n].requires_grad for n in names))
            or torch.jit.is_tracing()
            or torch.compiler.is_compiling()
        )
        chunk = max(1, POOL_CHUNK_BYTES // (first.shape[1] * S * S * out.element_size()))
        for level, name in enumerate(names):
            index = torch.where(levels == level)[0]
            for part in index.split(chunk) if chunked else [index]:
                if part.numel():
                    out[part] = self.pooler.pool_rois(features[name], rois[part], strides[name], memory_format).to(out.dtype)
        return out
