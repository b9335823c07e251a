"""Export a trained detector to ONNX: ``torch.export`` of ``ExportableDetector`` with N, H and W
dynamic, translated by ``torch.onnx`` (dynamo) to standard operators, checked, with metadata.

Nothing is left at ``output`` unless everything succeeded: the file is written beside it under a
temporary name and renamed at the end.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from frcnn.export.graph import OUTPUT_NAMES, ExportableDetector, ExportError
from frcnn.export.metadata import model_metadata
from frcnn.export.translations import translation_table
from frcnn.layers.inference_rewrite import optimize_for_inference

log = logging.getLogger(__name__)

OPSET = 18  # RoiAlign's coordinate_transformation_mode needs 16; 18 is what torch.onnx emits
STANDARD_DOMAINS = ("", "ai.onnx")
MAX_SIDE = 8192  # the largest input side the export allows (a bound for torch.export's shape analysis)


def check_writable(output: str | Path) -> Path:
    """The output path, its folder created; ``ExportError`` when it cannot be written."""
    output = Path(output)
    if output.is_dir():
        raise ExportError(f"output {output} is a directory; give a file name such as {output / 'model.onnx'}")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}.", delete=True):
            pass
    except OSError as error:
        raise ExportError(f"cannot write {output}: {error.strerror or error}") from error
    return output


@contextlib.contextmanager
def atomic_output(output: Path):
    """Yields a temporary path beside ``output``; renamed to ``output`` only if the block succeeds."""
    handle, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".partial")
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def prepare(model: nn.Module, inference_rewrite: bool = True) -> ExportableDetector:
    """A copy of ``model`` (optionally rewritten for inference: BatchNorm folded) wrapped for export."""
    model = copy.deepcopy(model).eval()
    if inference_rewrite:
        optimize_for_inference(model, channels_last=False)  # ONNX has no layout: folding is what counts
    return ExportableDetector(model).eval().requires_grad_(False)


def export_program(graph: ExportableDetector, example_size: Sequence[int] = (2, 3, 320, 416)):
    """``torch.export`` with dynamic N, H, W. The example's sizes must be > 1 (a size of 1 would be
    specialised)."""
    N, _, H, W = example_size
    dims = {
        0: torch.export.Dim("batch", min=1, max=1024),
        2: torch.export.Dim("height", min=2, max=MAX_SIDE),
        3: torch.export.Dim("width", min=2, max=MAX_SIDE),
    }
    example = torch.rand(N, 3, H, W, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            return torch.export.export(graph, (example,), dynamic_shapes=(dims,), strict=False)
    except Exception as error:  # torch.export raises many types; say which model part failed
        raise ExportError(f"torch.export cannot capture this model with dynamic batch and size: {error}") from error


def export_onnx(
    model: nn.Module,
    output: str | Path,
    class_names: Sequence[str],
    label_to_category_id: Mapping[int, int] | None = None,
    config_digest: str = "",
    inference_rewrite: bool = True,
    example_size: Sequence[int] = (2, 3, 320, 416),
    full_check: bool = True,
) -> Path:
    """Export ``model`` (a ``FasterRCNN`` or ``RPNDetector``) to ``output`` (.onnx); returns the path."""
    output = check_writable(output)
    if len(class_names) != model.num_classes:
        raise ExportError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    program = export_program(prepare(model, inference_rewrite), example_size)
    try:
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            input_names=["images"],
            output_names=list(OUTPUT_NAMES),
            opset_version=OPSET,
            custom_translation_table=translation_table(),
            optimize=True,
        )
    except Exception as error:
        raise ExportError(f"torch.onnx could not translate the exported program: {error}") from error
    proto = onnx_program.model_proto
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in STANDARD_DOMAINS})
    if foreign or proto.functions:
        raise ExportError(f"the graph uses non-standard operators {foreign or [f.name for f in proto.functions]}")
    for key, value in model_metadata(model, class_names, label_to_category_id, config_digest).items():
        proto.metadata_props.add(key=key, value=value)
    if full_check:
        onnx.checker.check_model(proto, full_check=True)
    with atomic_output(output) as temporary:
        onnx.save(proto, str(temporary))
    log.info("exported %s (%.1f MB)", output, output.stat().st_size / 2**20)
    return output
