"""The training speed-ups on CUDA: one training step of the ResNet-18 C4 detector rewritten for
training (frozen BatchNorm folded, channels-last, the sparse RPN backward) and compiled (Inductor),
on the GPU, against the plain eager step on the CPU: the same code path as on a CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from frcnn.layers.training_rewrite import optimize_for_training
from frcnn.modeling.compile import compile_for_training
from tests.cuda.conftest import to
from tests.model.synthetic import batch
from tests.model.test_compile import step
from tests.model.test_training_rewrite import resnet18_detector

pytestmark = pytest.mark.cuda


def test_rewritten_compiled_training_step_on_cuda_equals_the_plain_cpu_step(cuda):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    plain = resnet18_detector().train()  # its samplers draw from CPU generators: the same samples on both
    fast = optimize_for_training(copy.deepcopy(plain).to(cuda))
    # Inductor on the GPU; a CPU dry run (FRCNN_CUDA_TESTS_ON=cpu) captures without code generation
    compile_for_training(fast, backend="inductor" if cuda.type == "cuda" else "aot_eager")
    torch._dynamo.reset()
    images, targets = batch(2)
    expected_losses, expected_grads = step(plain, images, targets)
    got_losses, got_grads = step(fast, to(images, cuda), to(targets, cuda))
    for name, value in expected_losses.items():
        assert_close(got_losses[name].cpu(), value, rtol=1e-4, atol=1e-5, msg=name)
    assert got_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        assert_close(got_grads[name].cpu(), grad, rtol=1e-3, atol=1e-4 * grad.abs().max().item(), msg=name)
