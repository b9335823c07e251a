"""Boxes: the one convention of this project, and the box coder.

Convention (stated here once, used everywhere):
    A box is ``x1, y1, x2, y2`` in absolute float pixels of the image it belongs to, 0-based with
    pixel *edges* as coordinates: a box covering pixel columns 0..9 has ``x1 = 0, x2 = 10``, so its
    width is ``x2 - x1``. A set of boxes is a float32 tensor of shape ``(N, 4)``.
    Labels are int64: 0 is background, 1..K are the dataset's classes.

Shape shorthand used in this module:
    N: number of boxes;  C: number of box sets per row (class-specific deltas have C = K).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# Largest log-scale change accepted by ``decode``: a box may grow at most 1000/16 times per side
# (the value Detectron and torchvision use). Without it, exp() of an untrained head's output
# overflows to inf and the loss becomes NaN.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes boxes as ``(dx, dy, dw, dh)`` offsets from reference boxes, and decodes them back.

    ``dx = wx * (gx - rx) / rw``, ``dy = wy * (gy - ry) / rh``, ``dw = ww * log(gw / rw)``,
    ``dh = wh * log(gh / rh)`` with centres ``(gx, gy)``, ``(rx, ry)`` and sizes ``gw, rw, ...``.

    Args:
        weights: ``(wx, wy, ww, wh)``, the seed's target normalisation. ``(1, 1, 1, 1)`` for the RPN;
            ``(10, 10, 5, 5)`` for the R-CNN (the inverse of the usual target stds 0.1 / 0.2).
        scale_clamp: upper bound on ``dw, dh`` (after dividing by the weight) before ``exp``.
    """

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"BoxCoder weights must have 4 values, got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def encode(self, reference: Tensor, gt: Tensor) -> Tensor:
        """reference (N, 4), gt (N, 4) -> deltas (N, 4) float32."""
        reference = reference.float()
        gt = gt.float()
        wx, wy, ww, wh = self.weights
        rw = reference[:, 2] - reference[:, 0]
        rh = reference[:, 3] - reference[:, 1]
        rx = reference[:, 0] + 0.5 * rw
        ry = reference[:, 1] + 0.5 * rh
        gw = gt[:, 2] - gt[:, 0]
        gh = gt[:, 3] - gt[:, 1]
        gx = gt[:, 0] + 0.5 * gw
        gy = gt[:, 1] + 0.5 * gh
        return torch.stack(
            (wx * (gx - rx) / rw, wy * (gy - ry) / rh, ww * torch.log(gw / rw), wh * torch.log(gh / rh)),
            dim=1,
        )

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """deltas (N, 4*C), reference (N, 4) -> boxes (N, 4*C) float32.

        Each group of 4 columns is decoded against the same reference box (class-specific
        regression has C = K groups). Computed in float32 whatever the input dtype: under mixed
        precision, exp() of half-precision deltas loses the box sizes.
        """
        deltas = deltas.float()
        reference = reference.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        rw = reference[:, 2] - reference[:, 0]
        rh = reference[:, 3] - reference[:, 1]
        rx = reference[:, 0] + 0.5 * rw
        ry = reference[:, 1] + 0.5 * rh

        dx = deltas[:, 0::4] / wx  # (N, C)
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)

        cx = dx * rw[:, None] + rx[:, None]
        cy = dy * rh[:, None] + ry[:, None]
        w = torch.exp(dw) * rw[:, None]
        h = torch.exp(dh) * rh[:, None]
        boxes = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=2)  # (N, C, 4)
        return boxes.reshape(deltas.shape[0], deltas.shape[1])  # (N, C, 4) -> (N, 4*C)


def clip_boxes(boxes: Tensor, height: int | Tensor, width: int | Tensor) -> Tensor:
    """boxes (..., 4) -> boxes (..., 4) clipped to ``[0, width] x [0, height]``.

    ``height`` / ``width`` may be numbers or tensors broadcastable to ``boxes[..., 0:2]``.
    """
    width = torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device)
    height = torch.as_tensor(height, dtype=boxes.dtype, device=boxes.device)
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), width)
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def box_sizes(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """boxes (N, 4) -> (widths (N,), heights (N,))."""
    return boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]


def validate_targets(
    targets: Sequence[dict[str, Tensor]],
    image_sizes: Sequence[tuple[int, int]],
    num_classes: int,
) -> None:
    """Raises ``ValueError`` naming the image index and the box for any malformed target.

    A target needs ``boxes`` (N, 4) float and ``labels`` (N,) integer in 1..num_classes. A box must
    be finite, have x2 > x1 and y2 > y1, and overlap its image ``(height, width)``. N = 0 is valid:
    an image without objects teaches the model what background looks like.
    """
    if len(targets) != len(image_sizes):
        raise ValueError(f"got {len(image_sizes)} images but {len(targets)} targets")
    for i, (target, (height, width)) in enumerate(zip(targets, image_sizes)):
        if "boxes" not in target or "labels" not in target:
            raise ValueError(f"target of image {i} needs 'boxes' and 'labels', has {sorted(target)}")
        boxes, labels = target["boxes"], target["labels"]
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
            raise ValueError(
                f"image {i}: boxes must be a float (N, 4) tensor, got {tuple(boxes.shape)} {boxes.dtype}"
            )
        if labels.shape != boxes.shape[:1] or labels.is_floating_point():
            raise ValueError(
                f"image {i}: labels must be an integer ({boxes.shape[0]},) tensor, "
                f"got {tuple(labels.shape)} {labels.dtype}"
            )
        if boxes.numel() == 0:
            continue
        bad = ~torch.isfinite(boxes).all(dim=1)
        bad |= (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        bad |= (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) | (boxes[:, 0] >= width) | (boxes[:, 1] >= height)
        if bad.any():
            j = int(bad.nonzero()[0])
            why = (
                "is not finite"
                if not torch.isfinite(boxes[j]).all()
                else "has x2 <= x1 or y2 <= y1"
                if (boxes[j, 2] <= boxes[j, 0]) or (boxes[j, 3] <= boxes[j, 1])
                else f"lies wholly outside the {width}x{height} image"
            )
            raise ValueError(f"image {i}, box {j} {boxes[j].tolist()} {why}")
        bad_label = (labels < 1) | (labels > num_classes)
        if bad_label.any():
            j = int(bad_label.nonzero()[0])
            raise ValueError(
                f"image {i}, box {j}: label {int(labels[j])} is outside 1..{num_classes} (0 is background)"
            )
