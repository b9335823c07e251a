"""Fixtures of the server tests: the tiny checkpoint and its Detector (tests/api/conftest.py, one
checkpoint per session for both folders) and an in-process client of the app."""

from __future__ import annotations

import pytest

from tests.api.conftest import checkpoint, detector, shapes_dir, shared_base  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def client(detector):  # noqa: F811
    """An in-process client of the app (its batcher runs: the lifespan is entered)."""
    from fastapi.testclient import TestClient

    from frcnn.serving import ServeSettings, create_app

    settings = ServeSettings(max_upload_bytes=2_000_000, max_pixels=4_000_000, max_batch_size=4, max_wait_ms=5.0)
    with TestClient(create_app(detector, settings)) as test_client:
        yield test_client
