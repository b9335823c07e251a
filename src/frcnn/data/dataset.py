"""The map-style dataset and the collate function: records on disk -> samples of the contract.

A sample (docs/contracts.md): ``image`` float32 (3, H, W) RGB in [0, 1]; ``target`` with ``boxes``
(N, 4) float32, ``labels`` (N,) int64 in 1..K, ``image_id`` int64 scalar, ``ignore_boxes`` (M, 4)
float32, ``ignore_labels`` (M,) int64. A batch is ``(list[image], list[target])``.

Why loaders move ``RawSample``s: a float32 image is 4x the bytes of the uint8 one, and every tensor a
loader worker returns goes through its own shared-memory segment, whose creation and page faults
cost more than decoding the JPEG (measured on the 2-core CI machine: ~10 ms of worker time per
640x480 image, against ~2 ms for uint8 numpy arrays sent inline). So the DataLoader fetches batches
through ``__getitems__`` as uint8 + numpy ``RawSample``s, ``collate_detection`` wraps them for the
trip, and the conversion to the contract runs as they are unpickled in the main process. Whatever
the number of workers, the loader yields contract batches, and ``dataset[i]`` is a contract sample.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from frcnn.data.bad_images import BadImageLog, check_policy
from frcnn.data.decode import ImageDecodeError, read_image
from frcnn.data.records import DataError, ImageRecord, Problem
from frcnn.data.transforms import Augmentation

log = logging.getLogger(__name__)

Sample = tuple[Tensor, dict[str, Tensor]]
Batch = tuple[list[Tensor], list[dict[str, Tensor]]]


def image_to_tensor(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1], contiguous, in one pass.

    numpy, not torch: torch's element-wise kernels run multi-threaded in the main process, which on
    a busy 2-core machine made this 4x slower than single-threaded numpy.
    """
    chw = np.empty((3, *image.shape[:2]), dtype=np.float32)
    np.divide(image.transpose(2, 0, 1), np.float32(255.0), out=chw, dtype=np.float32)  # (H, W, 3) -> (3, H, W)
    return torch.from_numpy(chw)


