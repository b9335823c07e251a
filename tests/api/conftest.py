"""The tiny checkpoint (trained once per session, shared with tests/serving) and its Detector."""

from __future__ import annotations

import os

import pytest

from tests.api.checkpoint import shapes_data, tiny_checkpoint
from tests.app.helpers import ROOT

os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


@pytest.fixture(scope="session")
def shared_base(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "tiny_shared"
    base.mkdir(exist_ok=True)
    return base


@pytest.fixture(scope="session")
def checkpoint(shared_base):
    return tiny_checkpoint(shared_base)


@pytest.fixture(scope="session")
def shapes_dir(shared_base):
    """The tiny shapes dataset's folder (``<data_dir>/shapes``)."""
    return shapes_data(shared_base) / "shapes"


@pytest.fixture(scope="session")
def detector(checkpoint):
    from frcnn import Detector

    return Detector.from_checkpoint(checkpoint, device="cpu")
