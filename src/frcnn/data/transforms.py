"""Box-aware augmentation with albumentations, built from config.

Resizing happens in the model (docs/contracts.md): by default this pipeline delivers each image at
its own resolution. ``resize={min_size, max_size}`` optionally resizes here instead, to the
model's size (``frcnn.modeling.transform.resized_size``, exact in integers), so the model's own
resize then finds its image at that size already and does nothing. albumentations'
``SmallestMaxSize`` + ``LongestMaxSize`` would not do: ``LongestMaxSize`` also enlarges, so a
640x480 image would come out 1000x750 instead of 800x600.

Order: box-safe crop (scale jitter) -> horizontal flip -> photometric -> resize. Boxes use
``BboxParams(format="pascal_voc")``, i.e. x1, y1, x2, y2 pixels as in the project; a box whose
visible part falls under ``min_visibility`` is dropped together with its label. Ignored boxes ride
along in the same list (flagged), so they are flipped and cropped exactly like the training boxes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from frcnn.modeling.transform import resize_scale, resized_size  # noqa: E402  (the model's rule, stated once)


class ResizeMinMax(A.DualTransform):
    """Resize so the short side is ``min_size``, capped so the long side is at most ``max_size``.

    Enlarges with ``interpolation`` (bilinear); shrinks with ``INTER_AREA``, which averages instead
    of skipping pixels (no aliasing on big photos).
    """

    def __init__(self, min_size: int, max_size: int, interpolation: int = cv2.INTER_LINEAR, p: float = 1.0):
        super().__init__(p=p)
        self.min_size = min_size
        self.max_size = max_size
        self.interpolation = interpolation

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        height, width = params["shape"][:2]
        out_height, out_width = resized_size(height, width, self.min_size, self.max_size)
        return {"out_height": max(1, out_height), "out_width": max(1, out_width)}

    def apply(self, img: np.ndarray, out_height: int, out_width: int, **params) -> np.ndarray:
        if img.shape[:2] == (out_height, out_width):
            return img
        shrinking = out_width < img.shape[1]
        return cv2.resize(img, (out_width, out_height), interpolation=cv2.INTER_AREA if shrinking else self.interpolation)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params) -> np.ndarray:
        return bboxes  # albumentations keeps boxes normalised to the image size: a resize leaves them

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_size", "max_size", "interpolation")


def box_compose(transforms: list[A.BasicTransform], min_visibility: float = 0.0) -> A.Compose:
    """``A.Compose`` over pascal_voc boxes carrying two label fields: ``labels`` and ``ignored``."""
    return A.Compose(
        transforms,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels", "ignored"],
                                 min_visibility=min_visibility),
    )


@dataclass
class Sample:
    """An augmented image and its boxes (numpy, before conversion to tensors).

    image: (H, W, 3) uint8; boxes (N, 4) float32, labels (N,) int64; ignore_boxes (M, 4), ignore_labels (M,).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    ignore_boxes: np.ndarray
    ignore_labels: np.ndarray


class Augmentation:
    """The augmentation of one split, from scalar config values.

    Args:
        hflip: probability of a horizontal flip (train default 0.5; 0 for evaluation).
        color_jitter: probability of ``ColorJitter`` (brightness, contrast, saturation 0.2, hue 0.02).
        brightness_contrast: probability of ``RandomBrightnessContrast`` (0.2, 0.2).
        crop: probability of a box-safe random crop (``BBoxSafeRandomCrop``): a scale jitter, since
            the model resizes the crop back to its input size. It keeps every box whole.
        resize: ``{min_size, max_size}`` to resize here instead of in the model, or None (default).
        min_visibility: a box keeping less than this fraction of its area after a crop is dropped.
    """

    def __init__(
        self,
        hflip: float = 0.0,
        color_jitter: float = 0.0,
        brightness_contrast: float = 0.0,
        crop: float = 0.0,
        resize: Mapping[str, int] | None = None,
        min_visibility: float = 0.0,
    ) -> None:
        self.resize = None if resize is None else {"min_size": int(resize["min_size"]),
                                                   "max_size": int(resize["max_size"])}
        self.crop = crop
        transforms: list[A.BasicTransform] = []
        if crop > 0:
            transforms.append(A.BBoxSafeRandomCrop(erosion_rate=0.0, p=crop))
        if hflip > 0:
            transforms.append(A.HorizontalFlip(p=hflip))
        if color_jitter > 0:
            transforms.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=color_jitter))
        if brightness_contrast > 0:
            transforms.append(A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2,
                                                         p=brightness_contrast))
        if self.resize is not None:
            transforms.append(ResizeMinMax(**self.resize))
        self.compose = box_compose(transforms, min_visibility) if transforms else None
        self._seeded_for: int | None = None

    def __repr__(self) -> str:
        names = [type(t).__name__ for t in self.compose.transforms] if self.compose else []
        return f"Augmentation({', '.join(names) or 'identity'})"

    def decode_scale(self, width: int, height: int) -> float | None:
        """The scale this pipeline will apply to a (width, height) image, when known before decoding.

        Lets the decoder read a big JPEG at reduced size. Unknown (None) when a crop comes first.
        """
        if self.resize is None or self.crop > 0:
            return None
        return resize_scale(height, width, self.resize["min_size"], self.resize["max_size"])

    def _reseed_per_worker(self) -> None:
        # albumentations keeps its own generator, copied as is into every forked loader worker (and
        # re-copied each epoch without persistent workers): every worker would draw the same flips.
        # torch.initial_seed() differs per worker and per epoch (and follows seed_everything).
        seed = torch.initial_seed()
        if seed != self._seeded_for:
            self.compose.set_random_seed(seed % 2**32)
            self._seeded_for = seed

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        ignore_boxes: np.ndarray,
        ignore_labels: np.ndarray,
    ) -> Sample:
        """image (H, W, 3) uint8, boxes (N, 4) / (M, 4) float32 inside the image -> augmented ``Sample``."""
        if self.compose is None:
            return Sample(image, boxes, labels, ignore_boxes, ignore_labels)
        self._reseed_per_worker()
        num_boxes = len(boxes)
        out = self.compose(
            image=image,
            bboxes=np.concatenate([boxes, ignore_boxes]).reshape(-1, 4),  # (N + M, 4)
            labels=np.concatenate([labels, ignore_labels]),
            ignored=np.arange(num_boxes + len(ignore_boxes)) >= num_boxes,
        )
        out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        out_labels = np.asarray(out["labels"], dtype=np.int64)
        ignored = np.asarray(out["ignored"], dtype=bool)
        # albumentations works in coordinates normalised to [0, 1]: clip the float round-off at the border.
        height, width = out["image"].shape[:2]
        out_boxes = np.clip(out_boxes, 0.0, np.array([width, height, width, height], dtype=np.float32))
        return Sample(out["image"], out_boxes[~ignored], out_labels[~ignored], out_boxes[ignored],
                      out_labels[ignored])
