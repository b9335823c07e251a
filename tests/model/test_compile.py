"""Compiled training (``frcnn.modeling.compile``): a compiled step's losses and gradients equal the
eager step's, only training steps run compiled, and the model keeps its state dict and copies.

Tolerance: losses within 1e-5 relative, gradients within 1e-4 of each tensor's largest entry
(the compiled graph fuses and reorders float sums). The fast tests compile with the
``aot_eager`` backend (the same capture, forward / backward split and dispatch, without Inductor's
code generation); the Inductor test is marked slow: it compiles C++ for a minute or more on 2 CPU cores.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from frcnn.modeling.compile import compile_for_training, is_compiled_for_training, uncompile

from .builders import small_faster_rcnn
from .synthetic import batch


def sized_batch(size: tuple[int, int]):
    """The synthetic batch resized to (h, w), boxes scaled with it."""
    images, targets = batch(2)
    h, w = size
    scale = torch.tensor([w / 128, h / 128, w / 128, h / 128])
    images = [torch.nn.functional.interpolate(im[None], size=size, mode="bilinear")[0] for im in images]
    return images, [{**t, "boxes": t["boxes"] * scale} for t in targets]


def step(model, images, targets, seed: int = 0):
    """One training step's losses and the gradients of every trainable parameter."""
    model.rpn.generator.manual_seed(seed)
    model.roi_heads.generator.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    losses = model(images, targets).losses
    losses["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def check_equal_steps(backend: str, sizes=((128, 128),)):
    eager = small_faster_rcnn(pooler="roi_align").train()
    compiled = compile_for_training(copy.deepcopy(eager), backend=backend).train()
    torch._dynamo.reset()
    for seed, size in enumerate(sizes):
        images, targets = sized_batch(size)
        expected_losses, expected_grads = step(eager, images, targets, seed)
        got_losses, got_grads = step(compiled, images, targets, seed)
        for name, value in expected_losses.items():
            assert_close(got_losses[name], value, rtol=1e-5, atol=1e-6, msg=name)
        assert got_grads.keys() == expected_grads.keys()
        for name, grad in expected_grads.items():
            assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-4 * grad.abs().max().item(), msg=name)


def test_compiled_training_step_equals_the_eager_step():
    check_equal_steps("aot_eager")


@pytest.mark.slow
def test_inductor_compiled_training_steps_equal_the_eager_steps_across_sizes():
    """Three batch sizes: the static graph, then the recompilations of automatic dynamic shapes."""
    check_equal_steps("inductor", sizes=((128, 128), (96, 128), (128, 96)))


def test_only_training_steps_run_compiled_and_the_model_stays_the_same():
    model = small_faster_rcnn(pooler="roi_align")
    keys = list(model.state_dict())
    compile_for_training(model, backend="aot_eager")
    assert is_compiled_for_training(model.backbone) and is_compiled_for_training(model.roi_heads.box_head)
    assert list(model.state_dict()) == keys
    images, targets = sized_batch((128, 128))
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    with torch.no_grad():
        model.eval()(images)  # evaluation: eager, nothing compiled
    assert counters["stats"]["unique_graphs"] == 0
    model.train()(images, targets).losses["loss"].backward()
    assert counters["stats"]["unique_graphs"] == 3  # backbone, box head, predictor

    twin = copy.deepcopy(model)  # an EMA copy, say: it gets its own (empty) compiled slot
    assert is_compiled_for_training(twin.backbone)
    assert twin.backbone._compile_for_training[1].fn is None
    with torch.no_grad():
        out, twin_out = model.eval()(images), twin.eval()(images)
    assert_close(twin_out.detections[0]["boxes"], out.detections[0]["boxes"])

    uncompile(model)
    assert not is_compiled_for_training(model.backbone) and "forward" not in model.backbone.__dict__
