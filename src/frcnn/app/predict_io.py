"""Prediction input and output: image files in, COCO-results JSON and PNGs with boxes out.

A COCO result is ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` (the format
``COCO.loadRes`` reads); ``category_name`` and ``file_name`` are added for people and ignored by
COCO tools. ``category_id`` is the dataset's own id (``label_to_category_id``), so results of a
COCO-trained model use COCO's sparse ids 1..90.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from frcnn.data import DataError, ImageDecodeError, image_to_tensor, read_image
from frcnn.data.bad_images import check_policy

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_images(path: str | Path) -> list[Path]:
    """An image file -> [it]; a folder -> its image files (recursively), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return files
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {path}")
    raise FileNotFoundError(f"input not found: {path}")


class ImageFiles(Dataset):
    """``dataset[i] -> (image (3, H, W) float32 in [0, 1], {"image_id": i, "file_name": str})``.

    A file that cannot be decoded raises a ``DataError`` naming it; with ``on_bad_image="skip"`` it
    gives a blank 32x32 placeholder and ``"bad_image": <reason>`` in its dict instead, for the caller
    to leave its detections out (``frcnn.data.bad_images``).
    """

    def __init__(self, files: Sequence[Path], on_bad_image: str = "error") -> None:
        self.files = list(files)
        self.on_bad_image = check_policy(on_bad_image)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        meta = {"image_id": index, "file_name": str(self.files[index])}
        try:
            pixels, _ = read_image(self.files[index])  # (H, W, 3) uint8, EXIF-oriented
        except ImageDecodeError as error:
            if self.on_bad_image == "error":
                raise DataError(f"{error}. To predict the other images: on_bad_image=skip") from error
            return torch.zeros(3, 32, 32), {**meta, "bad_image": str(error)}
        return image_to_tensor(pixels), meta


def collate_images(batch: Sequence[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    return [image for image, _ in batch], [meta for _, meta in batch]


def coco_results(
    predictions: Sequence[Mapping],
    class_names: Sequence[str],
    label_to_category_id: Mapping[int, int],
    score_threshold: float | None = None,
) -> list[dict]:
    """Per image ``{image_id, file_name, boxes (D, 4) xyxy, scores (D,), labels (D,)}`` -> COCO results."""
    results = []
    for pred in predictions:
        for (x1, y1, x2, y2), score, label in zip(pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist()):
            if score_threshold is not None and score < score_threshold:
                continue
            results.append(
                {
                    "image_id": int(pred["image_id"]),
                    "category_id": int(label_to_category_id[int(label)]),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                    "category_name": class_names[int(label) - 1],
                    "file_name": pred["file_name"],
                }
            )
    return results


def write_json(path: str | Path, data) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path
