"""Bilinear sampling of a feature map on a per-RoI grid: the core of crop-and-resize and RoIAlign.

Shape shorthand: N images, C channels, H, W feature size, R RoIs, Hs x Ws samples per RoI.

Coordinates are feature *indices* (integer = cell centre). The boundary rules are torchvision's
RoIAlign rules, so that ``roi_align`` below equals ``torchvision.ops.roi_align``: a sample more
than one cell outside the map is 0; within one cell it takes the edge value.

Mixed precision: features may arrive in bfloat16 / float16 (autocast, or a half model). The
coordinates, the bilinear weights and every product run in float32 (``_compute_dtype``; float64
stays float64) and the result is cast back to the features' dtype: CPU sparse products have no
half-precision kernels, and bilinear weights in bfloat16 (8 mantissa bits) would move samples.

Why not torchvision's kernel: on a CPU it runs on one thread, one channel at a time, and its
backward scatters one sample at a time (~20 % of a Faster R-CNN training step). Here the forward
is a sparse-dense product over channels-last rows (``sparse_roi_sample``: ~3x faster) and the
backward, since bilinear weights factor per axis, is batched matmuls per image
(``_SeparableBilinear``: 5-20x faster); bench/roi_align_variants.py. On CUDA the forward is
torchvision's kernel, the backward the same matmuls.

Memory format: the result is contiguous (R, C, S, S) unless the caller asks for channels-last
(``memory_format``), which a convolutional box head with channels-last weights wants (the C4 head:
otherwise each of its two first convolutions copies the pooled RoIs into channels-last, and the
backward copies again: five pooled-size copies a step). The backward takes the output gradient in
either layout without a whole copy of it (``frcnn.layers.roi_align_backward``) and gives the
features' gradient in the features' own layout.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchvision.ops import roi_align as torchvision_roi_align

from frcnn.layers.memory_format import is_channels_last
from frcnn.layers.roi_align_backward import separable_backward

# Bound on the forward's per-chunk intermediates (two alive at a time).
_FORWARD_CHUNK_BYTES = 2**20

# torch.sparse_csr_tensor warns once that sparse CSR is "beta"; the product used here is plain.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the sampling runs in: float32 for half precision and float32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def _axis_weights(coords: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """coords (R, S) along an axis of length ``size`` -> (low, high) int64 and their weights, (R, S)."""
    valid = (coords >= -1.0) & (coords <= size)
    c = coords.clamp(min=0.0)
    low = c.floor().long().clamp(max=size - 1)
    at_edge = low >= size - 1
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(c), c - low.to(c.dtype))
    return low, high, (1.0 - frac) * valid, frac * valid


def _sample_taps(rois: Tensor, ys: Tensor, xs: Tensor, bins: int, feature_shape: torch.Size) -> tuple[Tensor, Tensor]:
    """Each bin's bilinear taps over channels-last feature rows: columns (R, S * S * (2 s)^2) int64
    (row ``n * H * W + y * W + x``) and their weights, averaged over the bin's s x s samples.

    ys, xs (R, S * s): the sample coordinates, ``s`` per bin and axis. A pixel that several samples
    touch appears several times; the product sums them.
    """
    N, C, H, W = feature_shape
    R, S = rois.shape[0], bins
    s = ys.shape[1] // S
    y0, y1, wy0, wy1 = _axis_weights(ys, H)
    x0, x1, wx0, wx1 = _axis_weights(xs, W)
    y_index = torch.stack((y0, y1), -1).view(R, S, 2 * s)  # per bin: s samples x 2 corners
    x_index = torch.stack((x0, x1), -1).view(R, S, 2 * s)
    y_weight = torch.stack((wy0, wy1), -1).view(R, S, 2 * s) / s
    x_weight = torch.stack((wx0, wx1), -1).view(R, S, 2 * s) / s
    base = (rois[:, 0].long() * (H * W))[:, None, None, None, None]
    # (R, S, S, 2s, 2s): bin (i, j), y tap a, x tap b
    columns = base + y_index[:, :, None, :, None] * W + x_index[:, None, :, None, :]
    values = y_weight[:, :, None, :, None] * x_weight[:, None, :, None, :]
    return columns.reshape(R, -1), values.reshape(R, -1)


def sparse_roi_sample(
    features: Tensor, rois: Tensor, ys: Tensor, xs: Tensor, bins: int,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """features (N, C, H, W), rois (R, 5), sample coordinates ys, xs (R, S * s) -> (R, C, S, S)
    in ``memory_format`` (contiguous or channels-last).

    A sparse-dense product: the bins' taps as a CSR matrix (R * S * S, N * H * W) times the
    channels-last feature rows (N * H * W, C). Every entry is a contiguous C-vector update and the
    product runs on all cores: 3x faster than torchvision's CPU RoIAlign kernel (one thread, one
    channel at a time), with the same values. RoIs go in chunks, each written into the (R, C, S, S)
    output, so no second output-sized tensor is ever alive (channels-last: the product's own
    layout, a plain copy).
    """
    N, C, H, W = features.shape
    R, S = rois.shape[0], bins
    dtype = _compute_dtype(features.dtype)
    ys, xs = ys.to(dtype), xs.to(dtype)
    # (N * H * W, C) row-major: a view of channels-last float32 features, else one copy. Not the
    # column-major view that reshape gives of one contiguous image (N = 1): the sparse product
    # copies such a dense operand piecewise (P2 of one 800 x 1216 image: 589 -> 67 ms forward)
    rows = features.permute(0, 2, 3, 1).reshape(N * H * W, C).to(dtype).contiguous()
    out = torch.empty((R, C, S, S), dtype=features.dtype, device=features.device, memory_format=memory_format)  # the features' dtype: the product's float32 is cast on writing
    taps = (2 * (ys.shape[1] // S)) ** 2  # per bin
    # RoIs per chunk: the product's output and the taps (index, weight and their temporaries,
    # ~48 bytes a tap) each within the budget
    chunk = max(4, _FORWARD_CHUNK_BYTES // (S * S * max(C * features.element_size(), taps * 48)))
    for first in range(0, R, chunk):
        part = slice(first, min(first + chunk, R))
        count = part.stop - part.start
        columns, values = _sample_taps(rois[part], ys[part], xs[part], S, features.shape)
        row_starts = torch.arange(0, count * S * S * taps + 1, taps, device=features.device)
        matrix = torch.sparse_csr_tensor(
            row_starts, columns.reshape(-1), values.reshape(-1), size=(count * S * S, N * H * W), check_invariants=False
        )
        with torch.autocast(features.device.type, enabled=False):  # autocast would cast mm to bfloat16
            out[part] = torch.mm(matrix, rows).view(count, S, S, C).permute(0, 3, 1, 2)
    return out


def _bin_weights(coords: Tensor, size: int, bins: int) -> Tensor:
    """coords (R, bins * s) sample positions along an axis of length ``size`` -> (R, bins, size):
    each bin's bilinear weights over the axis, averaged over its ``s`` samples (torchvision's
    boundary rules, via ``_axis_weights``)."""
    low, high, w_low, w_high = _axis_weights(coords, size)
    R, n = coords.shape
    weights = coords.new_zeros(R, n, size)
    weights.scatter_add_(2, low[..., None], w_low[..., None])
    weights.scatter_add_(2, high[..., None], w_high[..., None])
    return weights.view(R, bins, n // bins, size).mean(2)


class _SeparableBilinear(torch.autograd.Function):
    """A bilinear RoI sampler whose weights factor per axis: out[r] = Wy[r] @ F[b_r] @ Wx[r]^T.

    The forward value comes from ``forward_fn`` (``sparse_roi_sample`` on a CPU, torchvision's
    kernel on CUDA); the backward uses the factorisation, so image n's gradient is
    sum_r Wy[r]^T @ dout[r] @ Wx[r]: batched matmuls per image, instead of a scatter of every
    sample (torchvision's CPU kernel). Only the RoIs are kept for the backward.
    """

    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, coords_fn, forward_fn) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.coords_fn = coords_fn
        ctx.features_shape = features.shape
        ctx.features_dtype = features.dtype
        ctx.features_channels_last = is_channels_last(features)
        with torch.no_grad():
            return forward_fn(features, rois)

    @staticmethod
    def backward(ctx, grad: Tensor):
        with torch.autocast(grad.device.type, enabled=False):  # a backward inside autocast: still float32
            return _SeparableBilinear._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: Tensor):
        (rois,) = ctx.saved_tensors
        N, C, H, W = ctx.features_shape
        ys, xs, S = ctx.coords_fn(rois)  # (R, S*s) each, and the number of bins S per side
        dtype = _compute_dtype(ctx.features_dtype)  # sums over many RoIs: float32 under mixed precision
        wy = _bin_weights(ys.to(dtype), H, S)  # (R, S, H)
        wx = _bin_weights(xs.to(dtype), W, S)  # (R, S, W)
        rows = separable_backward(grad.to(dtype), wy, wx, rois[:, 0].long(), N, H, W)  # (N, H, W, C)
        grad_features = rows.permute(0, 3, 1, 2)  # (N, C, H, W), channels-last strides
        if not ctx.features_channels_last:
            grad_features = grad_features.contiguous()
        return grad_features.to(ctx.features_dtype), None, None, None


KERNELS = ("sparse", "torchvision")


def roi_align(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool,
    kernel: str | None = None, memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """RoIAlign, equal to ``torchvision.ops.roi_align`` for a fixed ``sampling_ratio`` > 0.

    features (N, C, H, W), rois (R, 5) ``(batch_index, x1, y1, x2, y2)`` in image pixels ->
    (R, C, S, S). Each of the S x S bins averages ``sampling_ratio``^2 bilinear samples. The value
    is ``kernel``'s: ``"sparse"`` (``sparse_roi_sample``) or ``"torchvision"`` (its compiled kernel);
    None picks by device, sparse on a CPU, torchvision's on CUDA. Both run on either device, so the
    CPU suite also checks the CUDA choice. The gradient is the separable one of ``_SeparableBilinear``.
    ``memory_format``: the result's layout, contiguous or ``torch.channels_last`` (module docstring).
    """
    if sampling_ratio <= 0:
        raise ValueError("this RoIAlign needs a fixed sampling_ratio > 0 (the adaptive one varies per RoI)")
    if kernel is None:
        kernel = "sparse" if features.device.type == "cpu" else "torchvision"
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS} or None, got {kernel!r}")
    S, s = int(output_size), int(sampling_ratio)
    rois = rois.detach()

    def coords(rois: Tensor) -> tuple[Tensor, Tensor, int]:
        offset = 0.5 if aligned else 0.0
        start = rois[:, 1:3] * spatial_scale - offset  # (R, 2) as (x, y)
        size = rois[:, 3:5] * spatial_scale - offset - start
        if not aligned:  # torchvision's legacy behaviour: RoIs at least one cell wide
            size = size.clamp(min=1.0)
        t = (torch.arange(S * s, dtype=rois.dtype, device=rois.device) + 0.5) / (S * s)  # (S*s,)
        return start[:, 1:2] + t * size[:, 1:2], start[:, 0:1] + t * size[:, 0:1], S  # ys, xs (R, S*s)

    def sample(features: Tensor, rois: Tensor) -> Tensor:
        if kernel == "sparse":
            ys, xs, _ = coords(rois)
            return sparse_roi_sample(features, rois, ys, xs, S, memory_format)
        dtype = _compute_dtype(features.dtype)  # half-precision RoIs would move the boxes by pixels
        value = torchvision_roi_align(features.to(dtype), rois.to(dtype), (S, S), spatial_scale, s, aligned)
        return value.to(features.dtype).contiguous(memory_format=memory_format)

    return _SeparableBilinear.apply(features, rois, coords, sample)


def crop_and_resize(
    features: Tensor, rois: Tensor, crop_size: int, memory_format: torch.memory_format = torch.contiguous_format
) -> Tensor:
    """Bilinear crop-and-resize of each RoI to ``crop_size`` squared (TensorFlow's corner semantics).

    Args:
        features: (N, C, H, W).
        rois: (R, 5) rows ``(batch_index, x1, y1, x2, y2)`` in feature index coordinates.
    Returns:
        (R, C, n, n) in ``memory_format``, n = crop_size: sample (u, v) is the bilinear value at
        ``x = x1 + v (x2 - x1) / (n - 1)``, ``y = y1 + u (y2 - y1) / (n - 1)``: the crop's corner
        samples sit on the box's corners, as in ``tf.image.crop_and_resize``, which the seed's
        implementation uses.

    It is RoIAlign with one sample per bin (at the bin's centre) on a box widened by half a step
    on each side: with ``aligned=True`` and scale 1, ``x1' = x1 + 0.5 - w / (2 (n - 1))`` and
    ``w' = w n / (n - 1)`` put sample v at ``x1' - 0.5 + (v + 0.5) w' / n = x1 + v w / (n - 1)``.
    """
    n = int(crop_size)
    if n < 2:
        raise ValueError(f"crop_size must be >= 2, got {n}")
    rois = rois.detach()
    size = rois[:, 3:5] - rois[:, 1:3]  # (R, 2) as (w, h)
    start = rois[:, 1:3] + 0.5 - size / (2 * (n - 1))
    widened = torch.cat((rois[:, :1], start, start + size * (n / (n - 1))), dim=1)
    return roi_align(features, widened, n, 1.0, 1, aligned=True, memory_format=memory_format)
