"""The sparse RPN-head backward against autograd through the plain convolutions (the reference):
the same outputs, and the same gradients for inputs and every weight, when only a few locations
carry a gradient (the RPN's sampled anchors), when many do (the dense fallback), with ``hidden``
saved or recomputed, channels-last inputs, and an output the loss does not use."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from frcnn.layers import sparse_heads
from frcnn.layers.sparse_heads import conv_relu_heads, runs_dense
from frcnn.modeling.rpn.head import RPNHead


def reference(x, conv, heads):
    hidden = F.relu(conv(x))
    return tuple(h(hidden) for h in heads)


def parts(seed: int = 0):
    torch.manual_seed(seed)
    conv, objectness, deltas = nn.Conv2d(16, 24, 3, padding=1), nn.Conv2d(24, 3, 1), nn.Conv2d(24, 12, 1)
    return conv, [objectness, deltas]


def sparse_gradients(shape_o=(2, 3, 9, 11), shape_d=(2, 12, 9, 11)):
    """Output gradients at four locations: the corners (zero padding), one inside, and one where
    only the objectness has a gradient (a background anchor)."""
    g_o, g_d = torch.zeros(shape_o), torch.zeros(shape_d)
    g = torch.Generator().manual_seed(1)
    for n, a, y, x in [(0, 1, 0, 0), (1, 2, 8, 10), (1, 1, 0, 10), (0, 0, 4, 5)]:
        g_o[n, a, y, x] = torch.randn((), generator=g)
        if (y, x) != (4, 5):
            g_d[n, 4 * a : 4 * a + 4, y, x] = torch.randn(4, generator=g)
    return g_o, g_d


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("expected_share", [0.05, 1.0])  # hidden recomputed / saved
@pytest.mark.parametrize("dense", [False, True])  # a few locations / every location has a gradient
def test_gradients_equal_autograd_of_the_plain_convolutions(channels_last, expected_share, dense):
    conv, heads = parts()
    x = torch.randn(2, 16, 9, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grads = (torch.randn(2, 3, 9, 11), torch.randn(2, 12, 9, 11)) if dense else sparse_gradients()
    leaves = [x, conv.weight, conv.bias, *(t for h in heads for t in (h.weight, h.bias))]

    expected_out = reference(x, conv, heads)
    expected = torch.autograd.grad(expected_out, leaves, grads)
    got_out = conv_relu_heads(x, conv, heads, expected_share=expected_share)
    for o, e in zip(got_out, expected_out, strict=True):
        assert_close(o, e, rtol=0, atol=0)  # the forward is the plain one
    got = torch.autograd.grad(got_out, leaves, grads)
    for g, e in zip(got, expected, strict=True):
        assert_close(g, e, rtol=1e-5, atol=1e-6)
    if not dense:  # only the 3 x 3 windows of the four locations receive an input gradient
        assert (got[0] != 0).any(dim=1).sum() <= 4 * 9
        assert got[0].is_contiguous(memory_format=torch.channels_last)  # a dense map (the spare row is cut off)


def test_the_dense_backward_runs_for_many_locations_unless_the_weight_is_larger():
    assert not runs_dense(carrying=10, locations=100, trunk_channels=8)  # 10 % of the map
    assert runs_dense(carrying=60, locations=100, trunk_channels=8)  # 60 %: dense
    assert runs_dense(carrying=60, locations=100, trunk_channels=120)  # 2 * 60 >= 120
    assert not runs_dense(carrying=60, locations=100, trunk_channels=121)  # the weight outweighs the patches
    # MobileNetV2's RPN on 384 px (12 x 12 map, batch 2, every location carrying): sparse
    assert not runs_dense(carrying=288, locations=288, trunk_channels=1280)


def test_a_wide_trunk_on_a_small_map_takes_the_sparse_backward_with_autograds_gradients(monkeypatch):
    torch.manual_seed(0)
    conv, heads = nn.Conv2d(16, 96, 3, padding=1), [nn.Conv2d(96, 3, 1), nn.Conv2d(96, 12, 1)]
    x = torch.randn(2, 16, 3, 4, requires_grad=True)  # 24 locations, every one carrying: 2 * 24 < 96
    grads = (torch.randn(2, 3, 3, 4), torch.randn(2, 12, 3, 4))
    leaves = [x, conv.weight, conv.bias, *(t for h in heads for t in (h.weight, h.bias))]
    expected = torch.autograd.grad(reference(x, conv, heads), leaves, grads)
    calls = []
    sparse = sparse_heads._sparse_backward
    monkeypatch.setattr(sparse_heads, "_sparse_backward", lambda *a: calls.append(1) or sparse(*a))
    got = torch.autograd.grad(conv_relu_heads(x, conv, heads), leaves, grads)
    assert calls == [1]
    for g, e in zip(got, expected, strict=True):
        assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_an_unused_output_gets_no_gradient():
    conv, heads = parts()
    x = torch.randn(2, 16, 9, 11, requires_grad=True)
    g_o, _ = sparse_gradients()
    logits, _ = conv_relu_heads(x, conv, heads, expected_share=0.05)
    got = torch.autograd.grad((logits * g_o).sum(), [x, conv.weight, heads[1].weight], allow_unused=True)
    logits_ref, _ = reference(x, conv, heads)
    expected = torch.autograd.grad((logits_ref * g_o).sum(), [x, conv.weight])
    assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
    assert_close(got[1], expected[1], rtol=1e-5, atol=1e-6)
    assert got[2] is None  # as autograd gives for the deltas' weight


def test_rpn_head_levels_sparse_equals_dense_backward():
    """The RPN head over three levels, the loss on 20 sampled anchors: the same gradients with
    ``sparse_backward`` on and off."""
    torch.manual_seed(0)
    head = RPNHead(8, num_anchors=3, conv_channels=16)
    maps = [torch.randn(2, 8, s, s, requires_grad=True) for s in (16, 8, 4)]
    pick = torch.randperm(2 * 3 * (16 * 16 + 8 * 8 + 4 * 4))[:20]
    results = []
    for sparse in (False, True):
        head.sparse_backward = sparse
        logits, deltas = head.predict_levels(maps, sampled_per_image=10)  # (2, M), (2, M, 4)
        loss = logits.reshape(-1)[pick].sigmoid().sum() + deltas.reshape(-1, 4)[pick].square().sum()
        results.append(torch.autograd.grad(loss, [*maps, *head.parameters()]))
    for got, expected in zip(results[1], results[0], strict=True):
        assert_close(got, expected, rtol=1e-5, atol=1e-7)

