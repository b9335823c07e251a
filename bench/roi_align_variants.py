"""RoIAlign forward + backward on the CPU: ours (``frcnn.roi_sample``) against torchvision's.

Ours: the forward is one sparse-dense product of the bins' bilinear weights with the channels-last
feature rows (``sparse_roi_sample``), the backward the separable form of the weights (batched
matmuls per image; ``_SeparableBilinear``). torchvision's CPU kernel computes one channel of one
RoI at a time on one thread and its backward scatters every sample. Both must give the same values
and gradients (float rounding).

Shapes are the benchmark's (``bench/vs_torchvision.py``): MobileNetV2 (1280 ch, 12 x 12 map, 7 x 7
bins), ResNet-50 C4 (1024 ch, 24 x 24, 14 x 14), FPN's finest level (256 ch, 64 x 64, 7 x 7), two
images, ``sampling_ratio`` 2, ``aligned=False``, in training (forward + backward) and in inference
(forward under ``inference_mode``). Variants run interleaved; min and median of ``--repeats``.

    .venv/bin/python bench/roi_align_variants.py [--record]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import machine, record
from torch import Tensor
from torchvision.ops import roi_align as torchvision_roi_align

from frcnn.layers.roi_align import roi_align as our_roi_align

SECTION = "## RoIAlign"
VARIANTS = {
    "torchvision": lambda f, r, S, sc: torchvision_roi_align(f, r, S, sc, 2, False),
    "ours": lambda f, r, S, sc: our_roi_align(f, r, S, sc, 2, False),
}
# name, RoIs, channels, map side, stride, output side, with a backward
CASES = [
    ("MobileNetV2 train: 128 RoIs, 1280 ch, 12x12, 7x7", 128, 1280, 12, 32, 7, True),
    ("MobileNetV2 inference: 600 RoIs", 600, 1280, 12, 32, 7, False),
    ("ResNet-50 C4 train: 128 RoIs, 1024 ch, 24x24, 14x14", 128, 1024, 24, 16, 14, True),
    ("ResNet-50 C4 train: 32 RoIs (the benchmark's 16 per image)", 32, 1024, 24, 16, 14, True),
    ("ResNet-50 C4 inference: 100 RoIs", 100, 1024, 24, 16, 14, False),
    ("FPN P2 train: 128 RoIs, 256 ch, 64x64, 7x7", 128, 256, 64, 4, 7, True),
]


def case(num_rois: int, channels: int, side: int, stride: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """features (2, C, side, side) and (R, 5) RoIs spread over both images, image-sorted."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, channels, side, side, generator=g)
    extent = side * stride
    xy = torch.rand(num_rois, 2, generator=g) * extent * 0.8
    wh = 8 + torch.rand(num_rois, 2, generator=g) * extent * 0.5
    image = (torch.arange(num_rois) % 2).sort().values.float()
    return features, torch.cat([image[:, None], xy, (xy + wh).clamp(max=extent)], dim=1)


def run_case(R: int, C: int, side: int, stride: int, S: int, train: bool, repeats: int) -> list[str]:
    features, rois = case(R, C, side, stride)
    grad_out = torch.randn(R, C, S, S, generator=torch.Generator().manual_seed(1))
    reference = features.clone().requires_grad_(True)
    expected = torchvision_roi_align(reference, rois, S, 1 / stride, 2, False)
    expected.backward(grad_out)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    rows = []
    for repeat in range(repeats):
        items = list(VARIANTS.items())
        for name, fn in items if repeat % 2 == 0 else items[::-1]:
            x = features.clone().requires_grad_(train)
            start = time.perf_counter()
            if train:
                out = fn(x, rois, S, 1 / stride)
                forward = time.perf_counter()
                out.backward(grad_out)
            else:
                with torch.inference_mode():
                    out = fn(x, rois, S, 1 / stride)
                forward = time.perf_counter()
            times[name].append((forward - start, time.perf_counter() - forward))
            if repeat == 0 and name == "ours":
                value = (out.detach() - expected.detach()).abs().max().item()
                check = f"max abs value diff {value:.1e}"
                if train:
                    grad = ((x.grad - reference.grad).abs().max() / reference.grad.abs().max()).item()
                    check += f", max grad diff / max grad {grad:.1e}"
    for name, ts in times.items():
        fwd, bwd = [t[0] for t in ts], [t[1] for t in ts]
        total = [a + b for a, b in ts]
        rows.append(
            (name, 1000 * min(fwd), 1000 * min(bwd) if train else None, 1000 * min(total), 1000 * statistics.median(total))
        )
    ratio = rows[0][4] / rows[1][4]
    lines = [
        f"| {name} | {fwd:.0f} | {'' if bwd is None else f'{bwd:.0f}'} | {tmin:.0f} | {tmed:.0f} |"
        for name, fwd, bwd, tmin, tmed in rows
    ]
    return lines, check, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--record", action="store_true", help="write the table into bench/README.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    out = [
        SECTION,
        "",
        f"{datetime.date.today().isoformat()}, `.venv/bin/python bench/{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`, "
        f"{machine(torch.device('cpu'))}. Milliseconds, min over {args.repeats} interleaved repeats "
        "(median of forward + backward too); ours against torchvision's `roi_align` on the same inputs.",
        "",
        "| case | variant | forward ms | backward ms | total min | total median | torchvision / ours (median) | check |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for title, R, C, side, stride, S, train in CASES:
        lines, check, ratio = run_case(R, C, side, stride, S, train, args.repeats)
        print(f"{title}: {check}; torchvision / ours {ratio:.2f}", flush=True)
        for i, line in enumerate(lines):
            out.append(f"| {title if i == 0 else ''} {line}" + (f" {ratio:.2f} | {check} |" if i == 0 else " | |"))
    text = "\n".join(out) + "\n"
    print("\n" + text)
    if args.record:
        record(SECTION, text)


if __name__ == "__main__":
    main()
