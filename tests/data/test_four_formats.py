"""One dataset written four ways (YOLO, CSV, VOC, COCO): the same records come out of each reader."""

import json

import numpy as np
from datafiles import write_image

from frcnn.data import CocoSource, CsvSource, VocSource, YoloSource, load_split

CLASSES = ["cat", "dog"]
# name -> (width, height, [(class, x1, y1, x2, y2)]) in 0-based pixel edges. Sizes are 2^k x 5 * 2^k
# and boxes integers, so YOLO's fractions (x / W) are exact decimals and every encoding is lossless.
DATASET = {
    "a": (64, 32, [("cat", 0, 0, 16, 8), ("dog", 32, 4, 64, 32)]),
    "b": (80, 40, [("dog", 10, 5, 30, 25)]),
    "c": (64, 32, []),
    "d": (40, 80, [("cat", 5, 10, 35, 70), ("cat", 1, 2, 3, 4), ("dog", 0, 0, 40, 80)]),
}


def write_images(folder):
    for seed, (name, (width, height, _)) in enumerate(DATASET.items()):
        write_image(folder / f"{name}.jpg", width, height, seed=seed)


def write_yolo(root):
    write_images(root / "images" / "train")
    for name, (width, height, objects) in DATASET.items():
        lines = [f"{CLASSES.index(c)} {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} {(x2 - x1) / width} "
                 f"{(y2 - y1) / height}\n" for c, x1, y1, x2, y2 in objects]
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train" / f"{name}.txt").write_text("".join(lines))
    (root / "data.yaml").write_text(f"train: images/train\nval: images/train\nnames: {CLASSES}\n")
    return YoloSource(root / "data.yaml", "train")


def write_csv(root):
    write_images(root / "images")
    rows = ["image,x1,y1,x2,y2,label"]
    for name, (_, _, objects) in DATASET.items():
        rows += [f"images/{name}.jpg,{x1},{y1},{x2},{y2},{c}" for c, x1, y1, x2, y2 in objects] or [f"images/{name}.jpg,,,,,"]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return CsvSource(root / "train.csv")


def write_voc(root):
    write_images(root / "JPEGImages")
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for name, (width, height, objects) in DATASET.items():
        boxes = "".join(f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}"
                        f"</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for c, x1, y1, x2, y2 in objects)
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>{width}</width><height>{height}</height>"
            f"</size>{boxes}</annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{name}\n" for name in DATASET))
    return VocSource(root, "train", classes="auto")


def write_coco(root):
    write_images(root / "images")
    images, annotations = [], []
    for image_id, (name, (width, height, objects)) in enumerate(DATASET.items()):
        images.append({"id": image_id, "file_name": f"{name}.jpg", "width": width, "height": height})
        for c, x1, y1, x2, y2 in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1 + CLASSES.index(c),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": i, "name": name} for i, name in enumerate(CLASSES, start=1)]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                     "categories": categories}))
    return CocoSource(root / "images", root / "instances.json")


def test_the_same_records_from_yolo_csv_voc_and_coco(tmp_path):
    sources = {name: writer(tmp_path / name) for name, writer in
               (("yolo", write_yolo), ("csv", write_csv), ("voc", write_voc), ("coco", write_coco))}
    expected_boxes = [np.array([o[1:] for o in objects], np.float32).reshape(-1, 4) for _, _, objects in DATASET.values()]
    expected_labels = [[1 + CLASSES.index(o[0]) for o in objects] for _, _, objects in DATASET.values()]
    for name, source in sources.items():
        assert source.class_names == CLASSES and list(source.category_ids)[:1] == [1], name
        records, problems = load_split(source, "header")
        assert problems == [], name
        assert [r.path.name for r in records] == [f"{n}.jpg" for n in DATASET], name
        assert [r.image_id for r in records] == [0, 1, 2, 3], name
        assert [(r.width, r.height) for r in records] == [(w, h) for w, h, _ in DATASET.values()], name
        for record, boxes, labels in zip(records, expected_boxes, expected_labels):
            np.testing.assert_array_equal(record.boxes, boxes, err_msg=name)
            np.testing.assert_array_equal(record.labels, labels, err_msg=name)
            assert record.ignore_boxes.shape == (0, 4), name
