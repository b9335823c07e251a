"""RoI pooling: a fixed-size feature map for every proposal.

Shape shorthand: N images, C channels, Hf, Wf feature size, R RoIs over the batch, S output side.

Feature-map coordinates: cell (i, j) of a stride-s map covers image pixels [j*s, (j+1)*s), so its
centre, image x = (j + 0.5) * s, is feature *index* j. Image x therefore maps to index x / s - 0.5
(the "aligned" convention of RoIAlign).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_pool

from frcnn.roi_sample import crop_and_resize, roi_align


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
    The bilinear methods run on ``frcnn.roi_sample``, equal to torchvision's RoIAlign in value.
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

    def forward(self, features: Tensor, boxes_per_image: Sequence[Tensor], stride: int) -> Tensor:
        """features (N, C, Hf, Wf), boxes per image (R_i, 4) in image pixels -> (R, C, S, S)."""
        rois = boxes_to_rois(boxes_per_image).to(features.dtype)  # (R, 5)
        S = self.output_size
        if self.method == "roi_align":
            return roi_align(features, rois, S, 1.0 / stride, self.sampling_ratio, self.aligned)
        if self.method == "roi_pool":
            return roi_pool(features, rois, (S, S), 1.0 / stride)
        index_rois = torch.cat((rois[:, :1], rois[:, 1:] / stride - 0.5), dim=1)  # image px -> index
        return F.max_pool2d(crop_and_resize(features, index_rois, 2 * S), kernel_size=2, stride=2)
