"""Bad input gets one clear message: unexportable models, foreign checkpoints, unwritable outputs
(nothing left behind), missing runtimes, and wrong images given to an exported model."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from frcnn.export import onnx_export
from frcnn.export.graph import ExportableDetector, ExportError
from frcnn.export.runtimes import OnnxRuntimeBackend, RuntimeNotInstalled, load_backend
from tests.app.helpers import compose_config, script
from tests.model.builders import small_faster_rcnn


@pytest.fixture(scope="module")
def backend(exported):
    return OnnxRuntimeBackend(exported[0])


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        ([torch.rand(3, 50, 60).double()], TypeError, "image 0 has dtype float64"),
        ([torch.randint(0, 255, (3, 50, 60), dtype=torch.uint8)], TypeError, "divide uint8 pixels by 255"),
        ([torch.rand(3, 50, 60), torch.rand(4, 50, 60)], ValueError, r"image 1 must be \(3, H, W\) RGB, got shape \(4, 50, 60\)"),
        ([torch.rand(50, 60)], ValueError, r"image 0 must be \(3, H, W\)"),
        (torch.rand(2, 3, 50, 60), TypeError, "not one tensor"),
        ([], ValueError, "empty list"),
        ([torch.rand(3, 1, 60)], ValueError, "each side needs >= 2 px"),
        (["image.jpg"], TypeError, "image 0 is a str"),
    ],
)
def test_wrong_images_are_refused_by_the_wrapper(backend, images, error, message):
    with pytest.raises(error, match=message):
        backend(images)


def test_wrong_raw_batch_is_refused(backend):
    with pytest.raises(ValueError, match=r"float32 \(N, 3, H, W\) array, got float64"):
        backend.run_batch(np.zeros((1, 3, 40, 40)))
    with pytest.raises(ValueError, match="float32"):
        backend.run_batch(np.zeros((3, 40, 40), np.float32))


@pytest.mark.parametrize("runtime,module", [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_a_missing_runtime_says_how_to_install_it(monkeypatch, exported, runtime, module):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(RuntimeNotInstalled, match=f"runtime {runtime} is not installed: pip install"):
        load_backend(runtime, exported[0])


def test_unknown_runtime_and_missing_or_foreign_model_files(tmp_path, exported):
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        load_backend("tensorrt", exported[0])
    with pytest.raises(FileNotFoundError, match="exported model not found"):
        load_backend("onnxruntime", tmp_path / "nothing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(ValueError, match="junk.onnx is not an ONNX model"):
        load_backend("onnxruntime", junk)


def test_models_that_do_not_export():
    with pytest.raises(ExportError, match="only FasterRCNN and RPNDetector models export, got Linear"):
        ExportableDetector(nn.Linear(2, 2))


def _export_cfg(tmp_path, ckpt, output):
    return compose_config("export", tmp_path, [f"ckpt_path={ckpt}", f"output={output}", "verify=false"])


def test_a_checkpoint_that_is_not_ours(tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(ExportError, match="foreign.ckpt is not a checkpoint of this project"):
        script("export").export(_export_cfg(tmp_path / "a", foreign, tmp_path / "m.onnx"))
    with pytest.raises(ExportError, match="checkpoint not found"):
        script("export").export(_export_cfg(tmp_path / "b", tmp_path / "missing.ckpt", tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


def test_an_output_that_cannot_be_written(tmp_path, tiny_checkpoint):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="cannot write .*a_file/model.onnx"):
        script("export").export(_export_cfg(tmp_path / "run", tiny_checkpoint, blocker / "model.onnx"))
    with pytest.raises(ExportError, match="is a directory"):
        onnx_export.check_writable(tmp_path)


def test_a_failure_mid_export_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("translation failed")

    monkeypatch.setattr(onnx_export.torch.onnx, "export", broken)
    with pytest.raises(ExportError, match="torch.onnx could not translate .* translation failed"):
        onnx_export.export_onnx(small_faster_rcnn(), tmp_path / "model.onnx", ["a", "b"], example_size=(2, 3, 64, 64))
    assert list(tmp_path.iterdir()) == []


def test_class_names_must_match_the_model(tmp_path):
    with pytest.raises(ExportError, match="1 class names for a model with 2 classes"):
        onnx_export.export_onnx(small_faster_rcnn(), tmp_path / "model.onnx", ["a"])
    assert list(tmp_path.iterdir()) == []


def test_unknown_format(tmp_path, tiny_checkpoint):
    cfg = _export_cfg(tmp_path, tiny_checkpoint, tmp_path / "m.tflite")
    cfg.format = "tflite"
    with pytest.raises(ExportError, match="unknown format 'tflite'"):
        script("export").export(cfg)


