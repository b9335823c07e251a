"""YOLO reader: hand-made Ultralytics layouts, the conversion, EXIF, classes, every bad input."""

import logging

import numpy as np
import pytest
from datafiles import write_image, write_yolo
from PIL import Image

from frcnn.data import DataError, DetectionDataModule, DetectionDataset, YoloSource, load_split
from frcnn.data.check import run_check

# 64x32 images: every normalised value below is exact in binary, so the pixel boxes are too.
TRAIN = {
    "a": [(0, 0.25, 0.5, 0.25, 0.5), (1, 0.75, 0.375, 0.5, 0.25)],  # -> [8, 8, 24, 24], [32, 8, 64, 16]
    "b": [],                                                         # an empty label file
    "c": None,                                                       # no label file at all
}
VAL = {"d": [(1, 0.5, 0.5, 1.0, 1.0)]}


def yolo_module(dataset, check_images="header"):
    return DetectionDataModule(train=YoloSource(dataset, "train"), val=YoloSource(dataset, "val"),
                               num_workers=0, check_images=check_images)


def setup_error(datamodule) -> str:
    with pytest.raises(DataError) as caught:
        datamodule.setup("fit")
    return str(caught.value)


def test_yaml_with_a_names_list(tmp_path, caplog):
    data_yaml = write_yolo(tmp_path, {"train": TRAIN, "val": VAL}, names=["cat", "dog"])
    source = YoloSource(data_yaml, "train")
    assert source.class_names == ["cat", "dog"] and source.category_ids == [1, 2]  # YOLO id + 1
    records, problems = source.load()
    assert [r.path.name for r in records] == ["a.jpg", "b.jpg", "c.jpg"] and [r.image_id for r in records] == [0, 1, 2]
    np.testing.assert_array_equal(records[0].boxes, np.array([[8, 8, 24, 24], [32, 8, 64, 16]], np.float32))
    np.testing.assert_array_equal(records[0].labels, [1, 2])
    assert records[1].boxes.shape == (0, 4) and records[2].boxes.shape == (0, 4)  # background images
    assert (records[0].width, records[0].height) == (64, 32)
    assert [(p.file, p.fatal, p.kind) for p in problems] == [
        (str(tmp_path / "labels" / "train" / "c.txt"), False, "no label file: background image")]
    datamodule = yolo_module(data_yaml)
    with caplog.at_level(logging.WARNING, logger="frcnn.data"):
        datamodule.setup("fit")
    assert "1 x no label file: background image" in caplog.text
    image, target = datamodule.datasets["train"][0]
    assert image.shape == (3, 32, 64)
    np.testing.assert_array_equal(target["boxes"].numpy(), records[0].boxes)


def test_names_as_a_dict_with_gaps(tmp_path):
    data_yaml = write_yolo(tmp_path, {"train": {"a": [(3, 0.5, 0.5, 0.5, 0.5), (0, 0.5, 0.5, 0.25, 0.25)]},
                                      "val": {"b": []}}, names={0: "cat", 3: "dog"})
    source = YoloSource(data_yaml, "train")
    assert source.class_names == ["cat", "dog"] and source.category_ids == [1, 4]
    records, _ = source.load()
    np.testing.assert_array_equal(records[0].labels, [2, 1])


def test_folder_layout_and_auto_classes_over_every_split(tmp_path):
    root = write_yolo(tmp_path, {"train": {"a": [(2, 0.5, 0.5, 0.5, 0.5)], "b": [(0, 0.5, 0.5, 0.25, 0.25)]},
                                 "val": {"c": [(1, 0.5, 0.5, 0.5, 0.5)]}}, yaml_file=False)
    train, val = YoloSource(root, "train"), YoloSource(root, "val")
    assert train.class_names == val.class_names == ["0", "1", "2"]  # val's id 1 counts for train too
    assert train.classes_auto  # found in the labels (a YAML's names are not "found": see the data check test)
    records, problems = train.load()
    assert problems == []
    np.testing.assert_array_equal(np.concatenate([r.labels for r in records]), [3, 1])
    named = YoloSource(root, "train", classes=["cat", "dog", "emu"])
    assert named.class_names == ["cat", "dog", "emu"] and not named.classes_auto


