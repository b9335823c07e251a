"""Every bad input of the issue, as real files: an error at setup naming the file, or a counted fix."""

import logging

import numpy as np
import pytest
import torch
from datafiles import voc_xml, write_coco, write_image, write_voc

from frcnn.data import CocoSource, DataError, DetectionDataModule, VocSource

GOOD = {"a": [("dog", 1, 1, 10, 20)], "b": [("cat", 5, 6, 30, 40)]}  # 64x48 images


def voc_module(root, check_images="header"):
    return DetectionDataModule(train=VocSource(root, "train"), val=VocSource(root, "train"),
                               num_workers=0, check_images=check_images)


def coco_module(root, ann_file, check_images="header"):
    source = CocoSource(root / "images", ann_file)
    return DetectionDataModule(train=source, val=source, num_workers=0, check_images=check_images)


def setup_error(datamodule) -> str:
    with pytest.raises(DataError) as caught:
        datamodule.setup("fit")
    return str(caught.value)


# --- image files ---------------------------------------------------------------------------------

def test_missing_image_file(tmp_path):
    write_voc(tmp_path, GOOD)
    (tmp_path / "JPEGImages" / "b.jpg").unlink()
    message = setup_error(voc_module(tmp_path))
    assert f"{tmp_path / 'Annotations' / 'b.xml'}: image 'b' is listed in" in message and "but absent" in message


