"""Detector: equal to predict.py's JSON on the same images, every input kind gives the same boxes,
filters, batching by padded size, thread safety, errors that name the problem."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn import Detector
from frcnn.api import DetectionResult
from frcnn.data import ImageDecodeError
from tests.app.helpers import ROOT, compose_config, script


def coco_like(results: list[DetectionResult]) -> list[dict]:
    """Detector results -> predict.py's detections.json entries (shapes' category ids are the labels)."""
    rows = []
    for image_id, result in enumerate(results):
        for (x1, y1, x2, y2), score, label, name in zip(result.boxes.tolist(), result.scores.tolist(),
                                                        result.labels.tolist(), result.names):
            rows.append({"image_id": image_id, "category_id": label, "score": round(score, 5), "category_name": name,
                         "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]})
    return rows


def run_predict_py(checkpoint, images, tmp_path, batch_size: int) -> list[dict]:
    folder = tmp_path / "input"
    folder.mkdir(exist_ok=True)
    for image in images:
        (folder / image.name).write_bytes(image.read_bytes())
    cfg = compose_config("predict", tmp_path / "run", [f"ckpt_path={checkpoint}", f"input={folder}",
                                                      f"output_dir={tmp_path / 'pred'}", "draw=false",
                                                      f"batch_size={batch_size}"])
    script("predict").predict(cfg)
    rows = json.loads((tmp_path / "pred" / "detections.json").read_text())
    return [{key: row[key] for key in ("image_id", "category_id", "score", "category_name", "bbox")} for row in rows]


def by_image_and_score(rows: list[dict]) -> list[dict]:
    """predict.py keeps the model's order; the Detector sorts by score: compare in one order."""
    return sorted(rows, key=lambda r: (r["image_id"], -r["score"], r["bbox"], r["category_id"]))


@pytest.fixture(scope="module")
def val_images(shapes_dir):
    return sorted((shapes_dir / "JPEGImages").glob("val_*"))


def test_equals_predict_py_json(checkpoint, val_images, tmp_path):
    """Batch size 1 on both sides: the same JSON, number for number."""
    expected = run_predict_py(checkpoint, val_images, tmp_path, batch_size=1)
    results = Detector.from_checkpoint(checkpoint, device="cpu", batch_size=1).predict(val_images)
    assert len(expected) > 100  # an untrained model still keeps many boxes over its threshold
    assert by_image_and_score(coco_like(results)) == by_image_and_score(expected)


def test_batched_equals_predict_py_json_to_float_rounding(checkpoint, val_images, tmp_path):
    """Batches of 8 (grouped by padded size) against predict.py one by one: the batched kernels sum in
    another order, so numbers agree to float rounding (1e-4 px), i.e. to one step of the JSON's rounding."""
    expected = by_image_and_score(run_predict_py(checkpoint, val_images, tmp_path, batch_size=1))
    got = by_image_and_score(coco_like(Detector.from_checkpoint(checkpoint, device="cpu").predict(val_images)))
    assert [(r["image_id"], r["category_id"]) for r in got] == [(r["image_id"], r["category_id"]) for r in expected]
    torch.testing.assert_close(torch.tensor([r["bbox"] for r in got]), torch.tensor([r["bbox"] for r in expected]),
                               rtol=0, atol=0.0101)
    torch.testing.assert_close(torch.tensor([r["score"] for r in got]), torch.tensor([r["score"] for r in expected]),
                               rtol=0, atol=1.01e-5)


def test_every_input_kind_gives_the_same_detections(detector, val_images):
    path = val_images[0]
    pixels = np.array(Image.open(path).convert("RGB"))  # (H, W, 3) uint8
    uint8 = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # (3, H, W)
    inputs = [path, str(path), Image.open(path), pixels, uint8, uint8.float() / 255]
    reference = detector.predict(path)
    assert len(reference) > 0 and reference.image_size == pixels.shape[:2]
    for x in inputs:  # one at a time: a batch of them would sum in another order (float rounding)
        result = detector.predict(x)
        torch.testing.assert_close(result.boxes, reference.boxes, rtol=0, atol=0)
        torch.testing.assert_close(result.scores, reference.scores, rtol=0, atol=0)
        assert torch.equal(result.labels, reference.labels) and result.names == reference.names


def test_a_list_comes_back_in_order_and_one_image_alone(detector, val_images):
    alone = [detector.predict(path) for path in val_images[:5]]
    together = detector.predict(list(reversed(val_images[:5])))
    assert isinstance(alone[0], DetectionResult) and isinstance(together, list)
    for a, b in zip(alone, reversed(together)):
        assert a.image_size == b.image_size and len(a) == len(b)
        torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=1e-4)


