"""RoI pooling for the export graph: each ``RoIPooler`` / ``MultiLevelRoIPooler`` method written
with torchvision's operators, which the ONNX exporter maps to ONNX ``RoiAlign`` / ``MaxRoiPool``.

Shape shorthand: R RoIs over the batch, C channels, S output side.

The eager poolers run ``frcnn.roi_sample`` (a sparse product, equal in value to torchvision's
RoIAlign but not exportable); the geometry here is theirs line for line: the same spatial scale,
the same widened boxes of crop-and-resize, the same FPN level of each RoI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align, roi_pool

from frcnn.modeling.roi_heads.poolers import MultiLevelRoIPooler, RoIPooler, fpn_levels


def pool_single(pooler: RoIPooler, features: Tensor, rois: Tensor, stride: int) -> Tensor:
    """features (N, C, Hf, Wf), rois (R, 5) ``(batch_index, x1, y1, x2, y2)`` in image pixels ->
    (R, C, S, S), as ``RoIPooler.pool_rois`` computes it."""
    rois = rois.to(features.dtype)
    S = pooler.output_size
    if pooler.method == "roi_align":
        return roi_align(features, rois, S, 1.0 / stride, pooler.sampling_ratio, pooler.aligned)
    if pooler.method == "roi_pool":
        return roi_pool(features, rois, (S, S), 1.0 / stride)
    # crop_and_resize: image px -> feature index, then RoIAlign with one centred sample per bin on
    # the box widened by half a step (frcnn.roi_sample.crop_and_resize), then 2x2 max pool
    index_rois = torch.cat((rois[:, :1], rois[:, 1:] / stride - 0.5), dim=1)
    n = 2 * S
    size = index_rois[:, 3:5] - index_rois[:, 1:3]  # (R, 2) as (w, h)
    start = index_rois[:, 1:3] + 0.5 - size / (2 * (n - 1))
    widened = torch.cat((index_rois[:, :1], start, start + size * (n / (n - 1))), dim=1)
    return F.max_pool2d(roi_align(features, widened, n, 1.0, 1, True), kernel_size=2, stride=2)


def pooled_names(pooler: MultiLevelRoIPooler, features: Mapping[str, Tensor], strides: Mapping[str, int]) -> list[str]:
    """The maps ``pooler`` pools from, checked as ``MultiLevelRoIPooler.forward`` checks them."""
    names = [name for name in features if name in pooler.featmap_names]
    if not names:
        raise ValueError(f"none of the backbone's maps {list(features)} is in featmap_names {pooler.featmap_names}")
    k_min, k_max = (int(round(math.log2(strides[name]))) for name in (names[0], names[-1]))
    if k_max - k_min + 1 > len(names):
        raise ValueError(f"pooled maps {names} at strides {[strides[n] for n in names]} skip a pyramid level")
    return names


def pool_rois(pooler, features: Tensor | Mapping[str, Tensor], strides, rois: Tensor) -> Tensor:
    """Any of the project's poolers: features one map (stride an int) or maps by name (strides by
    name), rois (R, 5) -> (R, C, S, S)."""
    if isinstance(pooler, RoIPooler):
        return pool_single(pooler, features, rois, int(strides))
    if not isinstance(pooler, MultiLevelRoIPooler):
        raise TypeError(f"cannot export RoI pooling by {type(pooler).__name__}")
    if isinstance(features, Tensor):
        return pool_single(pooler.pooler, features, rois, int(strides))
    names = pooled_names(pooler, features, strides)
    if len(names) == 1:
        return pool_single(pooler.pooler, features[names[0]], rois, strides[names[0]])
    k_min, k_max = (int(round(math.log2(strides[name]))) for name in (names[0], names[-1]))
    levels = fpn_levels(rois[:, 1:].to(features[names[0]].dtype), k_min, k_max, pooler.canonical_size,
                        pooler.canonical_level)  # (R,)
    first = features[names[0]]
    S = pooler.output_size
    out = first.new_zeros((rois.shape[0], first.shape[1], S, S))
    for level, name in enumerate(names):  # each RoI from its one level; a level may get none
        index = (levels == level).nonzero()[:, 0]
        out = out.index_put((index,), pool_single(pooler.pooler, features[name], rois[index], strides[name]))
    return out
