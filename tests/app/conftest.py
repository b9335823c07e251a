"""Fixtures of the application tests: the tiny shapes dataset (once per session), offline W&B."""

from __future__ import annotations

import os

import pytest

from tests.app.helpers import ROOT, SHAPES

# Nothing in these tests may reach the network, whatever the developer's environment says.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
# As the entry points set it: ${paths.root_dir} is the repository (../shared beside it).
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """``paths.data_dir`` holding the tiny shapes dataset, generated once for the whole session."""
    from frcnn.data import ShapesGenerator

    root = tmp_path_factory.mktemp("data")
    ShapesGenerator(root / "shapes", **SHAPES).ensure()
    return root
