"""Runners of an exported model: ONNX Runtime and OpenVINO (which reads the same .onnx file).

Both implement ``Backend``, the protocol the prediction and serving code use:

    backend.class_names: list[str]             # class_names[k - 1] is label k
    backend(images) -> list[dict[str, Tensor]]
        images: list of (3, H_i, W_i) float32 in [0, 1]
        per image: boxes (D, 4) float32 xyxy in that image's pixels, scores (D,), labels (D,) int64
        in 1..K, sorted by score

Images of one size go to the model as one batch; other sizes run as batches of their own (the
graph's N, H, W are dynamic, but one call holds one size). Wrong input is refused here, before a
runtime sees it, with a message naming the image and the problem.

``pre_resize`` (OpenVINO's default): the runner resizes each image with the model's own resize
(``frcnn.modeling.transform.resize_image``) before the call and maps the boxes back after it, so the
graph's resize is the identity. Why: the resized size is integer arithmetic, exact in any runtime,
but the bilinear sampling positions are computed in double to reproduce PyTorch's fused
multiply-add, and OpenVINO's CPU plugin runs double as float32 (a sample one float32 step off moves
scores by ~1e-5). At the resized size the graph's sizes come out unchanged (the integer rule is
idempotent), its taps are the identity, and no double arithmetic matters.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from frcnn.export.metadata import parse_class_names
from frcnn.modeling.transform import map_back, resize_image

RUNTIMES = ("onnxruntime", "openvino", "pt2")
INSTALL_HINT = "pip install -c constraints.txt onnx onnxruntime openvino (the README's install command)"


class RuntimeNotInstalled(ImportError):
    """The runtime asked for is not installed."""


class Backend(Protocol):
    class_names: list[str]

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]: ...


def check_images(images: Sequence[Tensor]) -> None:
    """Raises ``TypeError`` / ``ValueError`` naming the first image that is not (3, H, W) float32."""
    if isinstance(images, Tensor):
        raise TypeError("pass a list of (3, H, W) images, not one tensor (for a (N, 3, H, W) batch: list(batch))")
    if len(images) == 0:
        raise ValueError("got an empty list of images")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor | np.ndarray):
            raise TypeError(f"image {i} is a {type(image).__name__}, not a tensor")
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image {i} must be (3, H, W) RGB, got shape {tuple(image.shape)}")
        if image.shape[1] < 2 or image.shape[2] < 2:
            raise ValueError(f"image {i} is {image.shape[1]}x{image.shape[2]} px; each side needs >= 2 px")
        dtype = str(image.dtype).removeprefix("torch.")
        if dtype != "float32":
            hint = " (divide uint8 pixels by 255)" if dtype == "uint8" else ""
            raise TypeError(f"image {i} has dtype {dtype}; the exported model takes float32 in [0, 1]{hint}")


def check_batch(batch: np.ndarray) -> None:
    """A raw (N, 3, H, W) float32 batch for ``run_batch``."""
    if not isinstance(batch, np.ndarray) or batch.ndim != 4 or batch.shape[1] != 3 or batch.dtype != np.float32:
        shape = getattr(batch, "shape", None)
        raise ValueError(f"a batch must be a float32 (N, 3, H, W) array, got {getattr(batch, 'dtype', type(batch))} {shape}")


class _ExportedModel:
    """Shared by the runners: metadata, input checks, grouping by size, per-image outputs."""

    def __init__(self, path: str | Path, metadata: dict[str, str], pre_resize: bool = False) -> None:
        self.path = Path(path)
        self.metadata = metadata
        self.sizes = None  # (min_size, max_size) of the eager resize done first (pre_resize)
        if pre_resize:
            if "min_size" not in metadata or "max_size" not in metadata:
                raise ValueError(f"{path} has no min_size / max_size in its metadata; run it with pre_resize=False")
            self.sizes = (int(metadata["min_size"]), int(metadata["max_size"]))
        self.class_names = parse_class_names(metadata, str(path))
        self.label_to_category_id = {int(k): int(v) for k, v in json.loads(metadata.get("label_to_category_id", "{}")).items()}

    def run_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _pre_resize(self, image: Tensor) -> Tensor:
        """The eager resize, where the graph's resize of its result is the identity (module docstring)."""
        from frcnn.export.resize import resized_size

        resized = resize_image(image, *self.sizes)
        h, w = resized.shape[-2:]
        return resized if resized_size(h, w, *self.sizes) == (h, w) else image

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        check_images(images)
        images = [torch.as_tensor(image).detach().cpu() for image in images]
        original_sizes = [tuple(image.shape[1:]) for image in images]
        if self.sizes is not None:  # the eager resize; the graph's own is then the identity
            with torch.no_grad():
                images = [self._pre_resize(image) for image in images]
        arrays = [image.numpy() for image in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, array in enumerate(arrays):
            by_size.setdefault(array.shape[1:], []).append(i)
        results: list[dict[str, Tensor] | None] = [None] * len(arrays)
        for indices in by_size.values():
            boxes, scores, labels, batch_index = self.run_batch(np.ascontiguousarray(np.stack([arrays[i] for i in indices])))
            for j, i in enumerate(indices):
                mine = batch_index == j
                image_boxes = torch.from_numpy(boxes[mine].reshape(-1, 4))
                if self.sizes is not None:
                    image_boxes = map_back(image_boxes, tuple(arrays[i].shape[1:]), original_sizes[i])
                results[i] = {
                    "boxes": image_boxes,
                    "scores": torch.from_numpy(scores[mine]),
                    "labels": torch.from_numpy(labels[mine].astype(np.int64)),
                }
        return results  # type: ignore[return-value]


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ValueError(f"{path} is not an ONNX model: {error}") from error
    return {p.key: p.value for p in proto.metadata_props}


class OnnxRuntimeBackend(_ExportedModel):
    """ONNX Runtime on the CPU (or ``providers``); ``threads``: intra-op threads (None: all cores)."""

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        pre_resize: bool = False,
    ):
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise RuntimeNotInstalled(f"runtime onnxruntime is not installed: {INSTALL_HINT}") from error
        super().__init__(path, read_onnx_metadata(path), pre_resize)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))

    def run_batch(self, batch: np.ndarray):
        """batch (N, 3, H, W) float32 -> boxes (M, 4), scores (M,), labels (M,), batch_index (M,)."""
        check_batch(batch)
        return tuple(self.session.run(None, {"images": batch}))


