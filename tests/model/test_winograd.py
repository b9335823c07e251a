"""frcnn.layers.winograd: F(4 x 4, 3 x 3) convolutions against float64 direct convolutions (value
and all three gradients), the routing (where it runs, where the plain convolution does), the swap
and its undo, the RPN head's forward, and the chunking's scratch reuse."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from frcnn.layers import winograd
from frcnn.layers.training_rewrite import optimize_for_training, restore_training_rewrite
from frcnn.layers.winograd import WinogradConv2d, eligible, restore_winograd, use_winograd, winograd_conv3x3
from frcnn.modeling.rpn.head import RPNHead
from tests.model.fpn_builders import build_ours

CL = torch.channels_last


def _relative(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference).abs().max() / reference.abs().max()).item()


def _case(N, C, K, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g).contiguous(memory_format=CL)
    w = (torch.randn(K, C, 3, 3, generator=g) / (3 * C**0.5)).contiguous(memory_format=CL)
    b = torch.randn(K, generator=g)
    return x, w, b


@pytest.mark.parametrize(
    "shape",
    [(2, 8, 5, 8, 8), (1, 3, 4, 4, 4), (2, 6, 7, 13, 22), (1, 16, 16, 1, 9), (3, 5, 6, 30, 17), (1, 4, 4, 2, 2)],
)
def test_forward_and_gradients_equal_a_float64_direct_convolution(shape):
    """Maps that are and are not multiples of the 4 x 4 tile (the last tile row / column past
    the map), a 1-pixel-high map, several images: value, dx, dW, db against float64."""
    N, C, K, H, W = shape
    x, w, b = _case(N, C, K, H, W)
    grad = torch.randn(N, K, H, W, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    y = winograd._Winograd3x3.apply(x, w, b)
    y.backward(grad)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(xd, wd, bd, padding=1)
    ref.backward(grad.double())
    assert y.shape == ref.shape
    assert _relative(y, ref) < 1e-5
    assert _relative(x.grad, xd.grad) < 2e-5
    assert _relative(w.grad, wd.grad) < 2e-5
    assert _relative(b.grad, bd.grad) < 1e-6
    # layouts: the output and dx channels-last like x, dW in the weight's layout
    assert y.is_contiguous(memory_format=CL) and x.grad.is_contiguous(memory_format=CL)
    assert w.grad.is_contiguous(memory_format=CL)


def test_rounding_is_within_ten_times_a_direct_float32_convolutions_on_a_p2_sized_map():
    """The stated accuracy (module docstring): ~1e-5 of the magnitude, a direct float32 one ~1e-6."""
    x, w, b = _case(1, 64, 64, 40, 40)
    ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    direct = _relative(F.conv2d(x, w, b, padding=1), ref)
    ours = _relative(winograd_conv3x3(x, w, b), ref)
    assert ours < 2e-5 and direct < ours < 30 * direct


def test_chunks_of_tile_rows_reuse_one_scratch_and_give_the_same_result(monkeypatch):
    """Chunks of one tile row (many chunks, the last one partial) against one chunk for the whole
    map: the same values to float rounding, and the scratch buffers are allocated once per name."""
    x, w, b = _case(2, 8, 8, 19, 21)
    whole = winograd_conv3x3(x, w, b)
    made = []
    original = winograd._Scratch.take

    def counting(self, name, shape):
        if name not in self.buffers:
            made.append(name)
        return original(self, name, shape)

    monkeypatch.setattr(winograd._Scratch, "take", counting)
    monkeypatch.setattr(winograd, "_FORWARD_TILES", 1)  # one tile row per chunk: 5 chunks per image
    chunked = winograd_conv3x3(x, w, b)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5 * whole.abs().max().item())  # GEMM blocking
    assert sorted(made) == ["blocks", "m", "slab", "v", "windows"]  # once each, for 10 chunks
    assert winograd._row_chunks(5, 6, 1) == [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]
    assert winograd._row_chunks(5, 6, 13) == [(0, 3), (3, 2)]



@pytest.mark.parametrize(("top", "left"), [(-1, -1), (3, -1), (4, 2), (9, 5)])
def test_slab_copies_the_window_and_zeroes_only_past_the_map(top, left):
    """``_slab`` into a reused (dirty) buffer: the map's pixels where the window is inside it, zeros
    past its edges (the padding), whatever the buffer held."""
    pixels = torch.arange(1.0, 1 + 2 * 12 * 10 * 3).view(2, 12, 10, 3)
    out = torch.full((6, 9, 3), -7.0)
    expected = torch.zeros(6, 9, 3)
    for i in range(6):
        for j in range(9):
            y, x = top + i, left + j
            if 0 <= y < 12 and 0 <= x < 10:
                expected[i, j] = pixels[1, y, x]
    assert torch.equal(winograd._slab(pixels, 1, top, 6, 9, left, out), expected)
    assert torch.equal(winograd._slab(pixels, 1, 20, 6, 9, left, out), torch.zeros(6, 9, 3))  # wholly past

def test_routing_runs_winograd_only_where_it_applies(monkeypatch):
    calls = []
    monkeypatch.setattr(winograd._Winograd3x3, "apply", lambda *a: calls.append(a) or F.conv2d(a[0], a[1], a[2], padding=1))
    x, w, b = _case(1, 64, 64, 32, 32)
    winograd.conv3x3(x, w, b)
    assert len(calls) == 1
    winograd.conv3x3(x.contiguous(), w, b)  # contiguous input: oneDNN's layout choice stays
    winograd.conv3x3(x[:, :, :28, :28].contiguous(memory_format=CL), w, b)  # 7 x 7 = 49 tiles < MIN_TILES
    winograd.conv3x3(x.double(), w.double(), b.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        winograd.conv3x3(x, w, b)
    assert len(calls) == 1


def test_eligible_convolutions_and_the_swap_keeps_parameters_and_state_dict():
    model = nn.Sequential(
        nn.Conv2d(64, 64, 3, padding=1),  # swapped
        nn.Conv2d(64, 64, 3, padding=1, stride=2),
        nn.Conv2d(64, 64, 1),
        nn.Conv2d(32, 64, 3, padding=1),  # too few channels
        nn.Conv2d(64, 64, 3, padding=2, dilation=2),
        nn.Conv2d(64, 64, 3, padding=1, groups=2),
    )
    assert [eligible(m) for m in model] == [True, False, False, False, False, False]
    keys, weight = list(model.state_dict()), model[0].weight
    assert use_winograd(model) == 1
    assert type(model[0]) is WinogradConv2d and model[0].weight is weight and list(model.state_dict()) == keys
    assert restore_winograd(model) == 1
    assert type(model[0]) is nn.Conv2d and model[0].weight is weight


def test_swapped_module_computes_the_convolution_and_its_gradients():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1).to(memory_format=CL)
    swapped = WinogradConv2d.from_conv(conv)
    x = torch.randn(2, 64, 33, 35).contiguous(memory_format=CL)
    y_plain = conv(x)
    y_plain.square().sum().backward()
    plain_grads = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    y = swapped(x)
    y.square().sum().backward()
    torch.testing.assert_close(y, y_plain, rtol=1e-4, atol=1e-4)
    for p, expected in zip(conv.parameters(), plain_grads, strict=True):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-3 * expected.abs().max().item())


def test_rpn_head_forward_by_winograd_and_its_sparse_backward_equal_the_plain_head():
    torch.manual_seed(0)
    head = RPNHead(64, 3, conv_channels=64).to(memory_format=CL)
    for layer in (head.conv, head.objectness, head.deltas):
        nn.init.normal_(layer.weight, std=0.1)
    x = torch.randn(2, 64, 32, 32).contiguous(memory_format=CL).requires_grad_()
    mask = torch.zeros(2, 3, 32, 32)
    mask.view(-1)[torch.randperm(mask.numel())[:300]] = 1  # a few sampled anchors carry a gradient

    def run():
        logits, deltas = head(x, sampled_per_image=150)
        ((logits * mask).sum() + (deltas * mask.repeat(1, 4, 1, 1)).sum()).backward()
        grads = [x.grad.clone()] + [p.grad.clone() for p in head.parameters()]
        x.grad = None
        head.zero_grad()
        return logits.detach(), grads

    plain_logits, plain_grads = run()
    assert use_winograd(head) == 1
    logits, grads = run()
    torch.testing.assert_close(logits, plain_logits, rtol=1e-4, atol=1e-5)
    for g, expected in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_training_rewrite_swaps_fpn_and_rpn_convolutions_and_restores_them():
    model, _ = build_ours("resnet50_fpn")
    before = {n: type(m) for n, m in model.named_modules()}
    optimize_for_training(model)
    swapped = sorted(n for n, m in model.named_modules() if isinstance(m, WinogradConv2d))
    # the FPN's four 3 x 3 output convolutions and the RPN head's trunk; not the trunk's (folded) ones
    assert len(swapped) == 5 and all(before[n] is nn.Conv2d for n in swapped)
    assert sum("rpn" in n for n in swapped) == 1
    optimize_for_training(restore_training_rewrite(model), winograd=False)
    assert not any(isinstance(m, WinogradConv2d) for m in model.modules())
    restore_training_rewrite(model)
    assert {n: type(m) for n, m in model.named_modules()} == before
