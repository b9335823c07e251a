"""Writers of small real dataset files for the data tests (VOC trees, COCO JSON, images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from tests.shared_data import COCO128, RACCOON, SHARED  # noqa: F401  (re-exported for the data tests)

PROJECT = Path(__file__).resolve().parents[2]


def random_pixels(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 smooth-ish random content (compresses like a photo, not like noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def write_image(path: Path, width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """Write an RGB image (format from the suffix) and return its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = random_pixels(width, height, seed)
    Image.fromarray(pixels).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(pixels).save(path)
    return pixels


def voc_xml(filename: str, size: tuple[int, int] | None, objects: list[tuple]) -> str:
    """objects: (name, xmin, ymin, xmax, ymax[, difficult]) in VOC's 1-based inclusive pixels."""
    parts = [f"<annotation><filename>{filename}</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, xmin, ymin, xmax, ymax, *rest in objects:
        difficult = rest[0] if rest else 0
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
                     f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    parts.append("</annotation>")
    return "".join(parts)


def write_voc(root: Path, images: dict[str, list[tuple]], split: str = "train",
              size: tuple[int, int] = (64, 48)) -> Path:
    """A VOC tree with one split: every image ``size``, objects as in ``voc_xml``."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for seed, (name, objects) in enumerate(images.items()):
        write_image(root / "JPEGImages" / f"{name}.jpg", *size, seed=seed)
        (root / "Annotations" / f"{name}.xml").write_text(voc_xml(f"{name}.jpg", size, objects))
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in images))
    return root


def write_coco(root: Path, annotations: list[dict], sizes: dict[int, tuple[int, int]] | None = None,
               categories: list[dict] | None = None, images: list[dict] | None = None) -> Path:
    """A COCO split: images/<id>.jpg for each image id in ``sizes``; returns the JSON path."""
    sizes = sizes or {1: (64, 48), 2: (48, 64)}
    (root / "images").mkdir(parents=True, exist_ok=True)
    if images is None:
        images = []
        for image_id, (width, height) in sizes.items():
            write_image(root / "images" / f"{image_id}.jpg", width, height, seed=image_id)
            images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": width, "height": height})
    categories = categories or [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    for number, annotation in enumerate(annotations, start=1):
        annotation.setdefault("id", number)
        annotation.setdefault("iscrowd", 0)
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def write_yolo(root: Path, splits: dict[str, dict[str, list[tuple]]], names: list[str] | dict | None = None,
               sizes: dict[str, tuple[int, int]] | None = None, yaml_file: bool = True) -> Path:
    """A YOLO dataset: images/<split>/<name>.jpg and labels/<split>/<name>.txt (a line per object,
    ``(class id, cx, cy, w, h)`` or a raw string); ``objects=None`` writes no label file. Returns the
    data.yaml (``path: .``, with ``names`` when given) or, without ``yaml_file``, the root."""
    import yaml

    sizes = sizes or {}
    for split, images in splits.items():
        for seed, (name, objects) in enumerate(images.items()):
            write_image(root / "images" / split / f"{name}.jpg", *sizes.get(name, (64, 32)), seed=seed)
            if objects is not None:
                label = root / "labels" / split / f"{name}.txt"
                label.parent.mkdir(parents=True, exist_ok=True)
                label.write_text("".join((o if isinstance(o, str) else " ".join(map(repr, o))) + "\n"
                                         for o in objects))
    if not yaml_file:
        return root
    config = {"path": ".", **{split: f"images/{split}" for split in splits}}
    if names is not None:
        config["names"] = names
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_csv(path: Path, rows: list[tuple | str], header: str | None = "image,x1,y1,x2,y2,label",
              images: dict[str, tuple[int, int]] | None = None) -> Path:
    """A box CSV (rows as tuples or raw lines) and, for ``images`` {relative path: size}, the images."""
    for seed, (name, (width, height)) in enumerate((images or {}).items()):
        write_image(path.parent / name, width, height, seed=seed)
    lines = ([header] if header else []) + [r if isinstance(r, str) else ",".join(map(str, r)) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
