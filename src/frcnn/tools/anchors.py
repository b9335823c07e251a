"""Anchor coverage: do the anchors reach the RPN's foreground threshold for this data?

``python -m frcnn.tools.anchors data=coco128 [model=...] [backbone=...] [model.rpn.anchor_generator.sizes=...]``

Reports, for the training split, the fraction of boxes with an anchor at IoU >= the RPN's foreground
threshold, by box size and aspect, and suggests sizes and aspect ratios that cover the data better
(with their own coverage, measured the same way: ``frcnn.tools.anchor_coverage``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from frcnn.modeling.anchors import AnchorGenerator
from frcnn.tools.anchor_coverage import coverage_table, measure_coverage, suggest_anchors
from frcnn.tools.auto_anchors import evaluation_size, start_generator
from frcnn.tools.compose import CONF_DIR, compose_project_config


def format_report(name: str, table: dict, sizes: Sequence[float], ratios: Sequence[float], fg: float) -> str:
    lines = [f"{name}: sizes {list(sizes)} x ratios (h/w) {list(ratios)}",
             f"  {table['covered']:.1%} of {table['boxes']} boxes have an anchor with IoU >= {fg}"]
    for title, key in (("box side", "by_size"), ("aspect h/w", "by_aspect")):
        lines.append(f"  by {title}:")
        lines += [f"    {label:>14}  {n:6d} boxes  {frac:6.1%}" for label, n, frac in table[key]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, config_dir: str | Path = CONF_DIR, config_name: str = "train") -> int:
    from hydra.utils import instantiate

    cfg = compose_project_config(list(sys.argv[1:] if argv is None else argv), config_name, config_dir)

    rpn_cfg = cfg.model.rpn
    anchor_generator = start_generator(rpn_cfg.anchor_generator)  # `auto`: the fit's starting set
    if isinstance(anchor_generator.sizes[0], Sequence):
        print("anchor coverage supports single-map models; this model has several feature levels")
        return 2
    fg = float(rpn_cfg.matcher.fg_iou_threshold)
    backbone = instantiate(cfg.backbone, weights=None, weights_path=None)  # only its stride is needed
    min_size, max_size = evaluation_size(cfg.model.transform)

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
