"""Fixtures of the server tests: the tiny checkpoint (tests.api.checkpoint), its Detector and the app."""

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


@pytest.fixture(scope="module")
def client(detector):
    """An in-process client of the app (its batcher runs: the lifespan is entered)."""
    from fastapi.testclient import TestClient

    from frcnn.serving import ServeSettings, create_app

    settings = ServeSettings(max_upload_bytes=2_000_000, max_pixels=4_000_000, max_batch_size=4, max_wait_ms=5.0)
    with TestClient(create_app(detector, settings)) as test_client:
        yield test_client
