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
which keeps no weight-sized copy alive through the convolution's backward (the deep stages). The
forward chooses the same way: where the output is the smaller it runs ``conv(x, W) * s + b``, the
output scaled in place, and makes no weight-sized tensor (ResNet-50's layer4 at 256 px: the folded
3 x 3 weight is 9.4 MB of fresh memory per call, 36x its output; equal to float rounding, not
bitwise, to the folded convolution; under autocast the weight is always folded). Under
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


def _is_pointwise(weight: Tensor, padding: list[int]) -> bool:
    """A 1 x 1 kernel without padding (any stride): the convolution is a matmul over the pixels."""
    return tuple(weight.shape[-2:]) == (1, 1) and padding == [0, 0]


def _takes_matmul_backward(grad: Tensor, x: Tensor, weight: Tensor, padding: list[int], groups: int) -> bool:
    """Where the matmul backward is the faster or the leaner: groups 1 and either a 1 x 1 kernel on
    a channels-last CPU input (every operand is then a view of the tensors as they are; oneDNN's
    1 x 1 backward runs at 0.35-0.85 of the machine's matmul rate, these matmuls at 0.75-0.95:
    bench/README.md "1 x 1 convolutions' backward as matmuls"; not measured against cuDNN), or no
    more output locations (N * H' * W') than output channels (the patches are then no larger than
    the weight, on any device)."""
    if groups != 1:
        return False
    if _is_pointwise(weight, padding) and is_channels_last(x) and x.device.type == "cpu":
        return True
    return grad.shape[0] * grad.shape[2] * grad.shape[3] <= weight.shape[0]


def _tap_windows(
    k: tuple[int, int], out: tuple[int, int], stride: list[int], dilation: list[int]
) -> list[tuple[slice, slice]]:
    """The (rows, columns) of the padded map that kernel tap (i, j) reads for each of the H' x W'
    outputs, taps in row-major (i, j) order (a channels-last weight's order)."""
    return [
        (slice(i * dilation[0], i * dilation[0] + stride[0] * (out[0] - 1) + 1, stride[0]),
         slice(j * dilation[1], j * dilation[1] + stride[1] * (out[1] - 1) + 1, stride[1]))
        for i in range(k[0]) for j in range(k[1])
    ]