def test_exif_orientation_is_applied_to_paths(detector, val_images, tmp_path):
    image = Image.open(val_images[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    rotated = tmp_path / "rotated.jpg"
    image.save(rotated, exif=exif, quality=95)
    displayed = Image.open(rotated).transpose(Image.Transpose.ROTATE_270)  # what a viewer shows
    result = detector.predict(rotated)
    assert result.image_size == (image.width, image.height)  # (H, W) of the displayed image
    torch.testing.assert_close(result.boxes, detector.predict(displayed).boxes, rtol=0, atol=0)


def test_results_are_sorted_and_named(detector, val_images):
    result = detector.predict(val_images[1])
    assert torch.all(result.scores[:-1] >= result.scores[1:])
    assert result.names == tuple(detector.class_names[label - 1] for label in result.labels.tolist())
    assert result.boxes.dtype == torch.float32 and result.labels.dtype == torch.int64


def test_filters(detector, val_images):
    full = detector.predict(val_images[2])
    scores, labels = full.scores.tolist(), full.labels.tolist()
    threshold = sorted(scores)[len(scores) // 2]
    above = detector.predict(val_images[2], min_score=threshold)
    assert len(above) == sum(s >= threshold for s in scores) and above.scores.min() >= threshold
    assert detector.predict(val_images[2], max_detections=3).scores.tolist() == scores[:3]
    name = full.names[0]
    only = detector.predict(val_images[2], classes=[name])
    assert set(only.names) == {name} and len(only) == full.names.count(name)
    torch.testing.assert_close(only.boxes, full.boxes[torch.tensor([n == name for n in full.names])])
    by_label = detector.predict(val_images[2], classes=[labels[0]])
    torch.testing.assert_close(by_label.boxes, only.boxes, rtol=0, atol=0)
    combined = detector.predict(val_images[2], min_score=threshold, max_detections=2, classes=[name])
    expected = [s for s, n in zip(scores, full.names) if s >= threshold and n == name][:2]
    assert combined.scores.tolist() == expected


@pytest.mark.parametrize(("bad", "error", "message"), [
    (np.zeros((8, 8), np.uint8), ValueError, r"\(H, W, 3\)"),
    (np.zeros((8, 8, 3), np.float32), ValueError, "uint8"),
    (torch.zeros(8, 8, 3), ValueError, r"\(3, H, W\)"),
    (torch.full((3, 8, 8), 255.0), ValueError, r"\[0, 1\]"),
    (torch.full((3, 8, 8), float("nan")), ValueError, r"\[0, 1\]"),
    (torch.zeros(3, 0, 8, dtype=torch.uint8), ValueError, "pixels"),
    (12, TypeError, "int"),
])
def test_bad_inputs_say_what_is_wrong(detector, bad, error, message):
    with pytest.raises(error, match=message):
        detector.predict(bad)


def test_a_missing_or_broken_file_is_named(detector, tmp_path):
    with pytest.raises(ImageDecodeError, match="missing.jpg"):
        detector.predict(tmp_path / "missing.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        detector.predict(broken)
    with pytest.raises(ValueError, match="unknown class 'dog'"):
        detector.predict(torch.zeros(3, 8, 8), classes=["dog"])


def test_thread_safe(detector, val_images):
    """8 threads predicting at once get what one thread gets."""
    expected = [detector.predict(path) for path in val_images]
    got: dict[int, DetectionResult] = {}

    def work(i: int) -> None:
        got[i] = detector.predict(val_images[i % len(val_images)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, result in got.items():
        torch.testing.assert_close(result.boxes, expected[i % len(val_images)].boxes, rtol=0, atol=0)


class RecordingBackend:
    """A backend with hand-written answers: one box per image, its score the image's height / 1000."""

    class_names = ["a", "b"]

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, int]]] = []

    def batch_key(self, height: int, width: int):
        return height // 100  # a coarse key, to see the grouping

    def __call__(self, images):
        self.calls.append([tuple(image.shape[-2:]) for image in images])
        return [{"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 2.0, 2.0]]),
                 "scores": torch.tensor([image.shape[-2] / 1000, 0.9]), "labels": torch.tensor([1, 2])}
                for image in images]


def test_any_backend_batched_by_its_key():
    backend = RecordingBackend()
    detector = Detector(backend, batch_size=2)
    sizes = [(110, 9), (250, 9), (120, 9), (130, 9), (199, 9)]
    results = detector.predict([torch.zeros(3, h, w) for h, w in sizes])
    assert backend.calls == [[(110, 9), (120, 9)], [(130, 9), (199, 9)], [(250, 9)]]
    assert [r.image_size for r in results] == sizes
    assert results[1].scores.tolist() == pytest.approx([0.9, 0.25])  # sorted by score
    assert results[1].names == ("b", "a") and results[1].labels.tolist() == [2, 1]
    assert detector.info["runtime"] == "RecordingBackend"


def test_from_exported_without_the_export_package(monkeypatch, checkpoint):
    monkeypatch.setitem(sys.modules, "frcnn.export.runtimes", None)  # as if absent
    monkeypatch.setitem(sys.modules, "frcnn.export", None)
    with pytest.raises(ImportError, match=r"runtime='onnxruntime' needs frcnn.export.runtimes"):
        Detector.from_exported("model.onnx", runtime="onnxruntime")
    assert Detector.from_exported(checkpoint, runtime="torch", device="cpu").info["runtime"] == "torch"


def test_importing_frcnn_stays_light():
    code = "import sys, frcnn; assert 'torch' not in sys.modules, 'torch'; frcnn.Detector; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"})
