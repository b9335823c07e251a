"""format=pt2: src/export.py compiles the train.py checkpoint with torch.export + AOTInductor; the
package, run in this process (frcnn.export.runtimes.Pt2Backend), gives the eager detections on the
parity images, with the model's metadata. Slow: AOTInductor builds C++ (minutes on 2 cores)."""

from __future__ import annotations

import copy

import pytest

from frcnn.export.runtimes import Pt2Backend, load_backend
from frcnn.layers.inference_rewrite import optimize_for_inference
from tests.app.helpers import compose_config, script
from tests.export.helpers import assert_same_detections, eager_detections, parity_images

pytestmark = pytest.mark.slow


def test_pt2_package_gives_the_eager_detections(tmp_path, tiny_checkpoint):
    cfg = compose_config("export", tmp_path, [f"ckpt_path={tiny_checkpoint}", "format=pt2",
                                               f"output={tmp_path / 'tiny.pt2'}", "example_size=[2,96,112]"])
    result = script("export").export(cfg)
    assert result["path"].name == "tiny.pt2" and result["verified"]["unpaired"] == 0
    backend = load_backend("pt2", result["path"])
    assert isinstance(backend, Pt2Backend) and backend.class_names == result["module"].class_names
    reference = optimize_for_inference(copy.deepcopy(result["module"].model))
    for name, images in parity_images().items():
        assert_same_detections(eager_detections(reference, images), backend(images), f"pt2 {name}")
