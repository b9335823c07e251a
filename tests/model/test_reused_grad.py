"""Large fully connected layers whose weight gradient reuses one block of memory
(frcnn.layers.reused_grad) against ``nn.Linear``: bitwise the same outputs and gradients, the memory
reused step after step under ``zero_grad(set_to_none=True)``, and never a gradient a caller can
still see overwritten (accumulation, a kept reference)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from frcnn.layers.reused_grad import (
    ReusedGradLinear,
    restore_grad_memory,
    reuse_grad_memory,
    reused_grad_bytes,
)
from frcnn.layers.training_rewrite import optimize_for_training, restore_training_rewrite

from .test_training_rewrite import resnet18_detector


def pair(bias: bool = True, seed: int = 0) -> tuple[nn.Linear, ReusedGradLinear]:
    torch.manual_seed(seed)
    plain = nn.Linear(300, 40, bias=bias)
    return plain, ReusedGradLinear.from_linear(copy.deepcopy(plain))


def backward(layer: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """Runs layer(x) backward from ``upstream``; -> the input's gradient."""
    x = x.detach().requires_grad_(True)
    (layer(x) * upstream).sum().backward()
    return x.grad


@pytest.mark.parametrize("bias", [True, False])
def test_outputs_and_gradients_are_bitwise_those_of_nn_linear(bias):
    plain, reused = pair(bias)
    x, up = torch.randn(17, 300), torch.randn(17, 40)
    assert torch.equal(reused(x), plain(x))
    gx_plain, gx_reused = backward(plain, x, up), backward(reused, x, up)
    assert torch.equal(gx_reused, gx_plain)
    assert torch.equal(reused.weight.grad, plain.weight.grad)
    assert reused.weight.grad.stride() == reused.weight.stride()
    if bias:
        assert torch.equal(reused.bias.grad, plain.bias.grad)


def test_batched_input_matches_nn_linear():
    plain, reused = pair()
    x, up = torch.randn(3, 5, 300), torch.randn(3, 5, 40)
    torch.testing.assert_close(backward(reused, x, up), backward(plain, x, up))
    torch.testing.assert_close(reused.weight.grad, plain.weight.grad)
    torch.testing.assert_close(reused.bias.grad, plain.bias.grad)


def test_memory_is_reused_across_steps_with_set_to_none():
    plain, reused = pair()
    optimizer = torch.optim.SGD(reused.parameters(), lr=0.0)
    pointers = []
    for step in range(3):
        torch.manual_seed(10 + step)
        x, up = torch.randn(8, 300), torch.randn(8, 40)
        backward(plain, x, up)
        backward(reused, x, up)
        assert torch.equal(reused.weight.grad, plain.weight.grad)  # this step's gradient, not a stale one
        pointers.append(reused.weight.grad.data_ptr())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        plain.zero_grad(set_to_none=True)
    assert len(set(pointers)) == 1
    assert (reused.grad_buffer.allocated, reused.grad_buffer.reused) == (1, 2)
    assert reused_grad_bytes(reused) == 300 * 40 * 4


def test_accumulated_gradients_are_summed_not_overwritten():
    """Two backwards without zeroing (gradient accumulation): the first gradient still holds the
    memory, so the second is computed elsewhere and added to it."""
    plain, reused = pair()
    for seed in (1, 2):
        torch.manual_seed(seed)
        x, up = torch.randn(8, 300), torch.randn(8, 40)
        backward(plain, x, up)
        backward(reused, x, up)
    torch.testing.assert_close(reused.weight.grad, plain.weight.grad, rtol=0, atol=1e-6)
    assert reused.grad_buffer.allocated == 2 and reused.grad_buffer.reused == 0


