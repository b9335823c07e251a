"""Property-based tests of the VOC and COCO readers (Hypothesis): 1000 generated datasets each, with
missing fields, wrong types, huge / negative / NaN / infinite numbers, unicode names, duplicate ids,
boxes outside the image, missing / empty / truncated images and malformed files.

The property: reading a split (reader, data check, ``raise_for_problems``: what the DataModule's
setup does) either gives exactly the records an independent restatement of the documented rules
computes (``frcnn.data.validate``'s table: VOC's 1-based boxes to pixel edges, COCO's xywh to xyxy,
clipped to the image, zero-area ones dropped, difficult / crowd ones ignored), or raises ``DataError``
naming a file of the dataset, exactly when the generated data has a fatal defect. Never another
exception. Each example writes its files into a fresh folder; images are one tiny JPEG's bytes.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from frcnn.data import CocoSource, DataError, VocSource, load_split
from frcnn.data.validate import raise_for_problems

WIDTH, HEIGHT = 20, 16  # every image file
SETTINGS = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (WIDTH, HEIGHT), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


JPEG = _jpeg()
IMAGE_BYTES = {"ok": JPEG, "empty": b"", "truncated": JPEG[: len(JPEG) // 2], "missing": None}
CLASSES = ["cat", "dög", "鳥"]
NAMES = ["img0", "ümlaut", "图像", "x-1", "日本語の名前"]

# A coordinate or size as written in a file: (text, its float value or None when it is not a number)
numbers = st.one_of(
    st.integers(-40, 60).map(float),
    st.floats(-1e3, 1e3, allow_nan=False, width=32),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e39, -1e39, 1e300]),
)


def float32(value: float) -> np.float32:
    with np.errstate(over="ignore"):
        return np.float32(value)


def expected_boxes(boxes, labels, ignored):
    """The documented fixes: clip to the image, drop zero-area boxes; split ignored ones off."""
    out = {"boxes": [], "labels": [], "ignore_boxes": [], "ignore_labels": []}
    for box, label, ignore in zip(boxes, labels, ignored):
        box = np.clip(np.asarray(box, np.float32), 0.0, np.array([WIDTH, HEIGHT, WIDTH, HEIGHT], np.float32))
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        out["ignore_boxes" if ignore else "boxes"].append(box)
        out["ignore_labels" if ignore else "labels"].append(label)
    return out


def box_is_fatal(box) -> bool:
    """NaN / infinite after float32 conversion, or a negative width or height."""
    box = [float32(v) for v in box]
    return not all(np.isfinite(box)) or box[2] < box[0] or box[3] < box[1]


def check(root: Path, expect_fatal: bool, expected: list[dict] | None, read) -> None:
    try:
        records = read()
    except DataError as error:
        assert expect_fatal, f"unexpected DataError: {error}"
        assert str(root) in str(error), f"the message names no file of the dataset: {error}"
        return
    assert not expect_fatal, "a fatal defect went through"
    assert len(records) == len(expected)
    for record, want in zip(records, expected):
        assert record.path == want["path"]
        assert (record.width, record.height) == (WIDTH, HEIGHT)
        for key in ("boxes", "ignore_boxes"):
            got = getattr(record, key)
            assert got.dtype == np.float32 and got.shape == (len(want[key]), 4)
            np.testing.assert_array_equal(got, np.asarray(want[key], np.float32).reshape(-1, 4))
        for key in ("labels", "ignore_labels"):
            np.testing.assert_array_equal(getattr(record, key), np.asarray(want[key], np.int64))


def read_split(source):
    records, problems = load_split(source, "header")
    raise_for_problems("train", source, problems)
    return records


# --- VOC -----------------------------------------------------------------------------------------

voc_objects = st.lists(st.fixed_dictionaries({
    "name": st.sampled_from([*CLASSES, "unknöwn", ""]),
    "difficult": st.sampled_from([None, "0", "1", " 1 "]),
    "coords": st.lists(st.one_of(numbers.map(lambda v: (repr(v) if math.isfinite(v) else str(v), v)),
                                 st.sampled_from([("", None), ("abc", None), (None, None)])),
                       min_size=4, max_size=4),
}), max_size=4)
voc_images = st.lists(st.fixed_dictionaries({
    "xml": st.sampled_from(["ok", "ok", "ok", "missing", "malformed"]),
    "image": st.sampled_from(["ok", "ok", "ok", "missing", "empty", "truncated"]),
    "size": st.sampled_from(["match", "match", "absent", "mismatch", "nan", "inf", "text", "float"]),
    "objects": voc_objects,
}), min_size=1, max_size=3)


def write_voc(root: Path, images: list[dict], duplicate: bool) -> tuple[bool, list[dict]]:
    """Write the dataset; return (has a fatal defect, the expected records when it has none)."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    names = NAMES[: len(images)]
    (root / "ImageSets/Main/train.txt").write_text("\n".join(names + names[:1] * duplicate) + "\n")
    fatal, expected = duplicate, []
    label_of = {name: label for label, name in enumerate(CLASSES, start=1)}
    sizes = {"match": (WIDTH, HEIGHT), "mismatch": (WIDTH + 3, HEIGHT), "nan": ("nan", "nan"), "inf": ("inf", 5),
             "text": ("wide", HEIGHT), "float": (f"{WIDTH}.0", f"{HEIGHT}.0")}
    for name, image in zip(names, images):
        data = IMAGE_BYTES[image["image"]]
        if data is not None:
            (root / "JPEGImages" / f"{name}.jpg").write_bytes(data)
        fatal |= image["image"] != "ok" or image["xml"] != "ok" or image["size"] == "mismatch"
        annotation = ET.Element("annotation")
        if image["size"] != "absent":
            size = ET.SubElement(annotation, "size")
            ET.SubElement(size, "width").text, ET.SubElement(size, "height").text = map(str, sizes[image["size"]])
        boxes, labels, ignored = [], [], []
        for obj in image["objects"]:
            element = ET.SubElement(annotation, "object")
            ET.SubElement(element, "name").text = obj["name"]
            if obj["difficult"] is not None:
                ET.SubElement(element, "difficult").text = obj["difficult"]
            bndbox = ET.SubElement(element, "bndbox")
            for key, (text, _) in zip(("xmin", "ymin", "xmax", "ymax"), obj["coords"]):
                if text is not None:
                    ET.SubElement(bndbox, key).text = text
            values = [value for _, value in obj["coords"]]
            if obj["name"] not in label_of or any(value is None for value in values):
                fatal = True
                continue
            xmin, ymin, xmax, ymax = values
            box = [xmin - 1.0, ymin - 1.0, xmax, ymax]  # 1-based inclusive -> 0-based pixel edges
            fatal |= box_is_fatal(box)
            boxes.append(box)
            labels.append(label_of[obj["name"]])
            ignored.append((obj["difficult"] or "0").strip() not in ("0", ""))
        text = ET.tostring(annotation, encoding="unicode")
        if image["xml"] == "malformed":
            text = text[: len(text) // 2] + "<"
        if image["xml"] != "missing":
            (root / "Annotations" / f"{name}.xml").write_text(text, encoding="utf-8")
        if not fatal:
            expected.append({"path": root / "JPEGImages" / f"{name}.jpg", **expected_boxes(boxes, labels, ignored)})
    return fatal, expected


@SETTINGS
@given(images=voc_images, duplicate=st.booleans())
def test_voc_reader_gives_the_documented_records_or_a_data_error(images, duplicate):
    root = Path(tempfile.mkdtemp(prefix="voc_fuzz_"))
    try:
        fatal, expected = write_voc(root, images, duplicate)
        check(root, fatal, expected, lambda: read_split(VocSource(root, "train", classes=CLASSES)))
    finally:
        shutil.rmtree(root)


# --- COCO ----------------------------------------------------------------------------------------

anything = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.floats(allow_nan=True),
                     st.integers(-5, 5), st.just(10**400), st.lists(st.integers(), max_size=2))