def test_image_list_txt_and_polygon_lines(tmp_path):
    write_yolo(tmp_path, {"train": {"a": ["1 0.25 0.25 0.75 0.5 0.5 0.75"], "b": [(0, 0.5, 0.5, 0.5, 0.5)]}},
               yaml_file=False)
    (tmp_path / "train.txt").write_text("./images/train/b.jpg\nimages/train/a.jpg\n")
    (tmp_path / "data.yaml").write_text("train: train.txt\nval: train.txt\nnames: [cat, dog]\n")
    records, problems = YoloSource(tmp_path / "data.yaml", "train").load()
    assert problems == []
    assert [r.path.name for r in records] == ["b.jpg", "a.jpg"]  # the list's order
    np.testing.assert_array_equal(records[1].boxes, np.array([[16, 8, 48, 24]], np.float32))  # around the points
    np.testing.assert_array_equal(records[1].labels, [2])


def test_exif_rotated_image_uses_the_displayed_size(tmp_path):
    """A JPEG stored 64x32 with EXIF orientation 6 shows as 32x64: the fractions are of 32 and 64."""
    root = write_yolo(tmp_path, {"train": {"a": [(0, 0.25, 0.5, 0.5, 0.25)]}, "val": {}}, names=["cat"])
    path = tmp_path / "images" / "train" / "a.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(path).save(path, exif=exif)
    records, _ = YoloSource(root, "train").load()
    assert (records[0].width, records[0].height) == (32, 64)
    np.testing.assert_array_equal(records[0].boxes, np.array([[0, 24, 16, 40]], np.float32))
    image, _ = DetectionDataset(records)[0]
    assert image.shape == (3, 64, 32)  # decoded as displayed, like the boxes


def test_boxes_sticking_out_are_clipped_with_a_counted_warning(tmp_path, caplog):
    data_yaml = write_yolo(tmp_path, {"train": {"a": [(0, 0.0625, 0.5, 0.25, 0.5)]}, "val": VAL}, names=["cat", "dog"])
    datamodule = yolo_module(data_yaml)
    with caplog.at_level(logging.WARNING, logger="frcnn.data"):
        datamodule.setup("fit")
    np.testing.assert_array_equal(datamodule.datasets["train"].records[0].boxes, np.array([[0, 8, 12, 24]], np.float32))
    assert "1 x clipped to the image (first:" in caplog.text and "box [-4, 8, 12, 24]" in caplog.text


@pytest.mark.parametrize("line, problem", [
    ("0 0.5 0.5 0.5", "expected 'class cx cy w h' (5 values) or a polygon"),
    ("0 0.5 abc 0.5 0.5", "'abc' is not a number"),
    ("0 0.5 nan 0.5 0.5", "NaN or infinite value in [0.5, nan, 0.5, 0.5]"),
    ("1.5 0.5 0.5 0.5 0.5", "class id '1.5' is not a non-negative integer"),
    ("-1 0.5 0.5 0.5 0.5", "class id '-1' is not a non-negative integer"),
    ("5 0.5 0.5 0.5 0.5", "class id 5 is not among the classes (ids 0..1)"),
    ("0 32 16 10 8", "values [32.0, 16.0, 10.0, 8.0] are not fractions of the image size in [0, 1]"),
    ("0 0.5 0.5 -0.5 0.5", "values [0.5, 0.5, -0.5, 0.5] are not fractions"),
])
def test_bad_label_lines_name_the_file_and_line(tmp_path, line, problem):
    data_yaml = write_yolo(tmp_path, {"train": {"a": [(0, 0.5, 0.5, 0.5, 0.5), line]}, "val": VAL},
                           names=["cat", "dog"])
    message = setup_error(yolo_module(data_yaml))
    assert f"{tmp_path / 'labels' / 'train' / 'a.txt'}: line 2: {problem}" in message
    assert message.startswith("1 problem(s) in the train split of YoloSource(")


