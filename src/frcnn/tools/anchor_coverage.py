"""Anchor coverage: the best IoU any anchor reaches with each ground-truth box, and better anchors.

For every ground-truth box, resized exactly as the model's input transform resizes its image
(``frcnn.modeling.transform.resized_size``), the best IoU with any anchor of that image. A box whose
best IoU is below the RPN's foreground threshold only gets a positive anchor through the
best-anchor fallback, a weak one. ``suggest_anchors`` searches sizes and aspect ratios that cover
the data better. Pure functions of boxes and image sizes; the CLI is ``frcnn.tools.anchors``.

Shape shorthand: G ground-truth boxes over the split, S anchor shapes, M anchors of one image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.transform import resized_size

SIZE_BINS = (0, 32, 64, 128, 256, 512, math.inf)  # sqrt(area) in model-input pixels
ASPECT_BINS = (0, 1 / 3, 2 / 3, 3 / 2, 3, math.inf)  # height / width


@dataclass
class Coverage:
    """Per ground-truth box: side sqrt(area) (G,), aspect h / w (G,) and best anchor IoU (G,)."""

    side: Tensor
    aspect: Tensor
    best_iou: Tensor


def resize_boxes(boxes: Tensor, height: int, width: int, min_size: int, max_size: int) -> tuple[Tensor, tuple[int, int]]:
    """Boxes (G, 4) of a (height, width) image -> (G, 4) in model-input pixels, and that size."""
    rh, rw = resized_size(height, width, min_size, max_size)  # the model's own rule
    return boxes.float() * torch.tensor([rw / width, rh / height, rw / width, rh / height]), (rh, rw)


def best_iou_per_shape(
    boxes: Tensor, image_size: tuple[int, int], shapes: Tensor, stride: int, offset: float = 0.0
) -> Tensor:
    """boxes (G, 4) in model-input pixels of an image (h, w), anchor shapes (S, 4) centred at 0
    -> (G, S): for each box and shape, the IoU of the best anchor of that shape on the grid.

    For a fixed shape, IoU only grows as the anchor's centre nears the box's centre along each axis
    (the intersection is a product of per-axis overlaps, each non-increasing in the offset), so the
    best anchor is the one on the grid point nearest the box centre: O(G * S), not O(G * M).
    """
    h, w = image_size
    Hf, Wf = math.ceil(h / stride), math.ceil(w / stride)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    ax = ((cx / stride - offset).round().clamp(0, Wf - 1) + offset) * stride  # (G,)
    ay = ((cy / stride - offset).round().clamp(0, Hf - 1) + offset) * stride
    anchors = shapes[None, :, :] + torch.stack((ax, ay, ax, ay), dim=1)[:, None, :]  # (G, S, 4)
    b = boxes[:, None, :]
    iw = (torch.minimum(b[..., 2], anchors[..., 2]) - torch.maximum(b[..., 0], anchors[..., 0])).clamp(min=0)
    ih = (torch.minimum(b[..., 3], anchors[..., 3]) - torch.maximum(b[..., 1], anchors[..., 1])).clamp(min=0)
    inter = iw * ih
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    area_a = (anchors[..., 2] - anchors[..., 0]) * (anchors[..., 3] - anchors[..., 1])
    return inter / (area_b + area_a - inter)


def per_shape_iou(
    boxes_per_image: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    shapes: Tensor,
    stride: int,
    offset: float,
    min_size: int,
    max_size: int,
) -> tuple[Tensor, Tensor]:
    """Boxes (G_i, 4) in original pixels of images (h, w) -> (the boxes resized as the model resizes
    their images (G, 4), and the best IoU of each with each anchor shape (G, S)), over the split."""
    resized, ious = [torch.zeros(0, 4)], [torch.zeros(0, shapes.shape[0])]
    for boxes, (h, w) in zip(boxes_per_image, image_sizes, strict=True):  # a loop over images
        if boxes.shape[0]:
            scaled, size = resize_boxes(boxes, h, w, min_size, max_size)
            resized.append(scaled)
            ious.append(best_iou_per_shape(scaled, size, shapes, stride, offset))
    return torch.cat(resized), torch.cat(ious)


def measure_coverage(
    boxes_per_image: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    anchor_generator: AnchorGenerator,
    stride: int,
    min_size: int,
    max_size: int,
) -> Coverage:
    """Boxes (G_i, 4) in original pixels, image (h, w) -> best anchor IoU of every box after resizing."""
    shapes = anchor_generator.base_anchors()  # (A, 4)
    boxes, iou = per_shape_iou(boxes_per_image, image_sizes, shapes, stride, anchor_generator.offset, min_size, max_size)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    best = iou.max(dim=1).values if iou.shape[0] else torch.zeros(0)
    return Coverage(torch.sqrt(bw * bh), bh / bw, best)


def _bin_rows(values: Tensor, covered: Tensor, edges: Sequence[float], fmt) -> list[tuple[str, int, float]]:
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (values >= lo) & (values < hi)
        n = int(inside.sum())
        if n:
            rows.append((fmt(lo, hi), n, float(covered[inside].float().mean())))
    return rows


def coverage_table(coverage: Coverage, fg_threshold: float) -> dict:
    """Fraction of boxes whose best anchor IoU reaches ``fg_threshold``: overall, by size, by aspect."""
    covered = coverage.best_iou >= fg_threshold
    return {
        "boxes": int(covered.numel()),
        "covered": float(covered.float().mean()) if covered.numel() else float("nan"),
        "by_size": _bin_rows(coverage.side, covered, SIZE_BINS, lambda lo, hi: f"{lo:g}-{hi:g} px"),
        "by_aspect": _bin_rows(coverage.aspect, covered, ASPECT_BINS, lambda lo, hi: f"{lo:.2f}-{hi:.2f}"),
    }


CANDIDATE_SIZES = tuple(float(round(2 ** (k / 4))) for k in range(12, 41))  # 8 .. 1024 px, 4 per octave
CANDIDATE_RATIOS = (0.25, 0.33, 0.5, 0.67, 1.0, 1.5, 2.0, 3.0, 4.0)


def suggest_anchors(
    boxes_per_image: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    anchor_generator: AnchorGenerator,
    stride: int,
    min_size: int,
    max_size: int,
    fg_threshold: float,
    rounds: int = 3,
    fit_sizes: bool = True,
    fit_ratios: bool = True,
) -> tuple[list[float], list[float]]:
    """Sizes and ratios (as many as now) that maximise the fraction of boxes with an anchor at
    IoU >= ``fg_threshold``, by coordinate ascent from the current set over a grid of candidates
    (ties broken by the mean best IoU). Every candidate's IoU table is computed once.
    ``fit_sizes`` / ``fit_ratios`` False keep the current sizes / ratios.
    """
    sizes = sorted(set(CANDIDATE_SIZES) | set(anchor_generator.sizes))
    ratios = sorted(set(CANDIDATE_RATIOS) | set(anchor_generator.aspect_ratios))
    table = AnchorGenerator(sizes, ratios, anchor_generator.offset)
    shapes = table.base_anchors()  # (len(ratios) * len(sizes), 4), ratio-major
    _, per_box = per_shape_iou(boxes_per_image, image_sizes, shapes, stride, table.offset, min_size, max_size)
    if per_box.shape[0] == 0:
        return list(anchor_generator.sizes), list(anchor_generator.aspect_ratios)
    iou = per_box.view(-1, len(ratios), len(sizes))  # (G, R * S) -> (G, R, S)

    def score(size_idx: list[int], ratio_idx: list[int]) -> tuple[float, float]:
        best = iou[:, ratio_idx][:, :, size_idx].flatten(1).max(dim=1).values
        return float((best >= fg_threshold).float().mean()), float(best.mean())

    chosen_s = [sizes.index(s) for s in anchor_generator.sizes]
    chosen_r = [ratios.index(r) for r in anchor_generator.aspect_ratios]
    current = score(chosen_s, chosen_r)
    for _ in range(rounds):
        improved = False
        for chosen, n_candidates, fit in ((chosen_s, len(sizes), fit_sizes), (chosen_r, len(ratios), fit_ratios)):
            for slot in range(len(chosen) if fit else 0):
                for candidate in range(n_candidates):
                    if candidate in chosen:
                        continue
                    trial = chosen.copy()
                    trial[slot] = candidate
                    trial_score = score(*((trial, chosen_r) if chosen is chosen_s else (chosen_s, trial)))
                    if trial_score > current:
                        chosen[slot], current, improved = candidate, trial_score, True
        if not improved:
            break
    return sorted(sizes[i] for i in chosen_s), sorted(ratios[i] for i in chosen_r)
