"""CSV reader: one row per box, header optional, background rows, classes, every bad row."""

import numpy as np
import pytest
from datafiles import write_csv, write_image
from PIL import Image

from frcnn.data import CsvSource, DataError, DetectionDataModule, load_split
from frcnn.data.check import run_check

IMAGES = {"images/a.jpg": (64, 48), "images/b.png": (40, 30), "images/c.jpg": (32, 32)}
ROWS = [
    ("images/a.jpg", 1, 2, 11, 22, "dog"),
    ("images/b.png", 0.5, 1.5, 20, 30, "cat"),
    ("images/a.jpg", 30, 10, 64, 48, "cat"),
    "images/c.jpg,,,,,",  # an image without objects
]


def csv_module(train, val=None, check_images="header"):
    val = val or train
    return DetectionDataModule(train=CsvSource(train, classes_from=[val]), val=CsvSource(val, classes_from=[train]),
                               num_workers=0, check_images=check_images)


def test_rows_become_records(tmp_path):
    path = write_csv(tmp_path / "train.csv", ROWS, images=IMAGES)
    source = CsvSource(path)
    assert source.class_names == ["cat", "dog"] and source.category_ids == [1, 2] and source.classes_auto
    records, problems = load_split(source, "header")
    assert problems == []
    assert [r.path for r in records] == [tmp_path / name for name in ("images/a.jpg", "images/b.png", "images/c.jpg")]
    assert [r.image_id for r in records] == [0, 1, 2]  # order of first appearance
    np.testing.assert_array_equal(records[0].boxes, np.array([[1, 2, 11, 22], [30, 10, 64, 48]], np.float32))
    np.testing.assert_array_equal(records[0].labels, [2, 1])
    np.testing.assert_array_equal(records[1].boxes, np.array([[0.5, 1.5, 20, 30]], np.float32))
    assert records[2].boxes.shape == (0, 4) and records[2].labels.shape == (0,)
    assert [(r.width, r.height) for r in records] == [(64, 48), (40, 30), (32, 32)]  # from the image headers

    without_header = write_csv(tmp_path / "plain.csv", ROWS, header=None)
    plain, _ = load_split(CsvSource(without_header), "header")
    for a, b in zip(records, plain):
        assert a.path == b.path
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
    dropped, _ = load_split(CsvSource(path, keep_empty=False), "header")
    assert [r.path.name for r in dropped] == ["a.jpg", "b.png"]


def test_absolute_paths_and_exif_rotated_sizes(tmp_path):
    image = tmp_path / "elsewhere" / "r.jpg"
    write_image(image, 64, 32)
    exif = Image.Exif()
    exif[0x0112] = 8  # stored 64x32, displayed 32x64
    Image.open(image).save(image, exif=exif)
    path = write_csv(tmp_path / "lists" / "train.csv", [(image, 1, 2, 30, 60, "cat")], header="filename,xmin,ymin,xmax,ymax,class")
    (record,), problems = load_split(CsvSource(path), "header")
    assert problems == [] and record.path == image and (record.width, record.height) == (32, 64)


def test_auto_classes_agree_across_splits_and_explicit_lists(tmp_path):
    train = write_csv(tmp_path / "train.csv", [("a.jpg", 1, 1, 5, 5, "zebra"), ("a.jpg", 1, 1, 5, 5, "ant")],
                      images={"a.jpg": (16, 16)})
    val = write_csv(tmp_path / "val.csv", [("a.jpg", 1, 1, 5, 5, "mole")])
    datamodule = csv_module(train, val)
    assert datamodule.class_names == ["ant", "mole", "zebra"]
    assert CsvSource(val).class_names == ["mole"]  # on its own, only its labels
    explicit = CsvSource(train, classes=["zebra", "ant"])
    records, _ = explicit.load()
    np.testing.assert_array_equal(records[0].labels, [1, 2])
    with pytest.raises(DataError, match="classes: auto found no class name"):
        CsvSource(write_csv(tmp_path / "empty.csv", ["a.jpg,,,,,"]))


@pytest.mark.parametrize("row, problem", [
    ("a.jpg,1,2,3,cat", "expected 6 columns image,x1,y1,x2,y2,label, got 5"),
    (",1,2,3,4,cat", "the image path is empty"),
    ("a.jpg,1,2,,,cat", "x1, y1, x2, y2 must be four numbers (or all empty for an image without objects)"),
    ("a.jpg,1,two,3,4,cat", "box ['1', 'two', '3', '4'] has a value that is not a number"),
    ("a.jpg,1,nan,3,4,cat", "box ['1', 'nan', '3', '4'] has a NaN or infinite coordinate"),
    ("a.jpg,9,2,3,4,cat", "box ['9', '2', '3', '4'] has a negative width or height"),
    ("a.jpg,1,2,3,4,", "box ['1', '2', '3', '4'] has no label"),
])
def test_bad_rows_name_the_file_and_line(tmp_path, row, problem):
    path = write_csv(tmp_path / "train.csv", [("a.jpg", 1, 1, 5, 5, "cat"), row], images={"a.jpg": (16, 16)})
    with pytest.raises(DataError) as caught:
        csv_module(path).setup("fit")
    assert f"{path}: line 3: {problem}" in str(caught.value)  # line 1 is the header


def test_unknown_label_missing_image_and_boxes_outside(tmp_path):
    path = write_csv(tmp_path / "train.csv", [("a.jpg", 1, 1, 5, 5, "cat"), ("a.jpg", 1, 1, 5, 5, "emu"),
                                              ("gone.jpg", 1, 1, 5, 5, "cat"), ("a.jpg", -3, 1, 5, 5, "cat"),
                                              ("a.jpg", 20, 20, 30, 30, "cat")], images={"a.jpg": (16, 16)})
    source = CsvSource(path, classes=["cat"])
    report, failed = run_check(DetectionDataModule(train=source, val=source, num_workers=0, check_images="full"))
    assert failed
    assert report.startswith("classes (1): cat\ncheck_images: full\n")
    assert f"ERROR {path}: line 3: unknown class 'emu' (classes: cat)" in report
    assert f"ERROR {tmp_path / 'gone.jpg'}: image file not found" in report
    assert f"FIXED {path} (a.jpg, lines 2, 3, 5, 6): box [-3, 1, 5, 5] is partly outside the 16x16 image" in report
    assert f"FIXED {path} (a.jpg, lines 2, 3, 5, 6): box [20, 20, 30, 30] lies wholly outside" in report
    assert "problems: 2 fatal, 2 fixed" in report


def test_unreadable_file_fails_at_construction(tmp_path):
    with pytest.raises(DataError, match="CSV file not found"):
        CsvSource(tmp_path / "nope.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not a readable CSV file"):
        CsvSource(tmp_path / "bin.csv")
