"""``Detector``: a trained detector in two lines of Python.

    from frcnn import Detector
    det = Detector.from_checkpoint("best.ckpt")
    result = det.predict("photo.jpg", min_score=0.5)   # DetectionResult: boxes, scores, labels, names
    det.draw("photo.jpg", result).save("boxes.png")

``predict`` takes one image or a list (paths, PIL images, (H, W, 3) uint8 numpy arrays, (3, H, W)
tensors; ``frcnn.api.inputs``) and runs them in batches of ``batch_size``. A batch only holds images
that the backend's ``batch_key`` says may share one (for the PyTorch model: the same padded size),
so each image gets the detections it would get alone. One ``Detector`` may be called from many
threads (the server does): calls into the backend are serialised by a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from frcnn.api.backend import Backend, TorchBackend
from frcnn.api.draw import draw_result
from frcnn.api.filters import class_labels
from frcnn.api.inputs import ImageInput, is_batch, to_image_tensor
from frcnn.api.result import DetectionResult

__all__ = ["DetectionResult", "Detector"]


class Detector:
    """Predicts with any ``Backend`` (``frcnn.api.backend``).

    Args:
        backend: runs the model: (3, H_i, W_i) float images -> per image boxes, scores, labels.
        class_names: K names, ``class_names[k]`` is label k + 1 (default: the backend's).
        batch_size: the most images per backend call.
    """

    def __init__(self, backend: Backend, class_names: Sequence[str] | None = None, batch_size: int = 8) -> None:
        if class_names is None:
            class_names = backend.class_names
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.backend = backend
        self.class_names = [str(name) for name in class_names]
        self.batch_size = batch_size
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None, batch_size: int = 8,
                        inference_rewrite: bool = True, tta: Mapping | None = None) -> Detector:
        """A training checkpoint (``torch.load(weights_only=True)``: nothing is unpickled) on
        ``device`` (default: CUDA when available, else the CPU). ``tta``: test-time augmentation,
        e.g. ``{"flip": True, "scales": [400, 480, 560], "merge": "wbf"}`` (``conf/tta/default.yaml``)."""
        return cls(TorchBackend.from_checkpoint(path, device, inference_rewrite, tta), batch_size=batch_size)

    @classmethod
    def from_exported(cls, path: str | Path, runtime: str = "onnxruntime", batch_size: int = 8,
                      **options: Any) -> Detector:
        """An exported model run by ``runtime`` (``frcnn.export.runtimes.load_backend``)."""
        if runtime == "torch":
            return cls.from_checkpoint(path, batch_size=batch_size, **options)
        try:
            from frcnn.export import runtimes
        except ImportError as error:
            raise ImportError(f"runtime={runtime!r} needs frcnn.export.runtimes (the exported-model runtimes), "
                              f"which this installation lacks ({error}); runtime='torch' runs a checkpoint") from error
        return cls(runtimes.load_backend(runtime, path, options.get("threads")), batch_size=batch_size)

    # --- prediction ---------------------------------------------------------------------------

    def predict(self, images: ImageInput | Sequence[ImageInput], min_score: float | None = None,
                max_detections: int | None = None, classes: Iterable[str | int] | None = None):
        """One image -> a ``DetectionResult``; a list -> a list of them, in order.

        Args:
            min_score: keep detections scoring at least this (the model's own threshold applies anyway).
            max_detections: keep at most this many per image (the best).
            classes: keep only these classes (names or labels 1..K).
        """
        batch = is_batch(images)
        tensors = [to_image_tensor(image) for image in (images if batch else [images])]
        labels = class_labels(classes, self.class_names) if classes is not None else None
        results = [result.filter(min_score, max_detections, labels) for result in self.predict_tensors(tensors)]
        return results if batch else results[0]

    def predict_tensors(self, images: Sequence[Tensor]) -> list[DetectionResult]:
        """(3, H_i, W_i) float32 in [0, 1] -> every detection of each image, sorted by score."""
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        results: list[DetectionResult | None] = [None] * len(images)
        for index in self._batches(sizes):
            with self._lock:
                detections = self.backend([images[i] for i in index])
            for i, det in zip(index, detections):
                results[i] = DetectionResult.from_detections(det, self.class_names, sizes[i])
        return results  # type: ignore[return-value]

    def _batches(self, sizes: list[tuple[int, int]]) -> list[list[int]]:
        """Indices grouped by the backend's batch key (first-seen order), in chunks of ``batch_size``."""
        key = getattr(self.backend, "batch_key", lambda height, width: (height, width))
        groups: dict[Any, list[int]] = {}
        for i, (height, width) in enumerate(sizes):
            groups.setdefault(key(height, width), []).append(i)
        return [group[start:start + self.batch_size] for group in groups.values()
                for start in range(0, len(group), self.batch_size)]

    # --- drawing and facts ----------------------------------------------------------------------

    def draw(self, image: ImageInput, result: DetectionResult, min_score: float | None = None):
        """``image`` with the boxes of ``result`` (scoring >= ``min_score``) drawn in per-class colours
        with captions; returned as the same kind as given (a path gives a PIL image)."""
        return draw_result(image, result.filter(min_score))

    @property
    def info(self) -> dict[str, Any]:
        """Class names, model, checkpoint, runtime and device (what the server's ``/api/info`` shows)."""
        return {
            "class_names": list(self.class_names),
            "model": getattr(self.backend, "model_name", type(self.backend).__name__),
            "checkpoint": getattr(self.backend, "checkpoint", None),
            "runtime": getattr(self.backend, "runtime", type(self.backend).__name__),
            "device": str(getattr(self.backend, "device", "cpu")),
            "batch_size": self.batch_size,
        }
