"""RoIAlign forward + backward on the CPU: ours (``frcnn.roi_sample``) against torchvision's.

Ours takes torchvision's kernel for the forward and the separable form of the bilinear weights for
the backward (two matmuls per image; ``frcnn.roi_sample._SeparableBilinear``), where torchvision's
CPU backward scatters every sample. Both must give the same values and gradients.

Shapes are the benchmark's (``bench/vs_torchvision.py``): MobileNetV2 (1280 ch, 12 x 12 map, 7 x 7
bins) and ResNet-50 C4 (1024 ch, 24 x 24, 14 x 14), two images, ``sampling_ratio`` 2,
``aligned=False``. Variants run interleaved; min and median of ``--repeats``.

    .venv/bin/python bench/roi_align_variants.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor
from torchvision.ops import roi_align as torchvision_roi_align

from frcnn.roi_sample import roi_align as our_roi_align

VARIANTS = {
    "torchvision": lambda f, r, S, sc: torchvision_roi_align(f, r, S, sc, 2, False),
    "ours (frcnn.roi_sample)": lambda f, r, S, sc: our_roi_align(f, r, S, sc, 2, False),
}
# name, RoIs, channels, map side, stride, output side
CASES = [
    ("MobileNetV2 train: 128 RoIs, 1280 ch, 12x12, 7x7", 128, 1280, 12, 32, 7),
    ("ResNet-50 C4 train: 128 RoIs, 1024 ch, 24x24, 14x14", 128, 1024, 24, 16, 14),
    ("ResNet-50 C4 train: 32 RoIs (the benchmark's 16 per image)", 32, 1024, 24, 16, 14),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    for title, R, C, side, stride, S in CASES:
        features, rois = case(R, C, side, stride)
        grad_out = torch.randn(R, C, S, S, generator=torch.Generator().manual_seed(1))
        reference = features.clone().requires_grad_(True)
        expected = torchvision_roi_align(reference, rois, S, 1 / stride, 2, False)
        expected.backward(grad_out)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
        print(f"\n{title}")
        for repeat in range(args.repeats):
            items = list(VARIANTS.items())
            for name, fn in items if repeat % 2 == 0 else items[::-1]:
                x = features.clone().requires_grad_(True)
                start = time.perf_counter()
                out = fn(x, rois, S, 1 / stride)
                forward = time.perf_counter()
                out.backward(grad_out)
                times[name].append((forward - start, time.perf_counter() - forward))
                if repeat == 0:
                    value = (out.detach() - expected.detach()).abs().max().item()
                    grad = ((x.grad - reference.grad).abs().max() / reference.grad.abs().max()).item()
                    print(
                        f"  {name:24s} max |value diff| {value:.1e}, max |grad diff| / max |grad| {grad:.1e}"
                    )
        for name, ts in times.items():
            fwd, bwd = [t[0] for t in ts], [t[1] for t in ts]
            total = [a + b for a, b in ts]
            print(
                f"  {name:24s} forward {1000 * min(fwd):6.0f} ms, backward {1000 * min(bwd):6.0f} ms, "
                f"total min {1000 * min(total):6.0f} ms / median {1000 * statistics.median(total):6.0f} ms"
            )


if __name__ == "__main__":
    main()