def _matmul_conv_backward(
    grad: Tensor, x: Tensor, weight: Tensor, stride: list[int], padding: list[int], dilation: list[int],
    needs_x: bool, needs_w: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """The gradients of ``conv2d(x, weight)`` (groups 1) as matmuls over the input's k x k patches:
    grad (N, C_out, H', W'), x (N, C_in, H, W), weight (C_out, C_in, k, k) -> (dx, dW), dx in the
    input's layout, dW in the weight's.

    A channels-last input's patches are its pixels' rows, (N * H' * W', k * k * C_in) in the order
    of a channels-last weight's rows: for a 1 x 1 kernel without padding they are a view of the
    input (every ``stride``-th pixel), otherwise the k * k shifted views of the padded map side by
    side; the weight and dW need no copies then. A contiguous input's patches come from ``unfold``
    (C_in * k * k columns, a contiguous weight's order). Where the patches are no larger than the
    weight (no more output locations than output channels) this avoids oneDNN's two further
    weight-sized buffers (ResNet-50's layer4 3 x 3, channels-last: +18 MB at FPN training's memory
    peak); for a 1 x 1 kernel it is faster too (bench/README.md "1 x 1 convolutions' backward")."""
    N, C_out, H_out, W_out = grad.shape
    C_in, (H, W), k = x.shape[1], x.shape[-2:], tuple(weight.shape[-2:])
    rows = grad.permute(0, 2, 3, 1).reshape(N * H_out * W_out, C_out)  # (N*L, C_out)
    if not is_channels_last(x):
        return _unfold_backward(rows, x, weight, (H_out, W_out), stride, padding, dilation, needs_x, needs_w)
    ph, pw = padding
    padded = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x  # (pad copies, even by 0)
    pixels = padded.permute(0, 2, 3, 1)  # (N, H_p, W_p, C_in), a view of channels-last memory
    windows = _tap_windows(k, (H_out, W_out), stride, dilation)
    w_rows = weight.permute(0, 2, 3, 1).reshape(C_out, -1)  # (C_out, k*k*C_in): a view if channels-last
    grad_x = grad_w = None
    if needs_w:
        taps = [pixels[:, r, c] for r, c in windows]  # each (N, H', W', C_in)
        patches = (taps[0] if len(taps) == 1 else torch.stack(taps, dim=3)).reshape(N * H_out * W_out, -1)
        grad_w = (rows.t() @ patches).view(C_out, *k, C_in).permute(0, 3, 1, 2)  # channels-last (C_out, C_in, k, k)
        del taps, patches
    if needs_x:
        cols = (rows @ w_rows).view(N, H_out, W_out, len(windows), C_in)
        if len(windows) == 1 and stride == [1, 1] and padding == [0, 0]:
            grad_pixels = cols[:, :, :, 0]  # a 1 x 1 kernel at stride 1: every pixel, once
        else:
            grad_pixels = pixels.new_zeros(pixels.shape)  # (N, H_p, W_p, C_in)
            for t, (r, c) in enumerate(windows):
                grad_pixels[:, r, c] += cols[:, :, :, t]
            grad_pixels = grad_pixels[:, ph : ph + H, pw : pw + W]
        grad_x = grad_pixels.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    if grad_w is not None and not is_channels_last(weight):
        grad_w = grad_w.contiguous()
    return grad_x, grad_w


def _unfold_backward(
    rows: Tensor, x: Tensor, weight: Tensor, out: tuple[int, int], stride: list[int], padding: list[int],
    dilation: list[int], needs_x: bool, needs_w: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """``_matmul_conv_backward`` for a contiguous input: rows (N*L, C_out) the output gradient's."""
    N, L, C_out, k = x.shape[0], out[0] * out[1], weight.shape[0], weight.shape[-2:]
    grad_x = grad_w = None
    if needs_w:
        patches = F.unfold(x, k, dilation=dilation, padding=padding, stride=stride)  # (N, C_in*k*k, L)
        patches = patches.permute(0, 2, 1).reshape(N * L, -1)  # (N*L, C_in*k*k)
        grad_w = (rows.t() @ patches).view(weight.shape)
        del patches
    if needs_x:
        cols = (rows @ weight.reshape(C_out, -1)).view(N, L, -1).permute(0, 2, 1)  # (N, C_in*k*k, L)
        grad_x = F.fold(cols, x.shape[-2:], k, dilation=dilation, padding=padding, stride=stride)
    if grad_w is not None and is_channels_last(weight):
        grad_w = grad_w.contiguous(memory_format=torch.channels_last)
    return grad_x, grad_w


def _output_numel(x: Tensor, weight: Tensor, stride, padding, dilation) -> int:
    """N * C_out * H' * W' of ``conv2d(x, weight, stride=..., padding=..., dilation=...)``."""
    stride, padding, dilation = _as_pair(stride), _as_pair(padding), _as_pair(dilation)
    numel = x.shape[0] * weight.shape[0]
    for size, k, s, p, d in zip(x.shape[-2:], weight.shape[-2:], stride, padding, dilation):
        numel *= max((size + 2 * p - d * (k - 1) - 1) // s + 1, 0)
    return numel


def _bias_grad(grad: Tensor) -> Tensor:
    """grad (N, C_out, H', W') -> (C_out,), summed in float32 at least."""
    return grad.sum((0, 2, 3), dtype=torch.promote_types(grad.dtype, torch.float32))


class _ScaledWeightConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, scale, bias, stride, padding, dilation, groups):
        device, ctx.x_dtype = x.device.type, x.dtype
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        x = x.to(dtype)  # what autocast does to a convolution's inputs (a no-op without autocast)
        fused_bias = bias.to(dtype) if bias is not None else None
        ctx.save_for_backward(x, weight, scale)
        ctx.settings = (stride, padding, dilation, groups, bias is not None)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        with torch.autocast(device, enabled=False):
            if dtype == weight.dtype and _output_numel(x, weight, stride, padding, dilation) < weight.numel():
                # The output is the smaller (the deep stages): conv(x, W * s) + b = conv(x, W) * s + b,
                # scaled in place; no weight-sized tensor is made (each would be fresh memory every step).
                y = F.conv2d(x, weight, None, stride, padding, dilation, groups)
                y.mul_(scale.reshape(1, -1, 1, 1).to(dtype))
                return y.add_(fused_bias.reshape(1, -1, 1, 1)) if fused_bias is not None else y
            folded = (weight * scale.reshape(-1, 1, 1, 1).to(weight.dtype)).to(dtype)
            return F.conv2d(x, folded, fused_bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight, scale = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.settings
        needs_x, needs_w, _, needs_b = ctx.needs_input_grad[:4]
        grad = grad.to(x.dtype)
        settings = (_as_pair(stride), _as_pair(padding), _as_pair(dilation), False, [0, 0], groups)
        matmuls = _takes_matmul_backward(grad, x, weight, settings[1], groups)
        if grad.numel() < weight.numel():
            # The convolution is linear in its weight, and s scales output channels: the gradients
            # of conv(x, W * s) are those of conv(x, W) at the output gradient scaled by s. That
            # scales an activation-sized tensor where it is the smaller (the deep stages), and no
            # weight-sized copy is alive during the convolution's backward.
            scaled = grad * scale.reshape(1, -1, 1, 1).to(grad.dtype)
            if matmuls:
                grad_x, grad_weight = _matmul_conv_backward(scaled, x, weight.to(x.dtype), *settings[:3], needs_x, needs_w)
            else:
                grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
                    scaled, x, weight.to(x.dtype), None, *settings, [needs_x, needs_w, False]
                )
            del scaled
            grad_weight = grad_weight.to(weight.dtype) if needs_w else None
            grad_bias = _bias_grad(grad) if needs_b and has_bias else None
        else:
            scale_4d = scale.reshape(-1, 1, 1, 1).to(weight.dtype)
            folded = (weight * scale_4d).to(x.dtype)  # recomputed: not kept since the forward
            if matmuls:
                grad_x, grad_folded = _matmul_conv_backward(grad, x, folded, *settings[:3], needs_x, needs_w)
                grad_bias = _bias_grad(grad) if needs_b and has_bias else None
            else:
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
