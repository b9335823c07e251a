"""The backward of the separable bilinear RoI sampler (``frcnn.layers.roi_align``): image n's
gradient is sum_r Wy[r]^T @ dout[r] @ Wx[r] over its RoIs r, as matmuls on the windows the RoIs span.

Shape shorthand: N images, C channels, H, W the map, R RoIs, S x S bins per RoI; Wy[r] (S, H) and
Wx[r] (S, W) the RoI's bilinear weights per axis, zero outside its own rows and columns.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from frcnn.layers.memory_format import is_channels_last

# Bounds on the per-chunk x-contracted rows, and the fixed cost per chunk of RoIs in bytes of
# memory traffic it is worth (``group_rois``). CPU: measured inside training steps (bench/README.md
# "RoIAlign backward by windows"; smaller chunks win in isolation, with warm caches, and lose inside
# a step); CUDA: large, so that few kernels launch.
_BACKWARD_CHUNK_BYTES = {"cpu": 2**22, "cuda": 2**25}
_CHUNK_OVERHEAD_BYTES = {"cpu": 2**22, "cuda": 2**25}


def _spans(weights: Tensor) -> tuple[Tensor, Tensor]:
    """weights (R, S, L) -> [first, end) (R,) int64: the span of positions along the axis where
    some bin of the RoI has a nonzero weight (end <= first when there is none)."""
    L = weights.shape[2]
    touched = (weights != 0).any(1)  # (R, L)
    position = torch.arange(L, device=weights.device)
    first = torch.where(touched, position, L).amin(1)
    end = torch.where(touched, position + 1, 0).amax(1)
    return first, end


def separable_backward(grad: Tensor, wy: Tensor, wx: Tensor, image: Tensor, N: int, H: int, W: int) -> Tensor:
    """grad (R, C, S, S) in either layout, wy (R, S, H), wx (R, S, W), image (R,) -> (N, H, W, C)
    contiguous: per image n and channel, the sum over its RoIs r of Wy[r]^T @ dout[r] @ Wx[r].

    Each RoI touches only its own rows and columns of the map, so the RoIs of an image go in
    chunks, sorted by their first row, and each chunk works on the window its RoIs span: x
    contracted first (``_contract_x``: (Rc * S, Wc * C) rows, bin row by window column by
    channel), then y and the RoIs in one (Hc, Rc * S) @ (Rc * S, Wc * C) product accumulated into
    the window of the image's (H, W * C) rows (a strided view: columns x0 * C .. x1 * C of rows
    y0 .. y1). Against the whole map per chunk (the earlier form) this does the work of the RoIs'
    area instead of the map's: bench/README.md "RoIAlign backward by windows"."""
    R, C, S, _ = grad.shape
    bins_last = is_channels_last(grad) and R > 0  # (R, S, S, C) rows are a view
    rows = grad.new_zeros((N, H, W * C))
    y_first, y_end = _spans(wy)
    x_first, x_end = _spans(wx)
    device = grad.device.type if grad.device.type in _BACKWARD_CHUNK_BYTES else "cpu"
    cell = C * grad.element_size()  # bytes of one map cell's channels
    budget, overhead = _BACKWARD_CHUNK_BYTES[device] // cell, _CHUNK_OVERHEAD_BYTES[device] // cell  # in cells
    for n in range(N):
        sel = (image == n).nonzero()[:, 0]
        if sel.numel() == 0:
            continue
        sel = sel[y_first[sel].argsort(stable=True)]
        bounds = torch.stack([y_first[sel], y_end[sel], x_first[sel], x_end[sel]], 1).tolist()  # one sync
        for first, last, (y0, y1, x0, x1) in group_rois(bounds, S, budget, overhead):
            part = sel[first:last]
            g = _contract_x(grad[part], wx[part, :, x0:x1], bins_last)  # (Rc * S, Wc * C)
            window = rows[n, y0:y1, x0 * C : x1 * C]  # (Hc, Wc * C), row stride W * C
            window.addmm_(wy[part, :, y0:y1].reshape(-1, y1 - y0).t(), g)  # y and the RoIs contracted
    return rows.view(N, H, W, C)


def group_rois(bounds: list[list[int]], S: int, budget: int, overhead: int) -> Iterator[tuple[int, int, tuple]]:
    """bounds: per RoI, in order, its (y0, y1, x0, x1) span on the map -> chunks of consecutive
    RoIs (first, last) and the window (y0, y1, x0, x1) they span; RoIs with no weight inside the
    map are left out.

    A RoI joins the chunk before it while one window for both costs no more than two: the cost of
    a chunk of n RoIs on an Hc x Wc window, in map cells, is its x-contracted rows (n * S * Wc),
    the window's read and write (2 * Hc * Wc) and ``overhead`` (the fixed cost of a chunk's few
    calls); the rows stay within ``budget`` cells. So overlapping RoIs share a window and far
    apart ones do not widen each other's."""
    def cost(n: int, y0: int, y1: int, x0: int, x1: int) -> int:
        return n * S * (x1 - x0) + 2 * (y1 - y0) * (x1 - x0) + overhead

    chunk = None  # (first, n, window)
    for i, (y0, y1, x0, x1) in enumerate(bounds):
        if y1 <= y0 or x1 <= x0:  # wholly outside the map
            if chunk is not None:
                yield chunk[0], i, chunk[2]
            chunk = None
            continue
        if chunk is not None:
            first, n, window = chunk
            merged = (min(window[0], y0), max(window[1], y1), min(window[2], x0), max(window[3], x1))
            fits = (n + 1) * S * (merged[3] - merged[2]) <= budget
            if fits and cost(n + 1, *merged) <= cost(n, *window) + cost(1, y0, y1, x0, x1):
                chunk = (first, n + 1, merged)
                continue
            yield first, i, window
        chunk = (i, 1, (y0, y1, x0, x1))
    if chunk is not None:
        yield chunk[0], len(bounds), chunk[2]


def _contract_x(grad: Tensor, wx: Tensor, bins_last: bool) -> Tensor:
    """grad (Rc, C, S, S), wx (Rc, S, Wc) -> (Rc * S, Wc * C): sum_j dout[r, c, i, j] Wx[r, j, x]
    as rows (r, i) of columns (x, c).

    A channels-last gradient is read as its (S, C) rows: one (Wc, S) @ (S, C) product per
    (RoI, bin row). A contiguous one (an MLP box head's: the flatten's gradient) as its
    (C * S, S) rows: one (C * S, S) @ (S, Wc) product per RoI, whose result (a chunk's worth,
    in cache) is then permuted into the rows, instead of one out-of-cache copy of the whole
    gradient into channels-last first."""
    Rc, C, S, _ = grad.shape
    Wc = wx.shape[2]
    if bins_last:
        x_weights = wx.transpose(1, 2)[:, None].expand(Rc, S, Wc, S).reshape(Rc * S, Wc, S)
        return torch.bmm(x_weights, grad.permute(0, 2, 3, 1).reshape(Rc * S, S, C)).view(Rc * S, Wc * C)
    g = torch.bmm(grad.reshape(Rc, C * S, S), wx)  # (Rc, C * S, Wc)
    return g.view(Rc, C, S, Wc).permute(0, 2, 3, 1).reshape(Rc * S, Wc * C)
