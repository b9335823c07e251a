"""The CUDA tests (``pytest -m cuda``; deselected in ``make test``, like ``slow``): every
device-dependent piece against its CPU result, on a machine with a GPU (``bench/gpu_check.sh`` runs
them first). Without a GPU, ``-m cuda`` fails at once with one line saying so."""

from __future__ import annotations

import os

import pytest
import torch

from tests.app.conftest import data_dir  # noqa: F401 (the tiny shapes dataset, for the training run)


@pytest.fixture(scope="session")
def cuda() -> torch.device:
    """The GPU. ``FRCNN_CUDA_TESTS_ON=cpu`` runs the same tests with the CPU in the GPU's place: a dry
    run of the tests' own code on a machine without one (it proves nothing about CUDA)."""
    if os.environ.get("FRCNN_CUDA_TESTS_ON") == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.fail("pytest -m cuda needs a CUDA device; none is visible (torch.cuda.is_available() is False)")
    return torch.device("cuda")


def to(value, device):
    """Tensors, and lists / dicts of them, moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to(v, device) for v in value)
    return value
