"""What runs the model behind a ``Detector``: the ``Backend`` protocol and the PyTorch backend.

A backend takes a list of images and returns their detections in the images' own pixels:

    images: list of (3, H_i, W_i) float32 RGB in [0, 1]
    -> per image {"boxes": (D_i, 4) float32 x1, y1, x2, y2, "scores": (D_i,) float32,
                  "labels": (D_i,) int64 in 1..K}   (on the CPU)

Any object with ``class_names`` and that ``__call__`` is a backend (the ONNX Runtime and OpenVINO
ones in ``frcnn.export.runtimes`` too). Optional attributes that a ``Detector`` reads when present:
``runtime`` (str), ``device`` (str), ``model_name`` (str), ``checkpoint`` (str) and
``batch_key(height, width)``: images of one key may share a batch without changing their results
(the default key is the exact size, which is always safe).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from frcnn.modeling.transform import resized_size


@runtime_checkable
class Backend(Protocol):
    class_names: list[str]

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]: ...


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TorchBackend:
    """A detector (``frcnn.modeling.FasterRCNN`` or ``RPNDetector``) in eval mode on ``device``.

    Args:
        model: the detector; put in eval mode here.
        class_names: K names, ``class_names[k]`` is label k + 1.
        device: where the model runs (its parameters are moved there).
        model_name, checkpoint: shown by ``Detector.info`` (and the server's ``/api/info``).
    """

    runtime = "torch"

    def __init__(self, model: nn.Module, class_names: Sequence[str], device: str | torch.device = "cpu",
                 model_name: str | None = None, checkpoint: str | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.class_names = [str(name) for name in class_names]
        self.model_name = model_name or type(model).__name__
        self.checkpoint = checkpoint

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None,
                        inference_rewrite: bool = True, tta: Mapping | None = None) -> TorchBackend:
        """A training checkpoint (read with ``torch.load(weights_only=True)``) -> its detector,
        rewritten for inference (BatchNorm folded, channels-last; ``frcnn.layers.inference_rewrite``) unless told not to,
        with test-time augmentation when ``tta`` (``{flip, scales, merge, iou_threshold}``, as ``conf/tta``) asks."""
        from frcnn.app.checkpoint import module_from_checkpoint, with_tta
        from frcnn.layers.inference_rewrite import optimize_for_inference

        module = module_from_checkpoint(path)
        device = torch.device(device) if device is not None else default_device()
        model = module.model.to(device)
        if inference_rewrite:
            optimize_for_inference(model)
        model = with_tta(model, tta)
        config = module.hparams.model_config or {}
        backbone = config.get("backbone") or {}
        name = config.get("_target_", type(model).__name__).rsplit(".", 1)[-1]
        if isinstance(backbone, dict) and backbone.get("name"):
            name = f"{name} ({backbone['name']})"
        return cls(model, module.class_names, device, model_name=name, checkpoint=Path(path).name)

    def batch_key(self, height: int, width: int) -> Hashable:
        """The padded size the model's transform gives an (height, width) image: images with one
        padded size are batched exactly as each would run alone (same pixels, same zero padding)."""
        transform = self.model.transform
        key = []
        for min_size in getattr(self.model, "scales", (transform.test_min_size,)):  # test-time augmentation: each
            h, w = resized_size(height, width, min_size, transform.max_size)  # the model's rule, exact
            d = transform.size_divisible
            key.append((math.ceil(h / d) * d, math.ceil(w / d) * d))
        return key[0] if len(key) == 1 else tuple(key)

    @torch.inference_mode()
    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        detections = self.model([image.to(self.device, non_blocking=True) for image in images]).detections
        return [{key: value.cpu() for key, value in det.items()} for det in detections]
