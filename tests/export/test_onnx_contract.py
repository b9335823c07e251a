"""The exported file: standard operators only, the full onnx.checker check, the input / output
contract with dynamic N, H, W, and the metadata (issue 11)."""

from __future__ import annotations

import json

import onnx
import pytest

from frcnn.app.checkpoint import load_checkpoint
from frcnn.export.metadata import config_hash


@pytest.fixture(scope="module")
def proto(exported):
    return onnx.load(str(exported[0]))


def test_full_check_and_standard_operators_only(proto):
    onnx.checker.check_model(proto, full_check=True)
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert not proto.functions
    ops = {node.op_type for node in proto.graph.node}
    assert {"RoiAlign", "NonMaxSuppression", "TopK"} <= ops


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_input_and_outputs(proto):
    (images,) = proto.graph.input
    assert images.name == "images" and images.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    n, c, h, w = _dims(images)
    assert c == 3 and all(isinstance(d, str) for d in (n, h, w)), "N, H and W must be dynamic"
    outputs = {o.name: o for o in proto.graph.output}
    assert list(outputs) == ["boxes", "scores", "labels", "batch_index"]
    expected_types = {"boxes": "FLOAT", "scores": "FLOAT", "labels": "INT64", "batch_index": "INT64"}
    for name, kind in expected_types.items():
        assert onnx.TensorProto.DataType.Name(outputs[name].type.tensor_type.elem_type) == kind, name
    assert _dims(outputs["boxes"])[1] == 4


def test_metadata(proto, exported, tiny_checkpoint):
    _, module, _ = exported
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == module.class_names == ["circle", "square", "triangle"]
    heads = module.model.roi_heads
    assert float(meta["score_threshold"]) == heads.score_threshold == 0.05
    assert float(meta["nms_iou"]) == heads.nms_threshold
    assert int(meta["detections_per_image"]) == heads.detections_per_image
    hparams = load_checkpoint(tiny_checkpoint)["hyper_parameters"]
    assert meta["config_hash"] == config_hash(hparams) and len(meta["config_hash"]) == 64
    assert json.loads(meta["label_to_category_id"]) == {"1": 1, "2": 2, "3": 3}
    assert (int(meta["min_size"]), int(meta["max_size"])) == (128, 128)


def test_export_verified_itself(exported):
    _, _, verified = exported
    assert verified["unpaired"] == 0 and verified["scores"] <= 1e-4  # every box paired within 1e-3 px
