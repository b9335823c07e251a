"""``scaled_weight_conv2d`` (the training-time fold of a frozen BatchNorm) against autograd through
``conv2d(x, W * s, b)``: the same output and gradients (strided, padded, grouped, channels-last,
bf16 autocast), and no scaled weight among the tensors kept for the backward; its matmul backward
against ``aten::convolution_backward``, each gradient in its tensor's layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from frcnn.layers import folded_conv
from frcnn.layers.folded_conv import _matmul_conv_backward, scaled_weight_conv2d

# An 11 x 13 map: the output gradient is larger than the weight, so the backward scales the weight;
# 4 x 5 and 3 x 3 maps: it is smaller, so the backward scales the gradient (asserted below). The
# matmul backward (groups 1: no more output locations than channels, or a 1 x 1 kernel on a
# channels-last input) has its own tests below.
MAPS = [(11, 13), (4, 5), (3, 3)]


def inputs(groups: int, channels_last: bool, size: tuple[int, int] = MAPS[0]):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, *size, generator=g)
    weight = torch.randn(12, 8 // groups, 3, 3, generator=g)
    if channels_last:
        x, weight = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight))
    scale, bias = 0.5 + torch.rand(12, generator=g), torch.randn(12, generator=g)
    return x.requires_grad_(), weight.requires_grad_(), scale, bias.requires_grad_()


@pytest.mark.parametrize("size", MAPS)
@pytest.mark.parametrize("groups,stride,padding,channels_last", [(1, 1, 1, False), (2, 2, 0, True), (4, 2, 1, False)])
def test_output_and_gradients_equal_autograd_through_the_scaled_weight(groups, stride, padding, channels_last, size):
    x, weight, scale, bias = inputs(groups, channels_last, size)
    expected = F.conv2d(x, weight * scale[:, None, None, None], bias, stride, padding, 1, groups)
    assert (expected.numel() < weight.numel()) == (size != MAPS[0])  # each backward branch is covered
    got = scaled_weight_conv2d(x, weight, scale, bias, stride, padding, 1, groups)
    if expected.numel() >= weight.numel():
        assert_close(got, expected, rtol=0, atol=0)  # the same convolution, of the folded weight
    else:  # conv(x, W) * s + b: the same function, rounded differently
        assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
        assert not torch.equal(got, F.conv2d(x, weight, bias, stride, padding, 1, groups))  # the scale is applied
    grad = torch.randn_like(expected)
    for g, e in zip(torch.autograd.grad(got, (x, weight, bias), grad),
                    torch.autograd.grad(expected, (x, weight, bias), grad), strict=True):
        assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", MAPS)
def test_under_bf16_autocast_it_computes_as_autocasts_convolution(size):
    x, weight, scale, bias = inputs(1, False, size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.conv2d(x, weight * scale[:, None, None, None], bias, 1, 1)
        got = scaled_weight_conv2d(x, weight, scale, bias, 1, 1, 1, 1)
    assert got.dtype == expected.dtype == torch.bfloat16
    assert_close(got, expected, rtol=2e-2, atol=2e-2)
    grad = torch.randn_like(expected)
    got_grads = torch.autograd.grad(got, (x, weight, bias), grad)
    for g, e in zip(got_grads, torch.autograd.grad(expected, (x, weight, bias), grad), strict=True):
        assert g.dtype == e.dtype == torch.float32  # gradients in the leaves' dtype
        assert_close(g, e, rtol=5e-2, atol=5e-2 * e.abs().max().item())


def test_the_scaled_weight_is_not_kept_for_the_backward():
    x, weight, scale, bias = inputs(1, False)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        scaled_weight_conv2d(x, weight, scale, bias, 1, 1, 1, 1)
    assert {t.data_ptr() for t in kept} <= {x.data_ptr(), weight.data_ptr(), scale.data_ptr()}
    kept.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        F.conv2d(x, weight * scale[:, None, None, None], bias, 1, 1)  # plain autograd keeps W * s
    assert any(t.shape == weight.shape and t.data_ptr() != weight.data_ptr() for t in kept)


class _Allocations(TorchDispatchMode):
    """The shapes of the distinct storages that the dispatched ops return (views and detaches of
    one tensor count once)."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: dict[int, tuple[int, ...]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.storages.setdefault(t.untyped_storage().data_ptr(), tuple(t.shape))
        return out

    def count(self, shape: torch.Size) -> int:
        return list(self.storages.values()).count(tuple(shape))


def weight_sized_in_backward(size: tuple[int, int]) -> int:
    x, weight, scale, bias = inputs(1, False, size)
    out = scaled_weight_conv2d(x, weight, scale, bias, 1, 1, 1, 1)
    with _Allocations() as mode:
        out.backward(torch.ones_like(out))
    return mode.count(weight.shape)


def weight_sized_in_forward(size: tuple[int, int]) -> int:
    x, weight, scale, bias = inputs(1, False, size)
    with _Allocations() as mode:
        scaled_weight_conv2d(x, weight, scale, bias, 1, 1, 1, 1)
    return mode.count(weight.shape)


def test_where_the_output_is_smaller_the_forward_makes_no_weight_sized_tensor():
    assert weight_sized_in_forward(MAPS[1]) == 0  # 4 x 5 map (480 outputs, 864 weights): the output is scaled
    assert weight_sized_in_forward(MAPS[0]) == 1  # 11 x 13: the folded weight


