"""RoIAlign forward + backward on the CPU: ours (``frcnn.roi_sample``), torchvision's, and a proposal.

The proposal (``proposed_roi_align``, for ``frcnn.roi_sample``): torchvision's kernel for the
forward (it is the reference value, and allocates only the output), and for the backward the
separable form of the same interpolation. A bin's value is ``Wy[r] @ F[b_r] @ Wx[r]^T``, with
``Wy[r]`` (S, H) and ``Wx[r]`` (S, W) the bilinear weights of the bin's samples along each axis
averaged over the bin (torchvision's boundary rules, via ``_axis_weights``), so the gradient of
image n is ``sum_r Wy[r]^T @ dout[r] @ Wx[r]``: one batched matmul and one matmul per image,
instead of torchvision's scalar scatter or our four (R * S * S, C) gathers and ``index_add``.

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

from frcnn.roi_sample import _axis_weights
from frcnn.roi_sample import roi_align as our_roi_align


def _bin_weights(coords: Tensor, size: int, S: int, s: int) -> Tensor:
    """coords (R, S*s) sample positions along an axis of length ``size`` -> (R, S, size): the
    bilinear weights of each bin's ``s`` samples, averaged."""
    low, high, w_low, w_high = _axis_weights(coords, size)
    R = coords.shape[0]
    weights = coords.new_zeros(R, S * s, size)
    weights.scatter_add_(2, low[..., None], w_low[..., None])
    weights.scatter_add_(2, high[..., None], w_high[..., None])
    return weights.view(R, S, s, size).sum(2) / s


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, rois, S, spatial_scale, s, aligned):
        ctx.save_for_backward(rois)
        ctx.args = (S, spatial_scale, s, aligned, features.shape)
        return torchvision_roi_align(features, rois, S, spatial_scale, s, aligned)

    @staticmethod
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        S, spatial_scale, s, aligned, (N, C, H, W) = ctx.args
        offset = 0.5 if aligned else 0.0
        start = rois[:, 1:3] * spatial_scale - offset  # (R, 2) as (x, y)
        size = rois[:, 3:5] * spatial_scale - offset - start
        if not aligned:
            size = size.clamp(min=1.0)
        t = (torch.arange(S * s, dtype=rois.dtype, device=rois.device) + 0.5) / (S * s)
        wy = _bin_weights(start[:, 1:2] + t * size[:, 1:2], H, S, s)  # (R, S, H)
        wx = _bin_weights(start[:, 0:1] + t * size[:, 0:1], W, S, s)  # (R, S, W)
        image = rois[:, 0].long()
        grad_features = grad.new_zeros((N, C, H, W))
        for n in range(N):  # a loop over images
            sel = (image == n).nonzero()[:, 0]
            Rn = sel.numel()
            if Rn == 0:
                continue
            g = torch.bmm(grad[sel].reshape(Rn, C * S, S), wx[sel])  # (Rn, C*S, W): x contracted
            g = g.view(Rn, C, S, W).permute(0, 2, 1, 3).reshape(Rn * S, C * W)  # rows (r, bin row)
            g = wy[sel].reshape(Rn * S, H).t() @ g  # (H, C*W): y and the RoIs contracted
            grad_features[n] = g.view(H, C, W).permute(1, 0, 2)
        return grad_features, None, None, None, None, None


def proposed_roi_align(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    """Same signature and values as ``frcnn.roi_sample.roi_align``."""
    return _RoIAlign.apply(
        features, rois, int(output_size), float(spatial_scale), int(sampling_ratio), bool(aligned)
    )


VARIANTS = {
    "torchvision": lambda f, r, S, sc: torchvision_roi_align(f, r, S, sc, 2, False),
    "ours (frcnn.roi_sample)": lambda f, r, S, sc: our_roi_align(f, r, S, sc, 2, False),
    "proposed": lambda f, r, S, sc: proposed_roi_align(f, r, S, sc, 2, False),
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
