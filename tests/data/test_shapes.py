"""The synthetic shapes dataset: exact boxes, deterministic per seed, same boxes in COCO and VOC."""

import json

import numpy as np
import pytest

from frcnn.data import SHAPE_CLASSES, ShapesGenerator, ShapesSource, load_split
from frcnn.data.shapes_draw import _shape_mask


def small(root, seed=0, **overrides):
    return ShapesGenerator(root, num_train=8, num_val=4, seed=seed, **overrides)


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", SHAPE_CLASSES)
@pytest.mark.parametrize("box", [(3, 4, 19, 20), (10, 0, 40, 25), (0, 7, 16, 50)])
def test_each_shape_fills_its_box_exactly(kind, box):
    mask = _shape_mask(kind, box, 48, 56, np.random.default_rng(1))  # (H=56, W=48)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == box  # tight box in pixel edges


def test_generation_is_deterministic_per_seed(tmp_path):
    first = files(small(tmp_path / "a").ensure())
    again = files(small(tmp_path / "b").ensure())
    other = files(small(tmp_path / "c", seed=1).ensure())
    assert first == again
    assert first["coco/instances_train.json"] != other["coco/instances_train.json"]
    assert first["JPEGImages/train_00000.jpg"] != other["JPEGImages/train_00000.jpg"]
    assert len([n for n in first if n.startswith("JPEGImages/")]) == 12


def test_coco_and_voc_layouts_load_to_the_same_boxes(tmp_path):
    generator = small(tmp_path / "shapes", png_every=3)
    for split in ("train", "val"):
        coco, coco_problems = load_split(ShapesSource(generator, split, "coco"), "full")
        voc, voc_problems = load_split(ShapesSource(generator, split, "voc"), "full")
        assert coco_problems == [] and voc_problems == []
        assert [r.path for r in coco] == [r.path for r in voc]
        assert any(r.path.suffix == ".png" for r in coco)  # both image formats are exercised
        for a, b in zip(coco, voc):
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.labels, b.labels)
            assert (a.width, a.height) == (b.width, b.height)


def test_default_sizes_and_object_counts(tmp_path):
    generator = ShapesGenerator(tmp_path / "shapes", num_train=30, num_val=2)
    records, _ = load_split(ShapesSource(generator, "train"), "header")
    assert len(records) == 30
    assert all(128 <= r.width <= 192 and 128 <= r.height <= 192 for r in records)
    assert all(1 <= len(r.boxes) <= 4 for r in records)
    boxes = np.concatenate([r.boxes for r in records])
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert sides.min() >= 16 and np.array_equal(boxes, boxes.round())
    assert set(np.concatenate([r.labels for r in records]).tolist()) == {1, 2, 3}


def test_stamp_keeps_a_current_dataset_and_regenerates_a_stale_or_partial_one(tmp_path):
    root = tmp_path / "shapes"
    small(root).ensure()
    stamp = root / "stamp.json"
    written = stamp.stat().st_mtime_ns
    small(root).ensure()
    assert stamp.stat().st_mtime_ns == written  # up to date: untouched

    small(root, seed=3).ensure()  # other parameters: regenerated in place
    assert json.loads(stamp.read_text())["seed"] == 3

    stamp.unlink()  # as if a run died before finishing (no stamp = incomplete)
    (root / "coco" / "instances_val.json").unlink()
    small(root, seed=3).ensure()
    assert json.loads((root / "coco" / "instances_val.json").read_text())["images"][0]["id"] == 9
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # no staging or stale folders left
