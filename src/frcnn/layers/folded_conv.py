"""A convolution whose weight is scaled per output channel, ``conv2d(x, W * s[:, None, None, None], b)``,
without keeping the scaled weight for the backward: the training-time fold of a frozen BatchNorm
(``frcnn.layers.training_rewrite``).

Shape shorthand: N images, C_in / C_out channels, H x W the map, k x k the kernel.

Why a custom backward: autograd through ``W * s`` keeps the scaled copy of every folded weight
alive until the backward (the convolution's input gradient needs it) -- on ResNet-50 C4 that is
the trunk's weights again, +11 % on the training step's memory peak. Here only ``W`` and ``s``
are kept (``W`` is the parameter itself, no memory) and the backward scales again, one weight-sized
multiply per convolution; the gradients are autograd's: ``dW = dW_folded * s``, ``dx`` and ``db``
those of the folded convolution. Under ``torch.compile`` the plain expression runs: the compiler
chooses what to keep (its partitioner recomputes such a multiply).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _as_pair(value) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 2


class _ScaledWeightConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, scale, bias, stride, padding, dilation, groups):
        device, ctx.x_dtype = x.device.type, x.dtype
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        x = x.to(dtype)  # what autocast does to a convolution's inputs (a no-op without autocast)
        folded = (weight * scale.reshape(-1, 1, 1, 1).to(weight.dtype)).to(dtype)
        fused_bias = bias.to(dtype) if bias is not None else None
        ctx.save_for_backward(x, weight, scale)
        ctx.settings = (stride, padding, dilation, groups, bias is not None)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        with torch.autocast(device, enabled=False):
            return F.conv2d(x, folded, fused_bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight, scale = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.settings
        needs_x, needs_w, _, needs_b = ctx.needs_input_grad[:4]
        scale_4d = scale.reshape(-1, 1, 1, 1).to(weight.dtype)
        folded = (weight * scale_4d).to(x.dtype)  # recomputed: not kept since the forward
        grad_x, grad_folded, grad_bias = torch.ops.aten.convolution_backward(
            grad.to(x.dtype), x, folded, [weight.shape[0]] if has_bias else None, _as_pair(stride),
            _as_pair(padding), _as_pair(dilation), False, [0, 0], groups, [needs_x, needs_w, needs_b and has_bias],
        )
        grad_weight = grad_folded.to(weight.dtype) * scale_4d if needs_w else None
        grad_bias = grad_bias.to(ctx.bias_dtype) if grad_bias is not None else None
        grad_x = grad_x.to(ctx.x_dtype) if grad_x is not None else None
        return grad_x, grad_weight, None, grad_bias, None, None, None, None


def scaled_weight_conv2d(
    x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int
) -> Tensor:
    """x (N, C_in, H, W), weight (C_out, C_in / groups, k, k), scale (C_out,) (no gradient: the
    frozen norm's constants), bias (C_out,) or None -> conv2d(x, weight * scale, bias) (N, C_out, H', W').

    ``padding``: numbers only (a padding string runs the plain expression)."""
    if isinstance(padding, str) or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return F.conv2d(x, weight * scale.reshape(-1, 1, 1, 1).to(weight.dtype), bias, stride, padding, dilation, groups)
    return _ScaledWeightConv.apply(x, weight, scale.detach(), bias, stride, padding, dilation, groups)
