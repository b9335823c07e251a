"""``scaled_weight_conv2d`` (the training-time fold of a frozen BatchNorm) against autograd through
``conv2d(x, W * s, b)``: the same output and gradients (strided, padded, grouped, channels-last,
bf16 autocast), and no scaled weight among the tensors kept for the backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from frcnn.layers.folded_conv import scaled_weight_conv2d


def inputs(groups: int, channels_last: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 11, 13, generator=g)
    weight = torch.randn(12, 8 // groups, 3, 3, generator=g)
    if channels_last:
        x, weight = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight))
    scale, bias = 0.5 + torch.rand(12, generator=g), torch.randn(12, generator=g)
    return x.requires_grad_(), weight.requires_grad_(), scale, bias.requires_grad_()


@pytest.mark.parametrize("groups,stride,padding,channels_last", [(1, 1, 1, False), (2, 2, 0, True), (4, 2, 1, False)])
def test_output_and_gradients_equal_autograd_through_the_scaled_weight(groups, stride, padding, channels_last):
    x, weight, scale, bias = inputs(groups, channels_last)
    expected = F.conv2d(x, weight * scale[:, None, None, None], bias, stride, padding, 1, groups)
    got = scaled_weight_conv2d(x, weight, scale, bias, stride, padding, 1, groups)
    assert_close(got, expected, rtol=0, atol=0)  # the same convolution
    grad = torch.randn_like(expected)
    for g, e in zip(torch.autograd.grad(got, (x, weight, bias), grad),
                    torch.autograd.grad(expected, (x, weight, bias), grad), strict=True):
        assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_under_bf16_autocast_it_computes_as_autocasts_convolution():
    x, weight, scale, bias = inputs(1, False)
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