def test_missing_image_file_coco(tmp_path):
    ann_file = write_coco(tmp_path, [{"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]}])
    (tmp_path / "images" / "2.jpg").unlink()
    assert f"{tmp_path / 'images' / '2.jpg'}: image file not found" in setup_error(coco_module(tmp_path, ann_file))


def test_empty_image_file(tmp_path):
    write_voc(tmp_path, GOOD)
    (tmp_path / "JPEGImages" / "a.jpg").write_bytes(b"")
    assert f"{tmp_path / 'JPEGImages' / 'a.jpg'}: image file is empty (0 bytes)" in setup_error(voc_module(tmp_path))


def test_corrupt_jpeg(tmp_path):
    write_voc(tmp_path, GOOD)
    (tmp_path / "JPEGImages" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    message = setup_error(voc_module(tmp_path))
    assert f"{tmp_path / 'JPEGImages' / 'a.jpg'}: not a readable image, truncated or corrupt" in message


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image_is_found_by_the_header_check(tmp_path, suffix):
    write_voc(tmp_path, GOOD)
    path = tmp_path / "JPEGImages" / f"a{suffix}"
    write_image(path, 64, 48)
    if suffix == ".png":
        (tmp_path / "JPEGImages" / "a.jpg").unlink()
        (tmp_path / "Annotations" / "a.xml").write_text(voc_xml("a.png", (64, 48), GOOD["a"]))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = setup_error(voc_module(tmp_path, check_images="header"))
    assert f"{path}: not a readable image, truncated or corrupt (image file is truncated" in message


def test_truncated_jpeg_without_setup_check_fails_clearly_when_loaded(tmp_path):
    write_voc(tmp_path, GOOD)
    path = tmp_path / "JPEGImages" / "b.jpg"
    path.write_bytes(path.read_bytes()[:300])
    datamodule = voc_module(tmp_path, check_images="off")
    datamodule.setup("fit")  # "off" reads no image at setup
    dataset = datamodule.datasets["train"]
    assert dataset[0][0].shape == (3, 48, 64)
    with pytest.raises(DataError, match=f"{path}: cannot decode image .*check_images=full"):
        dataset[1]


def test_image_size_differs_from_the_annotation(tmp_path):
    write_voc(tmp_path, GOOD)
    write_image(tmp_path / "JPEGImages" / "a.jpg", 50, 40)
    message = setup_error(voc_module(tmp_path))
    assert f"{tmp_path / 'Annotations' / 'a.xml'}: annotation says the image is 64x48 but a.jpg is 50x40" in message


# --- annotation files ----------------------------------------------------------------------------

def test_malformed_xml(tmp_path):
    write_voc(tmp_path, GOOD)
    (tmp_path / "Annotations" / "b.xml").write_text("<annotation><object><name>dog</name></annotation>")
    assert f"{tmp_path / 'Annotations' / 'b.xml'}: malformed XML (mismatched tag" in setup_error(voc_module(tmp_path))


def test_xml_without_size_reads_the_image(tmp_path, caplog):
    write_voc(tmp_path, GOOD)
    (tmp_path / "Annotations" / "b.xml").write_text(voc_xml("b.jpg", None, GOOD["b"]))
    datamodule = voc_module(tmp_path)
    with caplog.at_level(logging.WARNING, logger="frcnn.data"):
        datamodule.setup("fit")
    record = datamodule.datasets["train"].records[1]
    assert (record.width, record.height) == (64, 48)
    assert "1 x size from image (first:" in caplog.text and "b.xml" in caplog.text


def test_unknown_class_name(tmp_path):
    write_voc(tmp_path, {"a": [("dog", 1, 1, 10, 20), ("unicorn", 1, 1, 5, 5)]})
    assert (f"{tmp_path / 'Annotations' / 'a.xml'}: object #1: unknown class name 'unicorn'"
            in setup_error(voc_module(tmp_path)))


def test_image_listed_but_absent(tmp_path):
    write_voc(tmp_path, GOOD)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("a\nb\nc\n")
    message = setup_error(voc_module(tmp_path))
    assert f"{tmp_path / 'Annotations' / 'c.xml'}: image 'c' is listed in" in message
    assert "its annotation file is absent" in message


def test_duplicate_image_ids(tmp_path):
    write_voc(tmp_path, GOOD)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("a\nb\na\n")
    assert "train.txt: duplicate image id 'a' (lines 1 and 3)" in setup_error(voc_module(tmp_path))


def test_duplicate_image_ids_coco(tmp_path):
    images = [{"id": 1, "file_name": "1.jpg", "width": 64, "height": 48},
              {"id": 1, "file_name": "2.jpg", "width": 48, "height": 64}]
    write_coco(tmp_path, [])  # writes the image files
    ann_file = write_coco(tmp_path, [], images=images)
    assert f"{ann_file}: duplicate image id 1 (image entry #1, file '2.jpg')" in setup_error(coco_module(tmp_path, ann_file))


@pytest.mark.parametrize("bbox, problem", [
    ([1, 2, 3], "bbox must be 4 numbers [x, y, width, height], got [1, 2, 3]"),
    (["1", 2, 3, 4], "bbox must be 4 numbers [x, y, width, height], got ['1', 2, 3, 4]"),
    ({"x": 1}, "bbox must be 4 numbers [x, y, width, height], got {'x': 1}"),
    ([1, 2, float("nan"), 4], "bbox has a NaN or infinite value [1, 2, nan, 4]"),
    ([10, 2, -3, 4], "bbox has a negative width or height [10, 2, -3, 4]"),
])
def test_coco_bad_bbox(tmp_path, bbox, problem):
    ann_file = write_coco(tmp_path, [{"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]},
                                     {"image_id": 2, "category_id": 7, "bbox": bbox}])
    assert f"{ann_file}: annotation id 2 (image 2.jpg): {problem}" in setup_error(coco_module(tmp_path, ann_file))


def test_coco_unknown_category_and_image(tmp_path):
    ann_file = write_coco(tmp_path, [{"image_id": 1, "category_id": 4, "bbox": [1, 2, 3, 4]},
                                     {"image_id": 9, "category_id": 3, "bbox": [1, 2, 3, 4]}])
    message = setup_error(coco_module(tmp_path, ann_file))
    assert f"{ann_file}: annotation id 1 (image 1.jpg): unknown category_id 4" in message
    assert f"{ann_file}: annotation id 2 refers to image id 9" in message
    assert message.startswith("2 problem(s) in the train split of CocoSource(")


def test_coco_malformed_json_fails_at_construction(tmp_path):
    (tmp_path / "instances.json").write_text('{"images": [], "categories": [')
    with pytest.raises(DataError, match=f"{tmp_path / 'instances.json'}: not a valid JSON file"):
        CocoSource(tmp_path, tmp_path / "instances.json")


# --- box values ----------------------------------------------------------------------------------

def test_voc_nan_and_negative_width(tmp_path):
    write_voc(tmp_path, {"a": [("dog", "nan", 1, 10, 20)], "b": [("cat", 30, 6, 20, 40)]})
    message = setup_error(voc_module(tmp_path))
    assert f"{tmp_path / 'Annotations' / 'a.xml'}: box [nan, 0, 10, 20] has a NaN or infinite coordinate" in message
    assert f"{tmp_path / 'Annotations' / 'b.xml'}: box [29, 5, 20, 40] has a negative width or height" in message


def test_outside_and_zero_area_boxes_are_clipped_or_dropped_with_counted_warnings(tmp_path, caplog):
    write_voc(tmp_path, {
        "a": [("dog", -4, 1, 10, 20), ("cat", 50, 40, 70, 60), ("cow", 3, 3, 9, 9)],  # partly outside x2
        "b": [("cat", 70, 1, 80, 20), ("dog", 11, 5, 10, 20), ("horse", 1, 1, 64, 48)],  # outside, zero area
    })
    datamodule = voc_module(tmp_path)
    with caplog.at_level(logging.WARNING, logger="frcnn.data"):
        datamodule.setup("fit")
    records = datamodule.datasets["train"].records
    np.testing.assert_array_equal(records[0].boxes, np.array([[0, 0, 10, 20], [49, 39, 64, 48], [2, 2, 9, 9]],
                                                             np.float32))
    np.testing.assert_array_equal(records[0].labels, [12, 8, 10])  # dog, cat, cow: labels stay with their boxes
    np.testing.assert_array_equal(records[1].boxes, np.array([[0, 0, 64, 48]], np.float32))
    np.testing.assert_array_equal(records[1].labels, [13])  # horse
    assert "2 x clipped to the image (first:" in caplog.text
    assert "1 x dropped: outside the image (first:" in caplog.text
    assert "1 x dropped: zero area (first:" in caplog.text
    image, target = datamodule.datasets["train"][1]
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0.0, 64.0, 48.0]]))


def test_coco_rounding_outside_the_image_is_clipped_silently(tmp_path, caplog):
    ann_file = write_coco(tmp_path, [{"image_id": 1, "category_id": 3, "bbox": [40.5, 30.0, 23.75, 18.3]}])
    datamodule = coco_module(tmp_path, ann_file)
    with caplog.at_level(logging.WARNING, logger="frcnn.data"):
        datamodule.setup("fit")
    np.testing.assert_allclose(datamodule.datasets["train"].records[0].boxes, [[40.5, 30.0, 64.0, 48.0]])
    assert caplog.text == ""


def test_data_check_cli_lists_every_problem(tmp_path):
    from frcnn.data.check import run_check

    write_voc(tmp_path, {"a": [("dog", 1, 1, 10, 20)], "b": [("cat", -9, 6, 30, 40)], "c": [("emu", 1, 1, 5, 5)]})
    (tmp_path / "JPEGImages" / "a.jpg").write_bytes(b"")
    report, failed = run_check(voc_module(tmp_path, check_images="full"))
    assert failed
    assert f"ERROR {tmp_path / 'JPEGImages' / 'a.jpg'}: image file is empty (0 bytes)" in report
    assert f"ERROR {tmp_path / 'Annotations' / 'c.xml'}: object #0: unknown class name 'emu'" in report
    assert f"FIXED {tmp_path / 'Annotations' / 'b.xml'}: box [-10, 5, 30, 40] is partly outside" in report
    assert "problems: 2 fatal, 1 fixed" in report
