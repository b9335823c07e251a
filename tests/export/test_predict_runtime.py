"""``predict.py runtime=onnxruntime|openvino model_path=<file.onnx>`` writes the detections that
``runtime=torch`` writes from the checkpoint (COCO results, rounded to 0.01 px and 1e-5)."""

from __future__ import annotations

import pytest
from torchvision.io import write_png

from tests.app.helpers import compose_config, script
from tests.export.helpers import scene


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict_images")
    for i, (h, w) in enumerate([(150, 170), (190, 120)]):
        write_png((scene(h, w, 20 + i) * 255).round().byte(), str(folder / f"img{i}.png"))
    return folder


def _predict(tmp_path, image_dir, overrides):
    cfg = compose_config("predict", tmp_path, [f"input={image_dir}", f"output_dir={tmp_path}", "draw=false", *overrides])
    return script("predict").predict(cfg)["results"]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_exported_runtime_writes_the_checkpoints_detections(tmp_path, image_dir, exported, tiny_checkpoint, runtime):
    path, _, _ = exported
    torch_results = _predict(tmp_path / "torch", image_dir, [f"ckpt_path={tiny_checkpoint}", "trainer.accelerator=cpu"])
    exported_results = _predict(tmp_path / runtime, image_dir, [f"runtime={runtime}", f"model_path={path}"])
    assert len(torch_results) > 0 and len(exported_results) == len(torch_results)
    for t, e in zip(torch_results, exported_results):
        assert (t["image_id"], t["category_id"], t["category_name"], t["file_name"]) == (
            e["image_id"], e["category_id"], e["category_name"], e["file_name"])
        assert max(abs(a - b) for a, b in zip(t["bbox"], e["bbox"])) <= 0.011
        assert abs(t["score"] - e["score"]) <= 2e-5


def test_exported_runtime_needs_a_model(tmp_path, image_dir):
    with pytest.raises(ValueError, match="runtime=onnxruntime runs an exported model: pass model_path="):
        _predict(tmp_path, image_dir, ["runtime=onnxruntime"])
