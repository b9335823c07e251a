"""Bilinear sampling of a feature map on a per-RoI grid: the core of crop-and-resize and RoIAlign.

Shape shorthand: N images, C channels, H, W feature size, R RoIs, Hs x Ws samples per RoI.

Coordinates are feature *indices* (integer = cell centre). The boundary rules are torchvision's
RoIAlign rules, so that ``roi_align`` below equals ``torchvision.ops.roi_align``: a sample more
than one cell outside the map is 0; within one cell it takes the edge value.

Why not torchvision's kernel alone: on CPU its backward scatters one sample at a time and took
~20 % of a Faster R-CNN training step. Bilinear weights factor per axis, so the backward here is
two matmuls per image (``_SeparableBilinear``): 3-5x faster than torchvision's backward on CPU
(bench/roi_align_variants.py), and the same code runs on CUDA.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align as torchvision_roi_align


def _axis_weights(coords: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """coords (R, S) along an axis of length ``size`` -> (low, high) int64 and their weights, (R, S)."""
    valid = (coords >= -1.0) & (coords <= size)
    c = coords.clamp(min=0.0)
    low = c.floor().long().clamp(max=size - 1)
    at_edge = low >= size - 1
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(c), c - low.to(c.dtype))
    return low, high, (1.0 - frac) * valid, frac * valid


class _GatherBilinear(torch.autograd.Function):
    """out = sum_k weight_k * rows[index_k] for the four bilinear corners k.

    Autograd through ``index_select`` would keep four (R*Hs*Ws, C) products alive until the
    backward; this keeps only the indices and weights (a few bytes per sample) and writes the
    gradient with one ``index_add_`` per corner.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, index: Tensor, weight: Tensor) -> Tensor:
        """rows (P, C), index (4, S) int64, weight (4, S) -> (S, C)."""
        out = rows.index_select(0, index[0]) * weight[0, :, None]
        for k in range(1, 4):
            out.addcmul_(rows.index_select(0, index[k]), weight[k, :, None])
        ctx.save_for_backward(index, weight)
        ctx.num_rows = rows.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        index, weight = ctx.saved_tensors
        grad_rows = None
        if ctx.needs_input_grad[0]:
            grad_rows = grad_out.new_zeros((ctx.num_rows, grad_out.shape[1]))
            for k in range(4):
                grad_rows.index_add_(0, index[k], grad_out * weight[k, :, None])
        return grad_rows, None, None