class OpenVINOBackend(_ExportedModel):
    """OpenVINO on ``device`` (CPU), in float32: its CPU default (bf16 / f16 where the CPU has them)
    changes scores in the third decimal and so the detections."""

    def __init__(self, path: str | Path, threads: int | None = None, device: str = "CPU", pre_resize: bool = True):
        try:
            import openvino as ov
        except ImportError as error:
            raise RuntimeNotInstalled(f"runtime openvino is not installed: {INSTALL_HINT}") from error
        super().__init__(path, read_onnx_metadata(path), pre_resize)
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(self.path)), device, config)
        self.request = self.compiled.create_infer_request()

    def run_batch(self, batch: np.ndarray):
        """batch (N, 3, H, W) float32 -> boxes (M, 4), scores (M,), labels (M,), batch_index (M,)."""
        check_batch(batch)
        result = self.request.infer({0: batch})
        return tuple(np.asarray(result[self.compiled.output(i)]) for i in range(4))


class Pt2Backend(_ExportedModel):
    """An AOTInductor package (``format=pt2``, ``frcnn.export.pt2_export``) in this process;
    ``threads``: PyTorch's intra-op threads (None: as they are)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import frcnn.export.ops  # noqa: F401  (registers frcnn_export::nms, which the package calls)

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"exported model not found: {path}")
        try:
            self.runner = torch._inductor.aoti_load_package(str(path))
        except Exception as error:  # a file that is not a package, or one built by another PyTorch
            raise ValueError(f"{path} is not an AOTInductor package this PyTorch can load: {error}") from error
        if threads:
            torch.set_num_threads(int(threads))
        super().__init__(path, dict(self.runner.get_metadata()), pre_resize=False)

    def run_batch(self, batch: np.ndarray):
        """batch (N, 3, H, W) float32 -> boxes (M, 4), scores (M,), labels (M,), batch_index (M,)."""
        check_batch(batch)
        with torch.inference_mode():
            outputs = self.runner(torch.from_numpy(batch))
        return tuple(output.numpy() for output in outputs)


def load_backend(runtime: str, path: str | Path, threads: int | None = None) -> OnnxRuntimeBackend | OpenVINOBackend | Pt2Backend:
    """``runtime`` in ``RUNTIMES`` running the exported model at ``path``."""
    if runtime == "onnxruntime":
        return OnnxRuntimeBackend(path, threads)
    if runtime == "openvino":
        return OpenVINOBackend(path, threads)
    if runtime == "pt2":
        return Pt2Backend(path, threads)
    raise ValueError(f"unknown runtime {runtime!r}; choose one of {RUNTIMES} (or torch for the checkpoint)")