def test_a_kept_reference_to_an_old_gradient_is_never_overwritten():
    plain, reused = pair()
    x, up = torch.randn(8, 300), torch.randn(8, 40)
    backward(reused, x, up)
    kept = reused.weight.grad
    snapshot = kept.clone()
    reused.weight.grad = None  # what zero_grad(set_to_none=True) does, with ``kept`` still alive
    backward(reused, 2 * x, up)
    assert torch.equal(kept, snapshot)
    torch.testing.assert_close(reused.weight.grad, 2 * snapshot)
    assert reused.weight.grad.data_ptr() != kept.data_ptr()
    del kept
    reused.weight.grad = None
    backward(reused, x, up)  # the memory of the second gradient is free again: reused
    assert reused.grad_buffer.reused == 1


def test_the_gradient_reaches_the_parameter_through_autograd():
    """Hooks on the parameter (DDP's reducer uses them) see the gradient."""
    _, reused = pair()
    seen = []
    reused.weight.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.clone()))
    backward(reused, torch.randn(4, 300), torch.randn(4, 40))
    assert len(seen) == 1 and torch.equal(seen[0], reused.weight.grad)


def test_autocast_and_other_dtypes_run_the_plain_linear():
    plain, reused = pair()
    x = torch.randn(6, 300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = reused(x), plain(x)
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
    half_plain, half_reused = copy.deepcopy(plain).double(), copy.deepcopy(reused).double()
    xd = x.double()
    assert torch.equal(backward(half_reused, xd, torch.ones(6, 40).double()),
                       backward(half_plain, xd, torch.ones(6, 40).double()))
    assert half_reused.grad_buffer.allocated == 1  # float64 weights and inputs take the reused path too


def test_swap_keeps_parameters_and_state_dict_and_restores():
    model = nn.Sequential(nn.Linear(2048, 1024), nn.ReLU(), nn.Linear(1024, 10))
    params = dict(model.named_parameters())
    keys = set(model.state_dict())
    assert reuse_grad_memory(model) == 1  # only the layer with >= 2 ** 20 weights
    assert type(model[0]) is ReusedGradLinear and type(model[2]) is nn.Linear
    assert set(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())
    model(torch.randn(2, 2048)).sum().backward()
    assert reused_grad_bytes(model) == 2048 * 1024 * 4
    assert restore_grad_memory(model) == 1
    assert type(model[0]) is nn.Linear and model[0].weight is params["0.weight"]
    assert reused_grad_bytes(model) == 0


def test_detector_training_rewrite_reuses_the_box_head_fc6_gradient():
    """The R-CNN head's fc6 (256 * 7 * 7 -> 128) is swapped by the training rewrite, whose step
    equals the plain one (tests/model/test_training_rewrite.py); restoring gives nn.Linear back."""
    model = optimize_for_training(resnet18_detector().train())
    assert type(model.roi_heads.box_head.fc1) is ReusedGradLinear
    assert type(model.roi_heads.box_head.fc2) is nn.Linear  # 128 x 128: below the threshold
    restore_training_rewrite(model)
    assert type(model.roi_heads.box_head.fc1) is nn.Linear
    plain = optimize_for_training(resnet18_detector(), reuse_grad_memory=False)
    assert type(plain.roi_heads.box_head.fc1) is nn.Linear


def test_copies_and_pickles_carry_no_kept_memory():
    import io
    import pickle

    _, reused = pair()
    backward(reused, torch.randn(4, 300), torch.randn(4, 40))
    assert reused.grad_buffer.nbytes == 300 * 40 * 4
    assert copy.deepcopy(reused).grad_buffer.nbytes == 0
    restored = pickle.loads(pickle.dumps(reused))
    assert restored.grad_buffer.nbytes == 0 and torch.equal(restored.weight, reused.weight)
    buffer = io.BytesIO()
    torch.save(reused, buffer)
    assert buffer.tell() < 300 * 40 * 4 + 20_000  # the weights, not the kept gradient memory (+48 KB)


def test_without_gradients_the_plain_linear_runs():
    plain, reused = pair()
    x = torch.randn(5, 300)
    with torch.no_grad():
        assert torch.equal(reused(x), plain(x))
    assert reused(x).grad_fn.name() == "_LinearReusedGradBackward"
    assert reused.grad_buffer.allocated == 0
