"""A conv + ReLU trunk with 1x1 prediction heads whose backward visits only the locations that
have a gradient: the RPN head's shape, where the losses read a few hundred sampled anchors.

Shape shorthand: N images, C input channels, D trunk channels, H x W the map, k the trunk's kernel
side (odd, stride 1, "same" padding), O_j output channels of head j, P the locations with a
non-zero output gradient, T = k * k taps.

    hidden = relu(conv_kxk(x))                  (N, D, H, W)
    out_j  = conv_1x1_j(hidden)                 (N, O_j, H, W)

Why: the RPN's losses read 256 sampled anchors per image, so the gradient of its outputs is zero
at all but <= 256 of the H * W locations of each level (P2 of a 256 px FPN batch: 4096 per image;
~3 % of them carry a gradient). A dense backward still runs the k x k convolution's data and
weight gradients over every location: on ResNet-50 C4 that is the step's heaviest op (12 %), on
FPN the P2 level alone ~9 %. Here the backward gathers the k x k input patches of the P locations
and runs both gradients as small matmuls there, then scatters the input gradient back: the same
sums, without the terms that are zero (float rounding differs: another summation order).

``hidden`` is saved only where the caller expects many locations to carry a gradient
(``expected_share``); elsewhere it is recomputed at the P locations in the backward (one more small
matmul), which keeps a map per level out of the step's memory peak. When most locations carry a
gradient after all (another loss on the outputs, or a small map), the ordinary dense backward
runs, unless the trunk's weight outweighs the patches (``runs_dense``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frcnn.layers.winograd import WinogradConv2d, conv3x3

# Above this share of gradient-carrying locations the dense backward runs (gathering k * k patches
# per location then costs more than the convolutions' own backward) -- unless the weight is the
# larger operand (``runs_dense``).
DENSE_SHARE = 0.5
# Below this expected share, ``hidden`` is recomputed at the P locations instead of saved: that
# costs at most this share of the forward, and saves a (N, D, H, W) map until the backward.
RECOMPUTE_SHARE = 0.25


def _hidden(x: Tensor, weight: Tensor, bias: Tensor | None, winograd: bool = False) -> Tensor:
    """relu(conv_kxk(x)); ``winograd``: a 3 x 3 trunk by ``frcnn.layers.winograd`` where it applies."""
    if winograd and weight.shape[-1] == 3:
        return F.relu(conv3x3(x, weight, bias))
    return F.relu(F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2))


def _heads(hidden: Tensor, heads: Sequence[tuple[Tensor, Tensor | None]]) -> tuple[Tensor, ...]:
    return tuple(F.conv2d(hidden, w, b) for w, b in heads)


def runs_dense(carrying: int, locations: int, trunk_channels: int) -> bool:
    """Whether the backward runs dense: more than ``DENSE_SHARE`` of the ``locations`` (N * H * W)
    carry a gradient, and the patches (P, k * k * C) are at least half the trunk weight
    (D, k * k * C), i.e. 2 P >= D. Where the weight is the larger, oneDNN's dense weight gradient
    allocates two more weight-sized buffers while the patches are small, and the matmuls are
    faster too (MobileNetV2's 1280 -> 1280 RPN conv on a 12 x 12 map, batch 2, 2 threads: 158 ms
    against 203 ms, 113 MB less at the step's memory peak)."""
    return carrying > DENSE_SHARE * locations and 2 * carrying >= trunk_channels


def _taps(n: Tensor, y: Tensor, x: Tensor, k: int, H: int, W: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Locations (P,) each -> image, row and column (P, T) of each tap of their k x k window (dy
    major, as a weight's (kh, kw)), clamped into the map, and the (P, T) mask of taps inside it."""
    r = k // 2
    offsets = torch.arange(-r, r + 1, device=y.device)
    ty = (y[:, None, None] + offsets[None, :, None]).expand(-1, k, k).reshape(len(y), k * k)
    tx = (x[:, None, None] + offsets[None, None, :]).expand(-1, k, k).reshape(len(x), k * k)
    inside = (ty >= 0) & (ty < H) & (tx >= 0) & (tx < W)
    return n[:, None].expand_as(ty), ty.clamp(0, H - 1), tx.clamp(0, W - 1), inside


class _SparseGradConvHeads(torch.autograd.Function):
    """``_heads(_hidden(x))``; the backward only at the locations with a non-zero output gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, save_hidden: bool, winograd: bool, *head_params):
        heads = list(zip(head_params[0::2], head_params[1::2], strict=True))
        hidden = _hidden(x, weight, bias, winograd)
        ctx.winograd = winograd
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not a zero map
        ctx.save_for_backward(x, weight, bias, hidden if save_hidden else None, *head_params)
        return _heads(hidden, heads)

    @staticmethod
    def backward(ctx, *grads):
        x, weight, bias, hidden, *head_params = ctx.saved_tensors
        heads = list(zip(head_params[0::2], head_params[1::2], strict=True))
        N, C, H, W = x.shape
        carrying = torch.zeros((N, H, W), dtype=torch.bool, device=x.device)
        for g in grads:
            if g is not None:
                carrying |= (g != 0).any(dim=1)
        n, y, xx = carrying.nonzero(as_tuple=True)  # the P locations, (P,) each
        if runs_dense(len(n), N * H * W, weight.shape[0]):
            found = _dense_backward(ctx.needs_input_grad, x, weight, bias, hidden, heads, grads, ctx.winograd)
        else:
            found = _sparse_backward(ctx.needs_input_grad, x, weight, bias, hidden, heads, grads, (n, y, xx))
        return (*found[:3], None, None, *found[3:])


def _sparse_backward(needs, x, weight, bias, hidden, heads, grads, locations) -> list[Tensor | None]:
    """Both gradients from the P locations' patches: (P, T*C) @ (T*C, D) matmuls."""
    n, y, xx = locations
    N, C, H, W = x.shape
    D, k, P = weight.shape[0], weight.shape[-1], len(n)
    dtype = torch.promote_types(x.dtype, torch.float32)  # the small matmuls in float32 at least
    tn, ty, tx, inside = _taps(n, y, xx, k, H, W)  # (P, T) each
    patches = (x[tn, :, ty, tx].to(dtype) * inside[..., None]).reshape(P, k * k * C)  # (P, T*C)
    w_rows = weight.to(dtype).permute(0, 2, 3, 1).reshape(D, k * k * C)  # (D, T*C), taps as the patches
    if hidden is None:  # recomputed at the P locations
        pre = patches @ w_rows.t()  # (P, D)
        if bias is not None:
            pre += bias.to(dtype)
        hidden_at = pre.clamp(min=0)
    else:
        hidden_at = hidden[n, :, y, xx].to(dtype)  # (P, D)

    grad_hidden = hidden_at.new_zeros((P, D))
    head_grads: list[Tensor | None] = []
    for (w, b), g in zip(heads, grads, strict=True):
        if g is None:  # an output the loss did not use
            head_grads += [None, None]
            continue
        outputs = w.shape[0]  # O_j
        g_at = g[n, :, y, xx].to(dtype)  # (P, O_j)
        grad_hidden += g_at @ w.to(dtype).reshape(outputs, D)
        grad_w = (g_at.t() @ hidden_at).view(outputs, D, 1, 1).to(w.dtype)
        head_grads += [grad_w, g_at.sum(0).to(b.dtype) if b is not None else None]
    grad_pre = grad_hidden * (hidden_at > 0)  # (P, D)

    grad_x = grad_weight = grad_bias = None
    if needs[0]:
        taps = (grad_pre @ w_rows).view(P * k * k, C)  # (P*T, C)
        # Each tap's pixel row of the (N*H*W, C) map; taps outside the map go to one spare row past
        # it. index_add_ adds a row at a time (vectorised); index_put_(accumulate=True) adds element
        # by element on CPU (C4's 1024-channel trunk at 377 locations, 2 threads: 0.86 against 22 ms).
        pixel = torch.where(inside, (tn * H + ty) * W + tx, N * H * W).reshape(-1)  # (P*T,)
        rows = x.new_zeros((N * H * W + 1, C), dtype=dtype).index_add_(0, pixel, taps)
        grad_x = rows[:-1].view(N, H, W, C).permute(0, 3, 1, 2).to(x.dtype)  # (N, C, H, W) with channels-last strides
    if needs[1]:
        grad_weight = (grad_pre.t() @ patches).view(D, k, k, C).permute(0, 3, 1, 2).to(weight.dtype)
    if needs[2] and bias is not None:
        grad_bias = grad_pre.sum(0).to(bias.dtype)
    return [grad_x, grad_weight, grad_bias, *head_grads]


def _dense_backward(needs, x, weight, bias, hidden, heads, grads, winograd: bool = False) -> list[Tensor | None]:
    """The ordinary backward of the convolutions (``hidden`` recomputed when it was not saved)."""
    if hidden is None:
        hidden = _hidden(x, weight, bias, winograd)
    grad_hidden = torch.zeros_like(hidden)
    head_grads: list[Tensor | None] = []
    for (w, b), g in zip(heads, grads, strict=True):
        if g is None:
            head_grads += [None, None]
            continue
        g_hidden, g_w, g_b = torch.ops.aten.convolution_backward(
            g, hidden, w, [w.shape[0]] if b is not None else None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [True, True, b is not None],
        )
        grad_hidden += g_hidden
        head_grads += [g_w, g_b]
    grad_pre = grad_hidden * (hidden > 0)
    pad = weight.shape[-1] // 2
    grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad_pre, x, weight, [weight.shape[0]] if bias is not None else None, [1, 1], [pad, pad], [1, 1], False,
        [0, 0], 1, [needs[0], needs[1], needs[2] and bias is not None],
    )
    return [grad_x, grad_weight, grad_bias, *head_grads]


def conv_relu_heads(
    x: Tensor,
    conv: nn.Conv2d,
    heads: Sequence[nn.Conv2d],
    sparse_backward: bool = True,
    expected_share: float = 1.0,
) -> tuple[Tensor, ...]:
    """x (N, C, H, W) -> per head (N, O_j, H, W) = head_j(relu(conv(x))) (module docstring).

    ``conv``: k x k, stride 1, padding k // 2, no dilation or groups; ``heads``: 1x1 convolutions.
    ``expected_share``: the caller's bound on the share of locations that will carry a gradient
    (below ``RECOMPUTE_SHARE`` ``hidden`` is not saved). ``sparse_backward`` False (or no gradient
    needed, or tracing / compiling) runs the plain modules.
    """
    k = conv.kernel_size[0]
    plain = (
        not sparse_backward
        or not torch.is_grad_enabled()
        or torch.jit.is_tracing()  # export traces the plain graph
        or torch.compiler.is_compiling()
        or conv.kernel_size != (k, k)
        or k % 2 == 0
        or conv.stride != (1, 1)
        or conv.padding != (k // 2, k // 2)
        or conv.dilation != (1, 1)
        or conv.groups != 1
        or conv.padding_mode != "zeros"
        or any(h.kernel_size != (1, 1) or h.stride != (1, 1) or h.padding != (0, 0) or h.groups != 1 for h in heads)
    )
    winograd = isinstance(conv, WinogradConv2d)  # frcnn.layers.winograd: the forward's 3 x 3 by Winograd
    if plain:
        return _heads(_hidden(x, conv.weight, conv.bias, winograd), [(h.weight, h.bias) for h in heads])
    params = [t for h in heads for t in (h.weight, h.bias)]
    save_hidden = expected_share >= RECOMPUTE_SHARE
    return _SparseGradConvHeads.apply(x, conv.weight, conv.bias, save_hidden, winograd, *params)
