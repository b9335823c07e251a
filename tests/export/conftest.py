"""Fixtures of the export tests: a real train.py checkpoint of the tiny model, made informative,
and its ONNX export through src/export.py (each built once per session)."""

from __future__ import annotations

import os

import pytest
import torch

from frcnn.app.checkpoint import load_checkpoint, module_from_checkpoint
from tests.app.conftest import data_dir  # noqa: F401 (the tiny shapes dataset fixture)
from tests.app.helpers import ROOT, compose_config, script, tiny_overrides
from tests.export.helpers import make_informative_calibrated

os.environ.setdefault("PROJECT_ROOT", str(ROOT))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, data_dir):  # noqa: F811
    """A train.py checkpoint (the default run's model: tiny backbone, RoIAlign; 2 steps on shapes)
    whose RPN head and box predictor are then redrawn so that scores spread out; written back in
    the same format (Lightning's checkpoint dict, only the weights changed)."""
    out = tmp_path_factory.mktemp("export_train")
    cfg = compose_config("train", out, [*tiny_overrides(data_dir), "logger=csv", "trainer.max_epochs=1"])
    script("train").train(cfg)
    path = out / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint(path)
    module = module_from_checkpoint(path)
    make_informative_calibrated(module.model)
    checkpoint["state_dict"] = module.state_dict()
    informative = out / "informative.ckpt"
    torch.save(checkpoint, informative)
    return informative


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_checkpoint):
    """``python src/export.py ckpt_path=<tiny> output=<tmp>/tiny.onnx`` (in process, verify on)."""
    out = tmp_path_factory.mktemp("export_onnx")
    cfg = compose_config(
        "export", out, [f"ckpt_path={tiny_checkpoint}", f"output={out / 'tiny.onnx'}", "example_size=[2,96,112]"]
    )
    result = script("export").export(cfg)
    return result["path"], result["module"], result["verified"]