@dataclass
class RawSample:
    """A decoded, augmented sample before conversion to tensors.

    image: (H, W, 3) uint8 RGB; boxes (N, 4) float32, labels (N,) int64; ignore_boxes (M, 4),
    ignore_labels (M,); image_id: the COCO id, or the index in the split.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    ignore_boxes: np.ndarray
    ignore_labels: np.ndarray
    image_id: int

    def to_sample(self) -> Sample:
        """The contract's ``(image, target)``; the target tensors own their memory (copies)."""
        target = {
            "boxes": torch.tensor(self.boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(self.labels, dtype=torch.int64),
            "image_id": torch.tensor(self.image_id, dtype=torch.int64),
            "ignore_boxes": torch.tensor(self.ignore_boxes, dtype=torch.float32).reshape(-1, 4),
            "ignore_labels": torch.tensor(self.ignore_labels, dtype=torch.int64),
        }
        return image_to_tensor(self.image), target


class DetectionDataset(Dataset):
    """Decodes, augments and converts the validated records of one split.

    ``dataset[i]`` is a contract sample. A DataLoader over it must use ``collate_detection``: it fetches
    through ``__getitems__``, which returns ``RawSample``s (see the module docstring).

    Args:
        records: validated records (``frcnn.data.validate.validate_records``): boxes inside the image.
        augmentation: applied to every sample; None delivers the image as decoded.
        split: the split's name, for messages.
        on_bad_image: "error": a record that fails to decode raises ``DataError``; "skip": a batch gets
            the next decodable record instead, and the failure is logged and recorded in ``bad_image_log``.
        bad_image_log: where skipped images are listed (``frcnn.data.bad_images.BadImageLog``).
    """

    def __init__(self, records: Sequence[ImageRecord], augmentation: Augmentation | None = None, split: str = "",
                 on_bad_image: str = "error", bad_image_log: BadImageLog | None = None) -> None:
        self.records = list(records)
        self.augmentation = augmentation or Augmentation()
        self.split = split
        self.on_bad_image = check_policy(on_bad_image)
        self.bad_image_log = bad_image_log or BadImageLog(None)
        self._skipped: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def aspect_ratios(self) -> list[float]:
        """width / height of each image as annotated (for aspect-ratio grouping, no decoding)."""
        return [r.width / r.height for r in self.records]

    def raw(self, index: int) -> RawSample:
        """Decode and augment one record; raise ``DataError`` naming the file if it cannot be decoded."""
        record = self.records[index]
        try:
            image, reduction = read_image(record.path, self.augmentation.decode_scale(record.width, record.height))
        except ImageDecodeError as error:
            raise DataError(f"{error}. Run the data check (check_images=full) to find every such file.") from error
        boxes, ignore_boxes = record.boxes, record.ignore_boxes
        if reduction != 1:  # decoded at 1/reduction of the stored size (JPEG draft mode)
            boxes, ignore_boxes = boxes / reduction, ignore_boxes / reduction
        height, width = image.shape[:2]
        if abs(height - record.height / reduction) > 1 or abs(width - record.width / reduction) > 1:
            raise DataError(f"{record.path}: decoded image is {width}x{height} but the annotation says "
                            f"{record.width}x{record.height}")
        sample = self.augmentation(image, boxes, record.labels, ignore_boxes, record.ignore_labels)
        return RawSample(sample.image, sample.boxes, sample.labels, sample.ignore_boxes, sample.ignore_labels,
                         record.image_id)

    def __getitem__(self, index: int) -> Sample:
        return self.raw(index).to_sample()

    def __getitems__(self, indices: Sequence[int]) -> list[RawSample]:
        """What a DataLoader fetches per batch: raw samples, converted by ``collate_detection``."""
        if self.on_bad_image == "error":
            return [self.raw(index) for index in indices]
        return [self._raw_or_next(index) for index in indices]

    def _raw_or_next(self, index: int) -> RawSample:
        """``raw(index)``, or with ``on_bad_image=skip`` that of the next record that decodes."""
        for step in range(len(self.records)):
            candidate = (index + step) % len(self.records)
            try:
                return self.raw(candidate)
            except DataError as error:
                if candidate not in self._skipped:
                    self._skipped.add(candidate)
                    self.bad_image_log.record(self.split, [Problem(str(self.records[candidate].path), str(error))])
                    log.warning("%s split: skipped %s (on_bad_image=skip), %s: %s", self.split,
                                self.records[candidate].path, self.bad_image_log.where(), error)
        raise DataError(f"no image of the {self.split} split could be decoded ({len(self.records)} tried)")


def _convert(raw_samples: list[RawSample]) -> Batch:
    samples = [raw.to_sample() for raw in raw_samples]
    return [image for image, _ in samples], [target for _, target in samples]


class _RawBatchInTransit:
    """Pickles as uint8 + numpy and unpickles (in the main process) into the contract batch."""

    def __init__(self, raw_samples: list[RawSample]) -> None:
        self.raw_samples = raw_samples

    def __reduce__(self):
        return _convert, (self.raw_samples,)


def collate_detection(batch: Sequence[Sample] | Sequence[RawSample]) -> Batch:
    """Samples -> ``([image, ...], [target, ...])``: images differ in size, so nothing is stacked.

    Takes contract samples, or the ``RawSample``s that ``DetectionDataset.__getitems__`` gives a
    DataLoader; in a loader worker those leave as raw arrays and are converted on arrival.
    """
    if batch and isinstance(batch[0], RawSample):
        if get_worker_info() is not None:
            return _RawBatchInTransit(list(batch))  # type: ignore[return-value]  # a Batch once unpickled
        return _convert(list(batch))
    return [image for image, _ in batch], [target for _, target in batch]