def test_missing_and_unreadable_images(tmp_path):
    data_yaml = write_yolo(tmp_path, {"train": {"a": [(0, 0.5, 0.5, 0.5, 0.5)], "b": [(1, 0.5, 0.5, 0.5, 0.5)]},
                                      "val": VAL}, names=["cat", "dog"])
    (tmp_path / "images" / "train" / "b.jpg").unlink()  # its label file stays behind
    (tmp_path / "images" / "train" / "a.jpg").write_bytes(b"")
    message = setup_error(yolo_module(data_yaml))
    assert f"{tmp_path / 'labels' / 'train' / 'b.txt'}: label file without an image" in message
    assert f"{tmp_path / 'images' / 'train' / 'a.jpg'}: image file is empty (0 bytes)" in message

    (tmp_path / "list.txt").write_text("images/val/d.jpg\nimages/val/gone.jpg\n")
    (tmp_path / "data.yaml").write_text("train: list.txt\nval: list.txt\nnames: [cat, dog]\n")
    records, problems = YoloSource(tmp_path / "data.yaml", "train").load()
    assert [r.path.name for r in records] == ["d.jpg"]
    assert [str(p) for p in problems] == [f"{tmp_path / 'list.txt'}: line 2: image images/val/gone.jpg not found "
                                          f"({tmp_path / 'images' / 'val' / 'gone.jpg'})"]


def test_no_label_file_at_all_means_a_wrong_labels_folder(tmp_path):
    data_yaml = write_yolo(tmp_path, {"train": {"a": None, "b": None}, "val": VAL}, names=["cat", "dog"])
    message = setup_error(yolo_module(data_yaml))
    assert f"{tmp_path / 'labels' / 'train'}: no label file for any of the 2 'train' images" in message


def test_bad_dataset_descriptions_fail_at_construction(tmp_path):
    with pytest.raises(DataError, match="YOLO dataset YAML or folder not found"):
        YoloSource(tmp_path / "nope.yaml", "train")
    data_yaml = write_yolo(tmp_path, {"train": {"a": []}, "val": {}}, names=["cat"])
    with pytest.raises(DataError, match=r"no 'test' split \(splits: train, val\)"):
        YoloSource(data_yaml, "test")
    (tmp_path / "bad.yaml").write_text("path: elsewhere\ntrain: images/train\n")
    with pytest.raises(DataError, match=f"path 'elsewhere' is not a folder .*{tmp_path / 'elsewhere'}"):
        YoloSource(tmp_path / "bad.yaml", "train")
    (tmp_path / "bad.yaml").write_text("train: [images/train\n")
    with pytest.raises(DataError, match="not a readable YAML file"):
        YoloSource(tmp_path / "bad.yaml", "train")
    (tmp_path / "bad.yaml").write_text("train: images/train\nnames: {a: cat}\n")
    with pytest.raises(DataError, match="names keys must be integer class ids"):
        YoloSource(tmp_path / "bad.yaml", "train")
    empty = tmp_path / "empty"
    write_image(empty / "images" / "train" / "a.jpg")
    with pytest.raises(DataError, match="found no class id in the label files"):
        YoloSource(empty, "train")


def test_data_check_report(tmp_path):
    data_yaml = write_yolo(tmp_path, {"train": {**TRAIN, "e": ["7 0.5 0.5 0.5 0.5"]}, "val": VAL},
                           names=["cat", "dog"])
    report, failed = run_check(yolo_module(data_yaml, check_images="full"))
    assert failed
    assert report.startswith("classes (2): cat, dog\ncheck_images: full\n")  # the YAML's names: not "found"
    assert "images: 4   without training boxes: 3" in report  # b, c, and e (its only line is bad)
    assert f"ERROR {tmp_path / 'labels' / 'train' / 'e.txt'}: line 1: class id 7 is not among the classes" in report
    assert f"FIXED {tmp_path / 'labels' / 'train' / 'c.txt'}: no label file: a background image" in report
    assert "problems: 1 fatal, 1 fixed" in report
    assert len(load_split(YoloSource(data_yaml, "val"), "full")[0]) == 1
