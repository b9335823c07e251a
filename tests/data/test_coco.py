"""COCO reader: the real coco128 set in ../shared, and hand-made files for the conventions."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from datafiles import COCO128, write_coco

from frcnn.data import CocoSource, DetectionDataModule, DetectionDataset, load_split

ANN_FILE = COCO128 / "annotations" / "instances.json"


@pytest.fixture(scope="module")
def coco128():
    source = CocoSource(COCO128 / "images", ANN_FILE)
    records, problems = load_split(source, "header")
    return source, records, problems


@pytest.mark.shared_data
def test_coco128_counts(coco128):
    source, records, problems = coco128
    assert problems == []
    assert len(records) == 128
    assert sum(len(r.boxes) for r in records) == 929
    assert sum(len(r.ignore_boxes) for r in records) == 10
    assert sorted(r.image_id for r in records if len(r.boxes) == 0) == [250, 508]  # kept as negatives
    assert len(source.class_names) == 80 and source.class_names[:2] == ["person", "bicycle"]
    assert source.category_ids[0] == 1 and source.category_ids[-1] == 90 and len(set(source.category_ids)) == 80


@pytest.mark.shared_data
def test_coco128_label_map_round_trips_to_coco_ids(coco128):
    source, records, _ = coco128
    datamodule = DetectionDataModule(train=source, val=source, num_classes=80, num_workers=0)
    assert datamodule.label_to_category_id[1] == 1 and datamodule.label_to_category_id[80] == 90
    coco = json.loads(ANN_FILE.read_text())
    for record in records:
        expected = Counter()
        for a in coco["annotations"]:
            if a["image_id"] == record.image_id:
                x, y, w, h = a["bbox"]
                expected[(a["iscrowd"], a["category_id"], *np.float32([x, y, x + w, y + h]).tolist())] += 1
        got = Counter()
        for crowd, boxes, labels in ((0, record.boxes, record.labels), (1, record.ignore_boxes, record.ignore_labels)):
            for box, label in zip(boxes.tolist(), labels.tolist()):
                got[(crowd, datamodule.label_to_category_id[label], *box)] += 1
        assert got == expected, record.path


@pytest.mark.shared_data
def test_coco128_samples_are_rgb_with_coco_image_ids(coco128):
    _, records, _ = coco128
    dataset = DetectionDataset(records[:6])
    for record, (image, target) in zip(records[:6], dataset):
        assert image.shape == (3, record.height, record.width) and image.dtype == torch.float32
        assert int(target["image_id"]) == record.image_id
        torch.testing.assert_close(target["boxes"], torch.from_numpy(record.boxes))


def test_coco_xywh_crowd_and_keep_empty(tmp_path):
    ann_file = write_coco(tmp_path, [
        {"image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 30]},
        {"image_id": 1, "category_id": 3, "bbox": [0.5, 1.5, 2.0, 3.0], "iscrowd": 1},
    ])
    source = CocoSource(tmp_path / "images", ann_file)
    assert source.class_names == ["cat", "dog"] and source.category_ids == [3, 7]
    records, problems = source.load()
    assert problems == []
    np.testing.assert_array_equal(records[0].boxes, np.array([[10, 5, 30, 35]], np.float32))
    np.testing.assert_array_equal(records[0].labels, [2])  # dog: id 7 is the second category
    np.testing.assert_array_equal(records[0].ignore_boxes, np.array([[0.5, 1.5, 2.5, 4.5]], np.float32))
    np.testing.assert_array_equal(records[0].ignore_labels, [1])
    assert [r.image_id for r in load_split(CocoSource(tmp_path / "images", ann_file), "header")[0]] == [1, 2]
    assert [r.image_id for r in load_split(CocoSource(tmp_path / "images", ann_file, keep_empty=False),
                                           "header")[0]] == [1]
    assert source.coco.getAnnIds(imgIds=[1]) == [1, 2]  # the pycocotools index is kept for evaluation
