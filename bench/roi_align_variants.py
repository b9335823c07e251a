"""RoIAlign forward + backward on the CPU: ours (``frcnn.roi_sample``) against torchvision's.

Ours: the forward is one sparse-dense product of the bins' bilinear weights with the channels-last
feature rows (``sparse_roi_sample``), the backward the separable form of the weights (batched
matmuls per image; ``_SeparableBilinear``). torchvision's CPU kernel computes one channel of one
RoI at a time on one thread and its backward scatters every sample. Both must give the same values
and gradients (float rounding).

Shapes are the benchmark's (``bench/vs_torchvision.py``): MobileNetV2 (1280 ch, 12 x 12 map, 7 x 7
bins), ResNet-50 C4 (1024 ch, 24 x 24, 14 x 14), FPN's finest level (256 ch, 64 x 64, 7 x 7), two
images, and FPN's finest level at a real training size (one 800 x 1216 image: 200 x 304), with
RoIs of up to half the image, or for FPN's P2 of the sizes its level mapper sends there (<= 112 px);
``sampling_ratio`` 2, ``aligned=False``, in training (forward + backward) and in inference
(forward under ``inference_mode``). Variants run interleaved; min and median of ``--repeats``.

``--baseline REF`` adds ours as it was at a git commit (``src/frcnn/layers/roi_align.py`` at REF,
loaded from ``git show``) as a third variant: a change to ours measured against what it replaces.

    .venv/bin/python bench/roi_align_variants.py [--record] [--baseline REF]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, publish
from torch import Tensor
from torchvision.ops import roi_align as torchvision_roi_align

from frcnn.layers.roi_align import roi_align as our_roi_align

SECTION = "## RoIAlign"
VARIANTS = {
    "torchvision": lambda f, r, S, sc: torchvision_roi_align(f, r, S, sc, 2, False),
    "ours": lambda f, r, S, sc: our_roi_align(f, r, S, sc, 2, False),
}
# name, RoIs, channels, (images, map height, map width), stride, output side, with a backward,
# largest RoI side in pixels (None: half the image)
CASES = [
    ("MobileNetV2 train: 128 RoIs, 1280 ch, 12x12, 7x7", 128, 1280, (2, 12, 12), 32, 7, True, None),
    ("MobileNetV2 inference: 600 RoIs", 600, 1280, (2, 12, 12), 32, 7, False, None),
    ("ResNet-50 C4 train: 128 RoIs, 1024 ch, 24x24, 14x14", 128, 1024, (2, 24, 24), 16, 14, True, None),
    ("ResNet-50 C4 train: 32 RoIs (the benchmark's 16 per image)", 32, 1024, (2, 24, 24), 16, 14, True, None),
    ("ResNet-50 C4 inference: 100 RoIs", 100, 1024, (2, 24, 24), 16, 14, False, None),
    ("FPN P2 train: 128 RoIs, 256 ch, 64x64, 7x7", 128, 256, (2, 64, 64), 4, 7, True, None),
    ("FPN P2 train: 128 RoIs of <= 112 px (P2's)", 128, 256, (2, 64, 64), 4, 7, True, 112),
    ("FPN P2 train at 800 x 1216 px: 1 image, 200x304, 256 RoIs of <= 112 px", 256, 256, (1, 200, 304), 4, 7, True, 112),
    ("FPN P2 inference at 800 x 1216 px: 500 RoIs", 500, 256, (1, 200, 304), 4, 7, False, 112),
]


def case(num_rois: int, channels: int, shape: tuple[int, int, int], stride: int, largest: int | None = None,
         seed: int = 0) -> tuple[Tensor, Tensor]:
    """features (images, C, height, width) and (R, 5) RoIs spread over the images, image-sorted,
    sides 8 px to ``largest`` (default: half the image's smaller side)."""
    images, height, width = shape
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(images, channels, height, width, generator=g)
    extent = torch.tensor([width * stride, height * stride], dtype=torch.float32)
    largest = largest or int(extent.min()) // 2
    xy = torch.rand(num_rois, 2, generator=g) * extent * 0.8
    wh = 8 + torch.rand(num_rois, 2, generator=g) * (largest - 8)
    image = (torch.arange(num_rois) % images).sort().values.float()
    return features, torch.cat([image[:, None], xy, torch.minimum(xy + wh, extent)], dim=1)


def at_commit(ref: str):
    """``frcnn.layers.roi_align`` as it was at git commit ``ref`` (loaded from ``git show``)."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(["git", "show", f"{ref}:src/frcnn/layers/roi_align.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "roi_align_at_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("roi_align_at_ref", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_case(variants: dict, R: int, C: int, shape: tuple[int, int, int], stride: int, S: int, train: bool,
             largest: int | None, repeats: int) -> tuple[dict[str, tuple], dict[str, str]]:
    """-> per variant (forward min, backward min or None, total min, total median) in ms, and per
    variant other than torchvision's its agreement with torchvision's value and gradient."""
    features, rois = case(R, C, shape, stride, largest)
    grad_out = torch.randn(R, C, S, S, generator=torch.Generator().manual_seed(1))
    reference = features.clone().requires_grad_(True)
    expected = torchvision_roi_align(reference, rois, S, 1 / stride, 2, False)
    expected.backward(grad_out)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    checks = {}
    for repeat in range(repeats):
        items = list(variants.items())
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
            if repeat == 0 and name != "torchvision":
                checks[name] = f"max abs value diff {(out.detach() - expected.detach()).abs().max().item():.1e}"
                if train:
                    grad = ((x.grad - reference.grad).abs().max() / reference.grad.abs().max()).item()
                    checks[name] += f", max grad diff / max grad {grad:.1e}"
    result = {}
    for name, ts in times.items():
        fwd, bwd, total = [t[0] for t in ts], [t[1] for t in ts], [a + b for a, b in ts]
        result[name] = (1000 * min(fwd), 1000 * min(bwd) if train else None, 1000 * min(total),
                        1000 * statistics.median(total))
    return result, checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", metavar="REF", help="also run ours as it was at this git commit")
    parser.add_argument("--record", action="store_true", help="write the table into bench/README.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    variants = dict(VARIANTS)
    if args.baseline:
        baseline = at_commit(args.baseline).roi_align
        variants[f"ours at {args.baseline}"] = lambda f, r, S, sc: baseline(f, r, S, sc, 2, False)
    versus = f" | ours at {args.baseline} / ours (median)" if args.baseline else ""
    out = [
        SECTION,
        "",
        f"{datetime.date.today().isoformat()}, `.venv/bin/python bench/{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`, "
        f"{machine(torch.device('cpu'))}. Milliseconds, min over {args.repeats} interleaved repeats "
        "(median of forward + backward too); ours against torchvision's `roi_align` on the same inputs.",
        "",
        f"| case | variant | forward ms | backward ms | total min | total median | torchvision / ours (median){versus} | check |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if args.baseline else "") + " --- |",
    ]
    for title, R, C, shape, stride, S, train, largest in CASES:
        times, checks = run_case(variants, R, C, shape, stride, S, train, largest, args.repeats)
        ratios = [times["torchvision"][3] / times["ours"][3]]
        if args.baseline:
            ratios.append(times[f"ours at {args.baseline}"][3] / times["ours"][3])
        print(f"{title}: {checks}; ratios {[f'{r:.2f}' for r in ratios]}", flush=True)
        for i, (name, (fwd, bwd, tmin, tmed)) in enumerate(times.items()):
            cells = [title if i == 0 else "", name, f"{fwd:.0f}", "" if bwd is None else f"{bwd:.0f}", f"{tmin:.0f}",
                     f"{tmed:.0f}", *([f"{r:.2f}" for r in ratios] if i == 0 else [""] * len(ratios)),
                     checks.get(name, "")]
            out.append("| " + " | ".join(cells) + " |")
    publish(SECTION, out, args.record)


if __name__ == "__main__":
    main()
