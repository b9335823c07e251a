"""``data=shapes``: a seeded synthetic detection dataset, written as real files on first use.

Each image (128..192 px a side by default) has 1-4 shapes (circle, square, triangle) of varied size
and colour, some overlapping, on a textured background (smooth blobs, stripes, pixel noise). The
dataset is written in both layouts the project reads, sharing one image folder:

    <root>/JPEGImages/{train,val}_NNNNN.{jpg,png}   every ``png_every``-th image is a PNG
    <root>/Annotations/<name>.xml                    VOC (1-based inclusive pixel boxes)
    <root>/ImageSets/Main/{train,val}.txt
    <root>/coco/instances_{train,val}.json           COCO (xywh), category ids 1..3
    <root>/stamp.json                                generator version and parameters

Generation runs into a temporary sibling folder that is renamed into place when complete, so an
interrupted run never leaves a half dataset; a stamp that differs from the current parameters
(another seed, size, version) regenerates. Every image draws from its own generator seeded by
``(seed, split, index)``: the dataset is identical for a seed on any machine.

Boxes are exact to the drawn pixels (``frcnn.data.shapes_draw``), in 0-based pixel edges.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from frcnn.data.coco import CocoSource
from frcnn.data.records import ImageRecord, Problem
from frcnn.data.shapes_draw import SHAPE_CLASSES, render_image
from frcnn.data.voc import VocSource

# Bump when the drawing changes: existing datasets on disk are then regenerated.
GENERATOR_VERSION = 1
SPLITS = ("train", "val")


def _voc_xml(file_name: str, width: int, height: int, boxes: np.ndarray, labels: np.ndarray) -> ET.ElementTree:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for box, label in zip(boxes.astype(int).tolist(), labels.tolist()):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = SHAPE_CLASSES[label - 1]
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        # 0-based pixel edges -> VOC's 1-based inclusive pixels: xmin = x1 + 1, xmax = x2.
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (box[0] + 1, box[1] + 1, box[2], box[3])):
            ET.SubElement(bndbox, key).text = str(value)
    ET.indent(root)
    return ET.ElementTree(root)


class ShapesGenerator:
    """Writes the shapes dataset to ``root`` when it is missing or was made with other parameters.

    Args:
        root: the dataset folder (``${paths.data_dir}/shapes``).
        num_train, num_val: images per split.
        min_image_size, max_image_size: each side is drawn uniformly in this range (so aspect ratios vary).
        min_objects, max_objects: shapes per image (fewer when no free room is found).
        min_box_size: smallest box side in pixels; the largest is ``max_box_fraction`` of the short side.
        png_every: every n-th image is written as PNG (0: all JPEG).
        jpeg_quality: JPEG quality of the other images.
        seed: the dataset's seed.
    """

    def __init__(
        self,
        root: str | Path,
        num_train: int = 400,
        num_val: int = 80,
        min_image_size: int = 128,
        max_image_size: int = 192,
        min_objects: int = 1,
        max_objects: int = 4,
        min_box_size: int = 16,
        max_box_fraction: float = 0.6,
        png_every: int = 10,
        jpeg_quality: int = 90,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.params = {
            "version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val,
            "min_image_size": min_image_size, "max_image_size": max_image_size, "min_objects": min_objects,
            "max_objects": max_objects, "min_box_size": min_box_size, "max_box_fraction": max_box_fraction,
            "png_every": png_every, "jpeg_quality": jpeg_quality, "seed": seed, "classes": list(SHAPE_CLASSES),
        }

    def __repr__(self) -> str:
        return f"ShapesGenerator(root={str(self.root)!r}, seed={self.params['seed']})"

    def is_current(self) -> bool:
        """True when ``root`` holds a complete dataset made with these parameters."""
        try:
            return json.loads((self.root / "stamp.json").read_text()) == self.params
        except (OSError, ValueError):
            return False

    def ensure(self) -> Path:
        """Generate the dataset unless an up-to-date one is already there; return its folder."""
        if self.is_current():
            return self.root
        self.root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.root.name}-new-", dir=self.root.parent))
        try:
            self.generate_into(staging)
            if self.is_current():  # another process finished first
                return self.root
            stale = self.root.with_name(f".{self.root.name}-old-{uuid.uuid4().hex[:8]}")
            if self.root.exists():
                self.root.rename(stale)
            try:
                staging.rename(self.root)
            except OSError:
                if not self.is_current():  # lost a race and the winner's dataset is not ours: give up
                    raise
            shutil.rmtree(stale, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.root

    def generate_into(self, folder: Path) -> None:
        """Write both splits, in both layouts, into ``folder``; the stamp goes last."""
        p = self.params
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "coco"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        next_image_id = 1
        for split_index, split in enumerate(SPLITS):
            count = p["num_train"] if split == "train" else p["num_val"]
            names, coco_images, coco_annotations = [], [], []
            for index in range(count):
                rng = np.random.default_rng([p["seed"], split_index, index])
                width, height = (int(v) for v in rng.integers(p["min_image_size"], p["max_image_size"] + 1, 2))
                num_objects = int(rng.integers(p["min_objects"], p["max_objects"] + 1))
                image, boxes, labels = render_image(rng, width, height, num_objects, p["min_box_size"],
                                                    p["max_box_fraction"])
                name = f"{split}_{index:05d}"
                is_png = p["png_every"] > 0 and index % p["png_every"] == p["png_every"] - 1
                file_name = f"{name}.png" if is_png else f"{name}.jpg"
                if is_png:
                    Image.fromarray(image).save(folder / "JPEGImages" / file_name)
                else:
                    Image.fromarray(image).save(folder / "JPEGImages" / file_name, quality=p["jpeg_quality"])
                _voc_xml(file_name, width, height, boxes, labels).write(folder / "Annotations" / f"{name}.xml")
                names.append(name)
                coco_images.append({"id": next_image_id, "file_name": file_name, "width": width, "height": height})
                for box, label in zip(boxes.tolist(), labels.tolist()):
                    x1, y1, x2, y2 = (int(v) for v in box)
                    coco_annotations.append({
                        "id": len(coco_annotations) + 1, "image_id": next_image_id, "category_id": label,
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                        "segmentation": [],
                    })
                next_image_id += 1
            (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
            categories = [{"id": i, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES, 1)]
            coco = {"info": {"description": "frcnn synthetic shapes", "generator": p},
                    "images": coco_images, "annotations": coco_annotations, "categories": categories}
            (folder / "coco" / f"instances_{split}.json").write_text(json.dumps(coco))
        (folder / "stamp.json").write_text(json.dumps(self.params))


class ShapesSource:
    """A split of the shapes dataset, read back with the real COCO or VOC reader.

    Args:
        generator: makes the files on first use (``prepare``, and ``load`` if prepare was skipped).
        split: "train" or "val".
        format: "coco" (default) or "voc": which of the two written layouts to read.
    """

    def __init__(self, generator: ShapesGenerator, split: str, format: str = "coco") -> None:
        if split not in SPLITS:
            raise ValueError(f"shapes split must be one of {SPLITS}, got {split!r}")
        if format not in ("coco", "voc"):
            raise ValueError(f"shapes format must be 'coco' or 'voc', got {format!r}")
        self.generator = generator
        self.split = split
        self.format = format
        self.class_names = list(SHAPE_CLASSES)
        self.category_ids = list(range(1, len(SHAPE_CLASSES) + 1))
        self.keep_empty = True

    def __repr__(self) -> str:
        return f"ShapesSource({str(self.generator.root)!r}, split={self.split!r}, format={self.format!r})"

    def prepare(self) -> None:
        self.generator.ensure()

    def reader(self) -> CocoSource | VocSource:
        """The real reader for the generated files (the files must exist)."""
        root = self.generator.root
        if self.format == "coco":
            return CocoSource(root / "JPEGImages", root / "coco" / f"instances_{self.split}.json")
        return VocSource(root, self.split, classes=SHAPE_CLASSES)

    def load(self) -> tuple[list[ImageRecord], list[Problem]]:
        self.prepare()
        return self.reader().load()