def test_where_the_gradient_is_smaller_the_backward_makes_no_weight_sized_copy():
    assert weight_sized_in_backward(MAPS[1]) == 1  # 4 x 5 map (480 gradient values, 864 weights): dW only
    assert weight_sized_in_backward(MAPS[0]) == 2  # 11 x 13: the scaled weight again, then dW


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same strides where the size is not 1 (autograd's layout contract for accumulated gradients)."""
    return a.shape == b.shape and all(sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()) if n != 1)


@pytest.mark.parametrize("stride,padding,dilation,channels_last", [(1, 1, 1, False), (2, 0, 1, True), (2, 2, 2, False),
                                                                  (1, 0, 1, True), (2, 0, 1, False), (3, 0, 1, True),
                                                                  (1, 1, 1, True), (2, 2, 2, True), (3, 1, 2, True)])
@pytest.mark.parametrize("kernel", [3, 1])
@pytest.mark.parametrize("weight_layout", ["as input", "mixed"])
def test_the_matmul_backward_equals_the_convolutions(stride, padding, dilation, channels_last, kernel, weight_layout):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64)
    weight = torch.randn(40, 6, kernel, kernel, generator=g, dtype=torch.float64)
    weight_channels_last = channels_last == (weight_layout == "as input")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if weight_channels_last:
        weight = weight.contiguous(memory_format=torch.channels_last)
    out = F.conv2d(x, weight, None, stride, padding, dilation)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    expected_x, expected_w, _ = torch.ops.aten.convolution_backward(
        grad, x, weight, None, [stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0], 1, [True, True, False])
    got_x, got_w = _matmul_conv_backward(grad, x, weight, [stride] * 2, [padding] * 2, [dilation] * 2, True, True)
    assert_close(got_x, expected_x, rtol=1e-12, atol=1e-12)
    assert_close(got_w, expected_w, rtol=1e-12, atol=1e-12)
    # The gradients in their tensors' layouts (autograd accumulates them without a copy).
    assert got_x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert same_layout(got_w, weight)


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_small_map_takes_the_matmul_backward_with_autograds_gradients(channels_last, monkeypatch):
    x, weight, scale, bias = inputs(1, channels_last, MAPS[2])  # 3 x 3, stride 2, padding 1: 2 x 2 out
    expected = F.conv2d(x, weight * scale[:, None, None, None], bias, 2, 1)
    assert expected.shape[0] * expected.shape[2] * expected.shape[3] <= weight.shape[0]  # 8 locations, 12 channels
    calls = []
    matmul = folded_conv._matmul_conv_backward
    monkeypatch.setattr(folded_conv, "_matmul_conv_backward", lambda *a: calls.append(1) or matmul(*a))
    got = scaled_weight_conv2d(x, weight, scale, bias, 2, 1, 1, 1)
    grad = torch.randn_like(expected)
    for g, e in zip(torch.autograd.grad(got, (x, weight, bias), grad),
                    torch.autograd.grad(expected, (x, weight, bias), grad), strict=True):
        assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert calls == [1]


@pytest.mark.parametrize("size", MAPS[:2])  # 11 x 13: the backward scales the weight; 4 x 5: the gradient
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_1x1_convolution_on_a_channels_last_input_takes_the_matmul_backward(size, stride, channels_last, monkeypatch):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, *size, generator=g)
    weight = torch.randn(12, 8, 1, 1, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(), weight.requires_grad_()
    scale, bias = 0.5 + torch.rand(12, generator=g), torch.randn(12, generator=g).requires_grad_()
    expected = F.conv2d(x, weight * scale[:, None, None, None], bias, stride)
    calls = []
    matmul = folded_conv._matmul_conv_backward
    monkeypatch.setattr(folded_conv, "_matmul_conv_backward", lambda *a: calls.append(1) or matmul(*a))
    got = scaled_weight_conv2d(x, weight, scale, bias, stride, 0, 1, 1)
    grad = torch.randn(expected.shape, generator=g).contiguous(memory_format=torch.channels_last)
    got_grads = torch.autograd.grad(got, (x, weight, bias), grad)
    for name, got_grad, e in zip("x weight bias".split(), got_grads,
                                 torch.autograd.grad(expected, (x, weight, bias), grad), strict=True):
        assert_close(got_grad, e, rtol=1e-5, atol=1e-5, msg=name)
    # The matmuls on a channels-last input (contiguous pixels are no rows of a matrix), and by size
    # alone where the output has no more locations than channels (4 x 5 at stride 2: 2 x 2 x 3 = 12).
    by_size = expected.shape[0] * expected.shape[2] * expected.shape[3] <= weight.shape[0]
    assert by_size == (size == MAPS[1] and stride == 2)
    assert calls == ([1] if channels_last or by_size else [])
    if channels_last:
        assert got_grads[0].is_contiguous(memory_format=torch.channels_last)  # the input's layout


def test_the_1x1_matmul_backward_under_bf16_autocast_gives_float32_gradients_close_to_autocasts():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 8, 9, 9, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(12, 8, 1, 1, generator=g).requires_grad_()
    scale, bias = 0.5 + torch.rand(12, generator=g), torch.randn(12, generator=g).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.conv2d(x, weight * scale[:, None, None, None], bias, 2)
        got = scaled_weight_conv2d(x, weight, scale, bias, 2, 0, 1, 1)
    assert got.dtype == expected.dtype == torch.bfloat16
    grad = torch.randn(expected.shape, generator=g).to(torch.bfloat16)
    for got_grad, e in zip(torch.autograd.grad(got, (x, weight, bias), grad),
                           torch.autograd.grad(expected, (x, weight, bias), grad), strict=True):
        assert got_grad.dtype == e.dtype == torch.float32
        assert_close(got_grad, e, rtol=5e-2, atol=5e-2 * e.abs().max().item())
