"""COCO export and ``python -m frcnn.data.convert``: COCO -> ours -> COCO is the same JSON; any
source written as COCO reads back as the same records."""

import json
from collections import Counter

import numpy as np
import pytest
from datafiles import COCO128, write_coco, write_csv, write_yolo

from frcnn.data import CocoSource, CsvSource, YoloSource, load_split
from frcnn.data.coco_export import to_coco
from frcnn.data.convert import convert_split, main


def test_coco_round_trip_is_the_same_json(tmp_path):
    """Ids, file names, sizes, categories (non-contiguous ids), xywh, crowd, an image without boxes."""
    annotations = [
        {"image_id": 1, "category_id": 7, "bbox": [10.25, 5.5, 20, 30.75]},
        {"image_id": 1, "category_id": 3, "bbox": [0, 1.5, 2, 3]},
        {"image_id": 1, "category_id": 3, "bbox": [40, 20, 8.5, 6], "iscrowd": 1},
        {"image_id": 2, "category_id": 3, "bbox": [1.33, 2.67, 45.01, 60.99]},
    ]
    for a in annotations:
        a["area"] = a["bbox"][2] * a["bbox"][3]
    ann_file = write_coco(tmp_path, annotations, sizes={1: (64, 48), 2: (48, 64), 5: (32, 32)})
    original = json.loads(ann_file.read_text())
    source = CocoSource(tmp_path / "images", ann_file)
    written = to_coco(convert_split(source, "header"), source.class_names, source.category_ids, tmp_path / "images")
    assert written["images"] == original["images"]
    assert written["categories"] == original["categories"]
    assert written["annotations"] == [{k: a[k] for k in ("id", "image_id", "category_id", "bbox", "area", "iscrowd")}
                                      for a in original["annotations"]]


@pytest.mark.shared_data
def test_coco128_round_trip(tmp_path):
    """The real COCO JSON: everything a record carries comes back as written (segmentations, mask
    areas and annotation ids are not carried: docs of frcnn.data.coco_export)."""
    ann_file = COCO128 / "annotations" / "instances.json"
    original = json.loads(ann_file.read_text())
    source = CocoSource(COCO128 / "images", ann_file)
    written = to_coco(convert_split(source, "header"), source.class_names, source.category_ids, COCO128 / "images")
    keys = ("id", "file_name", "width", "height")
    assert written["images"] == [{k: i[k] for k in keys} for i in original["images"]]
    assert written["categories"] == [{"id": c["id"], "name": c["name"]} for c in original["categories"]]

    def boxes(data):
        return Counter((a["image_id"], a["category_id"], a["iscrowd"], *a["bbox"]) for a in data["annotations"])

    assert boxes(written) == boxes(original)  # 939 boxes, to the last of COCO's 2 decimals
    assert len(written["annotations"]) == 939


def read_back(path, image_dir):
    return load_split(CocoSource(image_dir, path), "header")[0]


def assert_same_records(a, b):
    assert [(r.path.resolve(), r.image_id, r.width, r.height) for r in a] == \
           [(r.path.resolve(), r.image_id, r.width, r.height) for r in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-3)  # written to 1/1000 px
        np.testing.assert_array_equal(x.labels, y.labels)


def test_cli_writes_every_split_of_a_csv_dataset(tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", [("img/a.jpg", 1, 2, 11, 22, "dog"), ("img/b.jpg", 0.5, 1.5, 20, 30, "cat"),
                                               "img/c.jpg,,,,,"], images={"img/a.jpg": (64, 48), "img/b.jpg": (40, 30),
                                                                          "img/c.jpg": (32, 32)})
    val = write_csv(tmp_path / "val.csv", [("img/b.jpg", 3, 3, 9, 9, "cat")])
    output = tmp_path / "out" / "coco_{split}.json"
    assert main(["data=csv", f"data.train.csv={train}", f"data.val.csv={val}", f"output={output}"]) == 0
    printed = capsys.readouterr().out
    assert f"train: 3 images, 2 boxes, 2 categories -> {tmp_path / 'out' / 'coco_train.json'}" in printed
    written = json.loads((tmp_path / "out" / "coco_train.json").read_text())
    assert written["info"]["image_dir"] == str(tmp_path / "img")
    assert [i["file_name"] for i in written["images"]] == ["a.jpg", "b.jpg", "c.jpg"]
    assert written["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    for split, csv in (("train", train), ("val", val)):
        ours, _ = load_split(CsvSource(csv, classes=["cat", "dog"]), "header")
        assert_same_records(read_back(tmp_path / "out" / f"coco_{split}.json", tmp_path / "img"), ours)


def test_cli_writes_yolo_with_its_class_ids_and_an_image_dir(tmp_path):
    data_yaml = write_yolo(tmp_path, {"train": {"a": [(0, 0.25, 0.5, 0.25, 0.5), (2, 0.5, 0.5, 1, 1)], "b": []},
                                      "val": {"c": [(2, 0.5, 0.5, 0.5, 0.5)]}}, names={0: "cat", 2: "dog"})
    output = tmp_path / "train.json"
    assert main(["data=yolo", f"data.dataset_yaml={data_yaml}", f"output={output}", f"image_dir={tmp_path}"]) == 0
    written = json.loads(output.read_text())
    assert written["categories"] == [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]  # YOLO id + 1
    assert [i["file_name"] for i in written["images"]] == ["images/train/a.jpg", "images/train/b.jpg"]
    assert_same_records(read_back(output, tmp_path), load_split(YoloSource(data_yaml, "train"), "header")[0])


def test_cli_refuses_bad_data_and_writes_nothing(tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", [("a.jpg", 1, 2, 11, 22, "dog"), ("a.jpg", 9, 2, 1, 22, "dog")],
                      images={"a.jpg": (64, 48)})
    output = tmp_path / "coco.json"
    assert main(["data=csv", f"data.train.csv={train}", f"data.val.csv={train}", f"output={output}"]) == 1
    assert f"{train}: line 3: box ['9', '2', '1', '22'] has a negative width or height" in capsys.readouterr().out
    assert not output.exists() and not list(tmp_path.glob("*.partial"))
    assert main(["data=csv"]) == 2  # no output= : the usage line


@pytest.mark.parametrize("name, expected", [("a.jpg", "a.jpg"), ("sub/b.jpg", "sub/b.jpg"), ("../x/c.jpg", "../x/c.jpg")])
def test_file_names_are_relative_to_the_image_dir(tmp_path, name, expected):
    from frcnn.data.coco_export import image_file_name

    root = tmp_path / "root"
    root.mkdir()
    assert image_file_name(root / name, root) == expected
