"""The input transform's resize, written so that an exported graph computes exactly what it computes.

Shape shorthand: N images, C channels, (H, W) input size, (h, w) resized size.

Two details decide whether an exported model sees the same pixels as the eager one:

* The resized size. ``frcnn.modeling.transform.resized_size`` computes it in integers (the exact
  ``floor(side * min_size / short)``, or ``/ long``), and ``resized_size`` here writes the same on
  the symbolic sizes: integer products and divisions, which every runtime does exactly (OpenVINO
  too: it narrows int64 to int32, and 8192 * 8192 fits).
* The sampling positions. PyTorch's CPU bilinear kernel (``align_corners=False``) samples input
  coordinate ``(i + 0.5) * (H / h) - 0.5``, ratio in float32, multiply-add fused (one rounding);
  ONNX ``Resize`` divides by ``h / H`` instead. Either difference moves a sample by up to one
  float32 step of its coordinate (6e-5 px at 512), i.e. up to 3e-5 of the value range in a pixel:
  visible in the scores. ``bilinear_resize`` computes PyTorch's taps and weights as tensors (the
  fused multiply-add exactly, in double: a float32 product is exact there) and applies them with
  two gathers, so the exported resize equals the eager one to the rounding of the final sums.
"""

from __future__ import annotations

import torch
from torch import Tensor


def resized_size(height, width, min_size: int, max_size: int):
    """(H, W) (ints or symbolic ints) -> (h, w): ``frcnn.modeling.transform.resized_size``, in
    integer operations only."""
    short, long = torch.sym_min(height, width), torch.sym_max(height, width)
    return tuple(torch.sym_min(side * min_size // short, side * max_size // long) for side in (height, width))


def axis_taps(in_size, out_size, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Linear interpolation from ``in_size`` to ``out_size`` samples along one axis, as PyTorch's CPU
    kernel computes it -> (index0, index1) int64 (out,) and their weights (out,) float32."""
    ratio = torch.full((), in_size, dtype=torch.float32, device=device) / torch.full(
        (), out_size, dtype=torch.float32, device=device
    )
    centres = torch.arange(out_size, dtype=torch.float32, device=device) + 0.5  # exact in float32
    # fma(ratio, centre, -0.5) rounded once: exact in double, then one rounding to float32
    source = (centres.double() * ratio.double() - 0.5).float().clamp(min=0.0)
    index0 = source.floor().long().clamp(max=in_size - 1)
    weight1 = (source - index0.float()).clamp(0.0, 1.0)
    index1 = torch.where(index0 < in_size - 1, index0 + 1, index0)
    return index0, index1, 1.0 - weight1, weight1


def bilinear_resize(x: Tensor, height, width) -> Tensor:
    """(N, C, H, W) -> (N, C, h, w): ``F.interpolate(mode="bilinear", align_corners=False)`` without
    antialiasing, as two gathers (columns first, then rows, the kernel's order of sums)."""
    H, W = x.shape[-2], x.shape[-1]
    x0, x1, wx0, wx1 = axis_taps(W, width, x.device)
    y0, y1, wy0, wy1 = axis_taps(H, height, x.device)
    columns = x.index_select(3, x0) * wx0 + x.index_select(3, x1) * wx1  # (N, C, H, w)
    return columns.index_select(2, y0) * wy0[:, None] + columns.index_select(2, y1) * wy1[:, None]


def pad_to_multiple(x: Tensor, divisor: int) -> Tensor:
    """(N, C, h, w) -> (N, C, H', W') zero-padded at the bottom and right to multiples of ``divisor``."""
    h, w = x.shape[-2], x.shape[-1]
    return torch.nn.functional.pad(x, (0, (w + divisor - 1) // divisor * divisor - w, 0, (h + divisor - 1) // divisor * divisor - h))
