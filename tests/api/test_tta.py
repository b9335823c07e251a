"""Test-time augmentation reaches eval.py and the Detector: its detections are the plain model's
on the image and on the flipped image, flipped back and merged."""

from __future__ import annotations

import torch

from frcnn import Detector
from frcnn.modeling.box_fusion import weighted_box_fusion
from frcnn.modeling.tta import TestTimeAugmentation, unflip_boxes
from tests.app.helpers import compose_config, script


def test_detector_with_flip_tta_merges_the_two_views(checkpoint):
    plain = Detector.from_checkpoint(checkpoint, device="cpu")
    tta = Detector.from_checkpoint(checkpoint, device="cpu", tta={"flip": True, "merge": "wbf", "iou_threshold": 0.55})
    assert isinstance(tta.backend.model, TestTimeAugmentation)
    image = torch.rand(3, 100, 120, generator=torch.Generator().manual_seed(0))
    original, flipped = plain.predict_tensors([image, image.flip(-1)])
    views = [{"boxes": original.boxes, "scores": original.scores, "labels": original.labels},
             {"boxes": unflip_boxes(flipped.boxes, 120), "scores": flipped.scores, "labels": flipped.labels}]
    expected = weighted_box_fusion(views, 0.55, 100)
    result = tta.predict_tensors([image])[0]
    assert len(result.scores) > 0
    torch.testing.assert_close(result.boxes, expected["boxes"])
    torch.testing.assert_close(result.scores, expected["scores"])
    assert result.labels.tolist() == expected["labels"].tolist()


def test_eval_py_with_tta(checkpoint, tmp_path):
    cfg = compose_config("eval", tmp_path / "run", [f"ckpt_path={checkpoint}", "tta.flip=true", "tta.scales=[96,128]",
                                                   "tta.merge=nms", "trainer.accelerator=cpu", "trainer.devices=1",
                                                   "~logger", "trainer.limit_test_batches=1"])
    metrics, objects = script("eval").evaluate(cfg)
    model = objects["module"].model
    assert isinstance(model, TestTimeAugmentation) and model.views == [(96, False), (96, True), (128, False), (128, True)]
    assert 0.0 <= float(metrics["test/map"]) <= 1.0 and "test/loss" in metrics  # the first view's loss
