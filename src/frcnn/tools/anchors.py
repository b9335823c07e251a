"""Anchor coverage: do the anchors reach the RPN's foreground threshold for this data?

``python -m frcnn.tools.anchors data=coco128 [model=...] [backbone=...] [model.rpn.anchor_generator.sizes=...]``

For every ground-truth box of the training split, resized exactly as the model's input transform
resizes its image, the best IoU with any anchor of that image is computed. A box whose best IoU is
below the RPN's foreground threshold only gets a positive anchor through the best-anchor fallback,
a weak one: the report shows which box sizes and shapes that happens to, and suggests sizes and
aspect ratios that cover the data better (with their own coverage, measured the same way).

Shape shorthand: G ground-truth boxes over the split, M anchors of one image.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from frcnn.anchors import AnchorGenerator

PROJECT_ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = PROJECT_ROOT / "conf"

SIZE_BINS = (0, 32, 64, 128, 256, 512, math.inf)  # sqrt(area) in model-input pixels
ASPECT_BINS = (0, 1 / 3, 2 / 3, 3 / 2, 3, math.inf)  # height / width


@dataclass
class Coverage:
    """Per ground-truth box: side sqrt(area) (G,), aspect h / w (G,) and best anchor IoU (G,)."""

    side: Tensor
    aspect: Tensor
    best_iou: Tensor


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The (h, w) that ``InputTransform`` produces for an image of (height, width)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    if scale == 1.0:
        return height, width
    return int(math.floor(height * scale)), int(math.floor(width * scale))


def resize_boxes(boxes: Tensor, height: int, width: int, min_size: int, max_size: int) -> tuple[Tensor, tuple[int, int]]:
    """Boxes (G, 4) of a (height, width) image -> (G, 4) in model-input pixels, and that size."""
    rh, rw = resized_size(height, width, min_size, max_size)
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
    sides, aspects, best = [], [], []
    for boxes, (h, w) in zip(boxes_per_image, image_sizes):  # a loop over images
        if boxes.shape[0] == 0:
            continue
        boxes, size = resize_boxes(boxes, h, w, min_size, max_size)
        best.append(best_iou_per_shape(boxes, size, shapes, stride, anchor_generator.offset).max(dim=1).values)
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        sides.append(torch.sqrt(bw * bh))
        aspects.append(bh / bw)
    if not best:
        empty = torch.zeros(0)
        return Coverage(empty, empty, empty)
    return Coverage(torch.cat(sides), torch.cat(aspects), torch.cat(best))


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
) -> tuple[list[float], list[float]]:
    """Sizes and ratios (as many as now) that maximise the fraction of boxes with an anchor at
    IoU >= ``fg_threshold``, by coordinate ascent from the current set over a grid of candidates
    (ties broken by the mean best IoU). Every candidate's IoU table is computed once.
    """
    sizes = sorted(set(CANDIDATE_SIZES) | set(anchor_generator.sizes))
    ratios = sorted(set(CANDIDATE_RATIOS) | set(anchor_generator.aspect_ratios))
    table = AnchorGenerator(sizes, ratios, anchor_generator.offset)
    shapes = table.base_anchors()  # (len(ratios) * len(sizes), 4), ratio-major
    per_box = []
    for boxes, (h, w) in zip(boxes_per_image, image_sizes):
        if boxes.shape[0]:
            scaled, size = resize_boxes(boxes, h, w, min_size, max_size)
            per_box.append(best_iou_per_shape(scaled, size, shapes, stride, table.offset))
    if not per_box:
        return list(anchor_generator.sizes), list(anchor_generator.aspect_ratios)
    iou = torch.cat(per_box).view(-1, len(ratios), len(sizes))  # (G, R, S)

    def score(size_idx: list[int], ratio_idx: list[int]) -> tuple[float, float]:
        best = iou[:, ratio_idx][:, :, size_idx].flatten(1).max(dim=1).values
        return float((best >= fg_threshold).float().mean()), float(best.mean())

    chosen_s = [sizes.index(s) for s in anchor_generator.sizes]
    chosen_r = [ratios.index(r) for r in anchor_generator.aspect_ratios]
    current = score(chosen_s, chosen_r)
    for _ in range(rounds):
        improved = False
        for chosen, n_candidates in ((chosen_s, len(sizes)), (chosen_r, len(ratios))):
            for slot in range(len(chosen)):
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


def format_report(name: str, table: dict, sizes: Sequence[float], ratios: Sequence[float], fg: float) -> str:
    lines = [f"{name}: sizes {list(sizes)} x ratios (h/w) {list(ratios)}",
             f"  {table['covered']:.1%} of {table['boxes']} boxes have an anchor with IoU >= {fg}"]
    for title, key in (("box side", "by_size"), ("aspect h/w", "by_aspect")):
        lines.append(f"  by {title}:")
        lines += [f"    {label:>14}  {n:6d} boxes  {frac:6.1%}" for label, n, frac in table[key]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, config_dir: str | Path = CONF_DIR, config_name: str = "train") -> int:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    overrides = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)

    rpn_cfg = cfg.model.rpn
    anchor_generator = instantiate(rpn_cfg.anchor_generator)
    if isinstance(anchor_generator.sizes[0], Sequence):
        print("anchor coverage supports single-map models; this model has several feature levels")
        return 2
    fg = float(rpn_cfg.matcher.fg_iou_threshold)
    backbone = instantiate(cfg.backbone, weights=None, weights_path=None)  # only its stride is needed
    min_size = cfg.model.transform.min_size
    min_size = int(min_size if isinstance(min_size, int) else list(min_size)[-1])
    max_size = int(cfg.model.transform.max_size)

    datamodule = instantiate(cfg.data)
    records, _ = datamodule.check()["train"]
    boxes = [torch.as_tensor(r.boxes).reshape(-1, 4) for r in records]
    sizes = [(int(r.height), int(r.width)) for r in records]
    coverage = measure_coverage(boxes, sizes, anchor_generator, backbone.stride, min_size, max_size)
    print(f"{len(records)} training images, stride {backbone.stride}, images resized to {min_size} / {max_size}")
    print(format_report("current", coverage_table(coverage, fg), anchor_generator.sizes,
                        anchor_generator.aspect_ratios, fg))
    new_sizes, new_ratios = suggest_anchors(boxes, sizes, anchor_generator, backbone.stride, min_size, max_size, fg)
    suggested = measure_coverage(boxes, sizes, AnchorGenerator(new_sizes, new_ratios, anchor_generator.offset),
                                 backbone.stride, min_size, max_size)
    print(format_report("suggested", coverage_table(suggested, fg), new_sizes, new_ratios, fg))
    print(f"\nto use: model.rpn.anchor_generator.sizes=[{','.join(f'{s:g}' for s in new_sizes)}] "
          f"model.rpn.anchor_generator.aspect_ratios=[{','.join(f'{r:g}' for r in new_ratios)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