json_numbers = st.one_of(numbers, st.integers(-30, 40), st.just(10**400), st.just(-(10**400)))
coco_annotations = st.lists(st.fixed_dictionaries({
    "id": st.one_of(st.integers(1, 6), anything),
    "image": st.integers(0, 3),  # an index into the images; 3 and beyond: an unknown image id
    "category": st.one_of(st.integers(1, 3), anything),
    "bbox": st.one_of(st.lists(json_numbers, min_size=4, max_size=4), anything,
                      st.lists(st.integers(0, 9), min_size=3, max_size=5)),
    "iscrowd": st.sampled_from([None, 0, 1, False, "yes"]),
}), max_size=5)
coco_images = st.lists(st.fixed_dictionaries({
    "id": st.one_of(st.integers(1, 4), anything),
    "file": st.one_of(st.sampled_from(["ok", "ok", "missing", "empty", "truncated"]), anything),
    "width": st.one_of(st.just(WIDTH), st.just(WIDTH), st.integers(-3, 30), anything),
    "height": st.one_of(st.just(HEIGHT), st.just(HEIGHT), anything),
}), min_size=0, max_size=3)
coco_categories = st.one_of(
    st.just([{"id": 1, "name": CLASSES[0]}, {"id": 2, "name": CLASSES[1]}, {"id": 3, "name": CLASSES[2]}]),
    st.lists(st.fixed_dictionaries({"id": st.one_of(st.integers(0, 3), anything),
                                    "name": st.one_of(st.sampled_from(CLASSES), anything)}), max_size=3),
)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def write_coco(root: Path, categories, images, annotations) -> tuple[bool, bool, list[dict]]:
    """Write the JSON and images; return (categories fatal, other fatal defect, expected records)."""
    ids = [c.get("id") for c in categories]
    category_fatal = (not categories or not all(is_int(i) and i > 0 for i in ids) or len(set(ids)) != len(ids)
                      or not all(isinstance(c.get("name"), str) for c in categories))
    fatal, entries, valid_images = False, [], {}
    for position, image in enumerate(images):
        file_name = f"{NAMES[position]}.jpg" if isinstance(image["file"], str) and image["file"] in IMAGE_BYTES \
            else image["file"]
        entry = {"id": image["id"], "file_name": file_name, "width": image["width"], "height": image["height"]}
        entries.append(entry)
        if isinstance(image["file"], str) and image["file"] in IMAGE_BYTES and IMAGE_BYTES[image["file"]] is not None:
            (root / file_name).write_bytes(IMAGE_BYTES[image["file"]])
        good = (is_int(image["id"]) and image["id"] not in valid_images and isinstance(file_name, str) and file_name
                and is_int(image["width"]) and image["width"] > 0 and is_int(image["height"]) and image["height"] > 0)
        if not good:
            fatal = True
            continue
        valid_images[image["id"]] = entry
        fatal |= image["file"] != "ok" or (image["width"], image["height"]) != (WIDTH, HEIGHT)
    ids_of_images = [e["id"] for e in entries]
    boxes = {image_id: ([], [], []) for image_id in valid_images}
    seen, written = set(), []
    for annotation in annotations:
        image_id = ids_of_images[annotation["image"]] if annotation["image"] < len(entries) else 999
        entry = {"id": annotation["id"], "image_id": image_id, "category_id": annotation["category"],
                 "bbox": annotation["bbox"]}
        if annotation["iscrowd"] is not None:
            entry["iscrowd"] = annotation["iscrowd"]
        written.append(entry)
        bbox = annotation["bbox"]
        ok = (is_int(annotation["id"]) and annotation["id"] not in seen and is_int(image_id) and image_id in valid_images
              and is_int(annotation["category"]) and annotation["category"] in ids and not category_fatal
              and isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox))
        if is_int(annotation["id"]) and is_int(image_id) and image_id in valid_images:
            seen.add(annotation["id"])  # counted once the id and image are valid (the reader's order)
        if not ok:
            fatal = True
            continue
        values = [float(v) if abs(v) < 1e308 else math.copysign(math.inf, v) for v in bbox]
        if not all(math.isfinite(v) for v in values) or values[2] < 0 or values[3] < 0:
            fatal = True
            continue
        x, y, w, h = values
        box = [x, y, x + w, y + h]
        fatal |= box_is_fatal(box)
        label = sorted(ids).index(annotation["category"]) + 1
        for part, value in zip(boxes[image_id], (box, label, bool(annotation.get("iscrowd", 0)))):
            part.append(value)
    (root / "instances.json").write_text(json.dumps({"images": entries, "annotations": written,
                                                     "categories": categories}))
    expected = [{"path": root / entry["file_name"], **expected_boxes(*boxes[image_id])}
                for image_id, entry in valid_images.items()]
    return category_fatal, fatal, expected


@SETTINGS
@given(categories=coco_categories, images=coco_images, annotations=coco_annotations)
def test_coco_reader_gives_the_documented_records_or_a_data_error(categories, images, annotations):
    root = Path(tempfile.mkdtemp(prefix="coco_fuzz_"))
    try:
        category_fatal, fatal, expected = write_coco(root, categories, images, annotations)
        check(root, category_fatal or fatal, expected,
              lambda: read_split(CocoSource(root, root / "instances.json")))
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("text", ["inf", "-inf", "1e400"])
def test_voc_size_that_is_not_an_integer_is_read_from_the_image(tmp_path, text):
    """Found by the fuzzer: int(float("inf")) raises OverflowError, which the size parser let through."""
    fatal, expected = write_voc(tmp_path / "voc", [{"xml": "ok", "image": "ok", "size": "absent", "objects": []}], False)
    xml = tmp_path / "voc" / "Annotations" / "img0.xml"
    xml.write_text(f"<annotation><size><width>{text}</width><height>16</height></size></annotation>")
    (record,) = read_split(VocSource(tmp_path / "voc", "train", classes=CLASSES))
    assert (record.width, record.height) == (WIDTH, HEIGHT)
