"""VOC reader: the real raccoon set in ../shared, and hand-made files for the conventions."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from datafiles import RACCOON, write_voc
from PIL import Image

from frcnn.data import DetectionDataModule, DetectionDataset, VocSource, load_split


@pytest.fixture(scope="module")
def raccoon():
    """Both raccoon splits, read and validated (header check), without augmentation."""
    return {split: load_split(VocSource(RACCOON, split, classes=["raccoon"]), "header") for split in ("train", "val")}


@pytest.mark.shared_data
def test_raccoon_counts_and_boxes_match_the_xml(raccoon):
    (train, train_problems), (val, val_problems) = raccoon["train"], raccoon["val"]
    assert (len(train), len(val)) == (160, 40)
    assert train_problems == [] and val_problems == []
    assert sum(len(r.boxes) for r in train + val) == 217
    for record in train + val:
        xml = ET.parse(RACCOON / "Annotations" / f"{record.path.stem}.xml").getroot()
        expected = [[float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
                    for o in xml.findall("object")]
        expected = np.array(expected, dtype=np.float32) - np.array([1, 1, 0, 0], dtype=np.float32)
        np.testing.assert_array_equal(record.boxes, expected)
        np.testing.assert_array_equal(record.labels, np.ones(len(expected), dtype=np.int64))
        assert (record.width, record.height) == (int(xml.findtext("size/width")), int(xml.findtext("size/height")))


@pytest.mark.shared_data
def test_raccoon_grayscale_images_come_out_rgb(raccoon):
    records = raccoon["train"][0] + raccoon["val"][0]
    gray = [i for i, r in enumerate(records) if Image.open(r.path).mode == "L"]
    assert len(gray) == 3
    dataset = DetectionDataset(records)
    for index in gray:
        image, target = dataset[index]
        record = records[index]
        assert image.shape == (3, record.height, record.width) and image.dtype == torch.float32
        expected = torch.from_numpy(np.asarray(Image.open(record.path), dtype=np.float32) / 255)
        for channel in range(3):
            torch.testing.assert_close(image[channel], expected)
        torch.testing.assert_close(target["boxes"], torch.from_numpy(record.boxes))


@pytest.mark.shared_data
def test_raccoon_datamodule_delivers_the_contract(raccoon):
    datamodule = DetectionDataModule(
        train=VocSource(RACCOON, "train", classes=["raccoon"]), val=VocSource(RACCOON, "val", classes=["raccoon"]),
        num_classes=1, batch_size=2, num_workers=0,
    )
    datamodule.setup("validate")
    images, targets = next(iter(datamodule.val_dataloader()))
    first = raccoon["val"][0][0]
    assert len(images) == len(targets) == 2
    assert images[0].shape == (3, first.height, first.width)
    assert 0.0 <= images[0].min() and images[0].max() <= 1.0
    torch.testing.assert_close(targets[0]["boxes"], torch.from_numpy(first.boxes))
    assert targets[0]["labels"].dtype == torch.int64 and targets[0]["image_id"].shape == ()
    assert int(targets[1]["image_id"]) == 1  # VOC image ids are the index in the split
    assert targets[0]["ignore_boxes"].shape == (0, 4) and targets[0]["ignore_labels"].shape == (0,)


def test_voc_conversion_difficult_and_default_classes(tmp_path):
    write_voc(tmp_path, {
        "a": [("dog", 1, 1, 10, 20), ("cat", 5, 6, 30, 40, 1)],  # the cat is difficult
        "b": [],
    })
    records, problems = VocSource(tmp_path, "train").load()
    assert problems == []
    dog, cat = 12, 8  # 1-based positions of "dog" and "cat" in the 20 VOC classes
    np.testing.assert_array_equal(records[0].boxes, np.array([[0, 0, 10, 20]], np.float32))  # pixels 1..10 -> [0, 10]
    np.testing.assert_array_equal(records[0].labels, [dog])
    np.testing.assert_array_equal(records[0].ignore_boxes, np.array([[4, 5, 30, 40]], np.float32))
    np.testing.assert_array_equal(records[0].ignore_labels, [cat])
    assert records[1].boxes.shape == (0, 4) and records[1].image_id == 1

    trained_on_difficult, _ = VocSource(tmp_path, "train", use_difficult=True).load()
    np.testing.assert_array_equal(trained_on_difficult[0].labels, [dog, cat])
    assert trained_on_difficult[0].ignore_boxes.shape == (0, 4)

    kept, _ = load_split(VocSource(tmp_path, "train"), "header")
    dropped, _ = load_split(VocSource(tmp_path, "train", keep_empty=False), "header")
    assert [r.path.name for r in kept] == ["a.jpg", "b.jpg"] and [r.path.name for r in dropped] == ["a.jpg"]
