"""The RPN's proposal selection on the CPU: NMS stopped at ``post_nms_top_n`` survivors per image
and level (``frcnn.modeling.nms.nms_top_k``, what ``select_proposals`` runs) against NMS over every
candidate, cut afterwards (``torchvision.ops.batched_nms`` + the k best per group, as before).

Inputs: the anchors of one batch of two images at stride 16 (``AnchorGenerator``), decoded with
deltas ~ N(0, ``--sigma``) and random objectness logits (an RPN early in training: its boxes are
near the anchors, the worst case for NMS, which keeps most of a spread-out set). Both variants get
the same boxes; the check is that they select the same indices. Variants run interleaved, one
thread; min and median of ``--repeats``.

    .venv/bin/python bench/proposal_nms.py [--record]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import machine, publish
from torchvision.ops import batched_nms

from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.batched import top_k_per_group
from frcnn.modeling.boxes import BoxCoder, clip_boxes
from frcnn.modeling.nms import nms_top_k

SECTION = "## Proposal NMS"
# name, padded image (h, w), anchor sizes, pre-NMS top-n, post-NMS top-n, NMS IoU
CASES = [
    ("raccoon_mobilenet train (480 x 640)", (480, 640), (32, 64, 128, 256, 512), 12000, 600, 0.6),
    ("raccoon_mobilenet test", (480, 640), (32, 64, 128, 256, 512), 6000, 300, 0.6),
    ("the seed's defaults, train (600 x 1000)", (608, 1008), (128, 256, 512), 12000, 2000, 0.6),
    ("the seed's defaults, test", (608, 1008), (128, 256, 512), 6000, 300, 0.6),
    ("vs torchvision C4 train (384 x 384)", (384, 384), (64, 128, 256, 512), 12000, 2000, 0.6),
    ("vs torchvision C4 test", (384, 384), (64, 128, 256, 512), 6000, 50, 0.6),
]
VARIANTS = {
    "all, then cut": lambda b, s, g, t, k: (lambda keep: keep[top_k_per_group(s[keep], g[keep], k)])(
        batched_nms(b, s, g, t)
    ),
    "stop at k (ours)": nms_top_k,
}


def candidates(size: tuple[int, int], sizes, pre_nms_top_n: int, sigma: float, seed: int = 0):
    """-> boxes (E, 4), logits (E,), groups (E,): the pre_nms_top_n best of each of 2 images."""
    g = torch.Generator().manual_seed(seed)
    H, W = size
    anchors = AnchorGenerator(sizes).grid_anchors((H // 16, W // 16), (16, 16), torch.device("cpu"))
    M = anchors.shape[0]
    boxes, logits, groups = [], [], []
    for image in range(2):
        deltas = torch.randn(M, 4, generator=g) * sigma
        score = torch.randn(M, generator=g)
        top = score.topk(min(pre_nms_top_n, M)).indices
        decoded = clip_boxes(BoxCoder().decode(deltas[top], anchors[top]), torch.tensor(H), torch.tensor(W))
        boxes.append(decoded)
        logits.append(score[top])
        groups.append(torch.full((top.numel(),), image))
    return torch.cat(boxes), torch.cat(logits), torch.cat(groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--record", action="store_true", help="write the table into bench/README.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = [
        SECTION,
        "",
        f"{datetime.date.today().isoformat()}, `.venv/bin/python bench/{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`, "
        f"{machine(torch.device('cpu'))}, 1 thread. Milliseconds per batch of 2 images (min / median over "
        f"{args.repeats} interleaved repeats); deltas ~ N(0, {args.sigma}).",
        "",
        "| case | candidates per image | all kept per image | all, then cut | stop at k (ours) | ratio (median) | same indices |",
        "| --- | ---: | ---: | --- | --- | ---: | --- |",
    ]
    for title, size, sizes, pre, post, threshold in CASES:
        boxes, logits, groups = candidates(size, sizes, pre, args.sigma)
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        results = {}
        for repeat in range(args.repeats):
            items = list(VARIANTS.items())
            for name, fn in items if repeat % 2 == 0 else items[::-1]:
                start = time.perf_counter()
                results[name] = fn(boxes, logits, groups, threshold, post)
                times[name].append(1000 * (time.perf_counter() - start))
        same = torch.equal(*results.values())
        kept_all = batched_nms(boxes, logits, groups, threshold).numel() / 2
        (a_min, a_med), (b_min, b_med) = ((min(t), statistics.median(t)) for t in times.values())
        line = (f"| {title} | {boxes.shape[0] // 2} | {kept_all:.0f} | {a_min:.1f} / {a_med:.1f} | {b_min:.1f} / {b_med:.1f} "
                f"| {a_med / b_med:.1f} | {'yes' if same else 'NO'} |")
        print(line, flush=True)
        out.append(line)
    publish(SECTION, out, args.record)


if __name__ == "__main__":
    main()
