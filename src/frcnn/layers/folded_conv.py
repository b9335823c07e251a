"""A convolution whose weight is scaled per output channel, ``conv2d(x, W * s[:, None, None, None], b)``,
without keeping the scaled weight for the backward: the training-time fold of a frozen BatchNorm
(``frcnn.layers.training_rewrite``).

Shape shorthand: N images, C_in / C_out channels, H x W the map, k x k the kernel.

Why a custom backward: autograd through ``W * s`` keeps the scaled copy of every folded weight
alive until the backward (the convolution's input gradient needs it) -- on ResNet-50 C4 that is
the trunk's weights again, +11 % on the training step's memory peak. Here only ``W`` and ``s``
are kept (``W`` is the parameter itself, no memory) and the backward scales whichever is smaller:
the weight again (``dW = dW_folded * s``, ``dx`` and ``db`` those of the folded convolution), or the
output gradient (``dx``, ``dW`` those of ``conv(x, W)`` at ``grad * s``; ``db`` the sum of ``grad``),
which keeps no weight-sized copy alive through the convolution's backward (the deep stages). Under
``torch.compile`` the plain expression runs: the compiler chooses what to keep (its partitioner
recomputes such a multiply).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from frcnn.layers.memory_format import is_channels_last


def _as_pair(value) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 2


def _matmul_conv_backward(
    grad: Tensor, x: Tensor, weight: Tensor, stride: list[int], padding: list[int], dilation: list[int],
    needs_x: bool, needs_w: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """The gradients of ``conv2d(x, weight)`` (groups 1) as matmuls over the input's k x k patches:
    grad (N, C_out, H', W'), x (N, C_in, H, W), weight (C_out, C_in, k, k) -> (dx, dW).

    For a map with no more output locations (N * H' * W') than output channels: the patches
    (N * H' * W', C_in * k * k) are then no larger than the weight, whereas oneDNN's convolution
    backward allocates two more weight-sized buffers (ResNet-50's layer4 3 x 3, channels-last:
    +18 MB at FPN training's memory peak)."""
    N, C_out, L = grad.shape[0], grad.shape[1], grad.shape[2] * grad.shape[3]
    k = weight.shape[-2:]
    rows = grad.permute(0, 2, 3, 1).reshape(N * L, C_out)  # (N*L, C_out)
    grad_x = grad_w = None
    if needs_w:
        patches = F.unfold(x, k, dilation=dilation, padding=padding, stride=stride)  # (N, C_in*k*k, L)
        patches = patches.permute(0, 2, 1).reshape(N * L, -1)  # (N*L, C_in*k*k)
        grad_w = (rows.t() @ patches).view(weight.shape)
        del patches
    if needs_x:
        cols = (rows @ weight.reshape(C_out, -1)).view(N, L, -1).permute(0, 2, 1)  # (N, C_in*k*k, L)
        grad_x = F.fold(cols, x.shape[-2:], k, dilation=dilation, padding=padding, stride=stride)
        if is_channels_last(x):
            grad_x = grad_x.contiguous(memory_format=torch.channels_last)  # the input's layout
    return grad_x, grad_w


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
        grad = grad.to(x.dtype)
        settings = (_as_pair(stride), _as_pair(padding), _as_pair(dilation), False, [0, 0], groups)
        if grad.numel() < weight.numel():
            # The convolution is linear in its weight, and s scales output channels: the gradients
            # of conv(x, W * s) are those of conv(x, W) at the output gradient scaled by s. That
            # scales an activation-sized tensor where it is the smaller (the deep stages), and no
            # weight-sized copy is alive during the convolution's backward.
            scaled = grad * scale.reshape(1, -1, 1, 1).to(grad.dtype)
            if groups == 1 and grad.shape[0] * grad.shape[2] * grad.shape[3] <= weight.shape[0]:
                grad_x, grad_weight = _matmul_conv_backward(scaled, x, weight.to(x.dtype), *settings[:3], needs_x, needs_w)
            else:
                grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
                    scaled, x, weight.to(x.dtype), None, *settings, [needs_x, needs_w, False]
                )
            del scaled
            grad_weight = grad_weight.to(weight.dtype) if needs_w else None
            sum_dtype = torch.promote_types(grad.dtype, torch.float32)
            grad_bias = grad.sum((0, 2, 3), dtype=sum_dtype) if needs_b and has_bias else None
        else:
            scale_4d = scale.reshape(-1, 1, 1, 1).to(weight.dtype)
            folded = (weight * scale_4d).to(x.dtype)  # recomputed: not kept since the forward
            grad_x, grad_folded, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, folded, [weight.shape[0]] if has_bias else None, *settings,
                [needs_x, needs_w, needs_b and has_bias],
            )
            del folded  # weight-sized: freed before the gradient's multiply, which then works in place
            grad_weight = grad_folded.to(weight.dtype).mul_(scale_4d) if needs_w else None
            del grad_folded
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