def bilinear_sample(features: Tensor, batch_index: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """features (N, C, H, W), batch_index (R,) int64, ys (R, Hs), xs (R, Ws) -> (R, C, Hs, Ws).

    Sample (u, v) of RoI r is the bilinear value of image ``batch_index[r]`` at ``(ys[r, u], xs[r, v])``.
    The sample coordinates carry no gradient (RoIs are detached proposals), the features do.
    """
    N, C, H, W = features.shape
    R, Hs, Ws = batch_index.shape[0], ys.shape[1], xs.shape[1]
    flat = features.permute(0, 2, 3, 1).reshape(N * H * W, C)  # channels-last rows
    ys, xs = ys.detach().to(features.dtype), xs.detach().to(features.dtype)
    y0, y1, wy0, wy1 = _axis_weights(ys, H)
    x0, x1, wx0, wx1 = _axis_weights(xs, W)
    base = (batch_index.long() * (H * W))[:, None, None]  # (R, 1, 1)
    index, weight = [], []
    for yi, wy in ((y0, wy0), (y1, wy1)):
        for xi, wx in ((x0, wx0), (x1, wx1)):
            index.append((base + yi[:, :, None] * W + xi[:, None, :]).reshape(-1))  # (R*Hs*Ws,)
            weight.append((wy[:, :, None] * wx[:, None, :]).reshape(-1))
    out = _GatherBilinear.apply(flat, torch.stack(index), torch.stack(weight))  # (R*Hs*Ws, C)
    return out.view(R, Hs, Ws, C).permute(0, 3, 1, 2)  # (R, Hs, Ws, C) -> (R, C, Hs, Ws)


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


# Bound on the backward's per-chunk intermediates (two of this size are alive at a time).
_BACKWARD_CHUNK_BYTES = 4 * 2**20


class _SeparableBilinear(torch.autograd.Function):
    """A bilinear RoI sampler whose weights factor per axis: out[r] = Wy[r] @ F[b_r] @ Wx[r]^T.

    The forward value comes from ``forward_fn`` (torchvision's RoIAlign kernel, or our gather);
    the backward uses the factorisation, so image n's gradient is sum_r Wy[r]^T @ dout[r] @ Wx[r]:
    one batched matmul and one matmul per image, instead of a scatter of every sample (torchvision's
    CPU kernel) or of four (R * S * S, C) products. Only the RoIs are kept for the backward.
    """

    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, coords_fn, forward_fn) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.coords_fn = coords_fn
        ctx.features_shape = features.shape
        with torch.no_grad():
            return forward_fn(features, rois)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (rois,) = ctx.saved_tensors
        N, C, H, W = ctx.features_shape
        ys, xs, S = ctx.coords_fn(rois)  # (R, S*s) each, and the number of bins S per side
        grad = grad.contiguous()
        wy = _bin_weights(ys.to(grad.dtype), H, S)  # (R, S, H)
        wx = _bin_weights(xs.to(grad.dtype), W, S)  # (R, S, W)
        image = rois[:, 0].long()
        grad_features = grad.new_zeros((N, C, H, W))
        # RoIs in chunks: the x-contracted intermediate is C*S*W per RoI (at FPN's P2 with 64 RoIs
        # an image, ~30 MB unchunked, more than torchvision's whole backward keeps)
        chunk = max(1, _BACKWARD_CHUNK_BYTES // (C * S * W * grad.element_size()))
        for n in range(N):  # a loop over images
            sel = (image == n).nonzero()[:, 0]
            if sel.numel() == 0:
                continue
            acc = grad.new_zeros((H, C * W))  # image n's gradient, (H, C, W) as rows of y
            for part in sel.split(chunk):
                Rc = part.numel()
                g = torch.bmm(grad[part].reshape(Rc, C * S, S), wx[part])  # (Rc, C*S, W): x contracted
                g = g.view(Rc, C, S, W).permute(0, 2, 1, 3).reshape(Rc * S, C * W)  # rows (r, bin row)
                acc.addmm_(wy[part].reshape(Rc * S, H).t(), g)  # y and the RoIs contracted
            grad_features[n] = acc.view(H, C, W).permute(1, 0, 2)
        return grad_features, None, None, None


def crop_and_resize(features: Tensor, rois: Tensor, crop_size: int) -> Tensor:
    """Bilinear crop-and-resize of each RoI to ``crop_size`` squared (TensorFlow's corner semantics).

    Args:
        features: (N, C, H, W).
        rois: (R, 5) rows ``(batch_index, x1, y1, x2, y2)`` in feature index coordinates.
    Returns:
        (R, C, n, n), n = crop_size: sample (u, v) is the bilinear value at
        ``x = x1 + v (x2 - x1) / (n - 1)``, ``y = y1 + u (y2 - y1) / (n - 1)``: the crop's corner
        samples sit on the box's corners, as in ``tf.image.crop_and_resize``, which the seed's
        implementation uses.
    """
    n = int(crop_size)
    if n < 2:
        raise ValueError(f"crop_size must be >= 2, got {n}")
    rois = rois.detach()

    def coords(rois: Tensor) -> tuple[Tensor, Tensor, int]:
        t = torch.arange(n, dtype=rois.dtype, device=rois.device) / (n - 1)  # (n,)
        xs = rois[:, 1:2] + t * (rois[:, 3:4] - rois[:, 1:2])  # (R, n)
        ys = rois[:, 2:3] + t * (rois[:, 4:5] - rois[:, 2:3])
        return ys, xs, n

    def sample(features: Tensor, rois: Tensor) -> Tensor:
        ys, xs, _ = coords(rois)
        return bilinear_sample(features, rois[:, 0].long(), ys, xs)

    return _SeparableBilinear.apply(features, rois, coords, sample)


def roi_align(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    """RoIAlign, equal to ``torchvision.ops.roi_align`` for a fixed ``sampling_ratio`` > 0.

    features (N, C, H, W), rois (R, 5) ``(batch_index, x1, y1, x2, y2)`` in image pixels ->
    (R, C, S, S). Each of the S x S bins averages ``sampling_ratio``^2 bilinear samples. The value
    is torchvision's kernel's; the gradient is the separable one of ``_SeparableBilinear``.
    """
    if sampling_ratio <= 0:
        raise ValueError("this RoIAlign needs a fixed sampling_ratio > 0 (the adaptive one varies per RoI)")
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
        # torchvision's kernel: the reference value, and it allocates only the output
        return torchvision_roi_align(features, rois.to(features.dtype), (S, S), spatial_scale, s, aligned)

    return _SeparableBilinear.apply(features, rois, coords, sample)
