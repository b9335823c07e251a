"""Export a trained detector as an AOTInductor package (``format=pt2``): the same ``torch.export``
program as the ONNX export (``onnx_export.export_program``: N, H, W dynamic), compiled ahead of time
to C++ by Inductor and packaged with the model's metadata (``aot_inductor.metadata``).

Loading it needs PyTorch and this package (``Pt2Backend`` in ``frcnn.export.runtimes``): the graph's
one custom operator, ``frcnn_export::nms`` (``frcnn.export.ops``), is a Python kernel that the
compiled code calls back into, so a pt2 file runs in a Python process that imported
``frcnn.export``, not from C++ alone (a C++ kernel for that operator is what a C++-only deployment
would need). Compilation takes minutes on a CPU (a C++ build of the whole graph).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from frcnn.export.graph import ExportError
from frcnn.export.metadata import model_metadata
from frcnn.export.onnx_export import atomic_output, check_writable, export_program, prepare

log = logging.getLogger(__name__)


def export_pt2(
    model: nn.Module,
    output: str | Path,
    class_names: Sequence[str],
    label_to_category_id: Mapping[int, int] | None = None,
    config_digest: str = "",
    inference_rewrite: bool = True,
    example_size: Sequence[int] = (2, 3, 320, 416),
) -> Path:
    """Export ``model`` (a ``FasterRCNN`` or ``RPNDetector``) to ``output`` (.pt2); returns the path."""
    output = check_writable(output)
    if len(class_names) != model.num_classes:
        raise ExportError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    program = export_program(prepare(model, inference_rewrite), example_size)
    metadata = model_metadata(model, class_names, label_to_category_id, config_digest)
    with atomic_output(output) as temporary:
        package = temporary.with_name(temporary.name + ".pt2")  # AOTInductor wants the .pt2 ending
        try:
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(package), inductor_configs={"aot_inductor.metadata": metadata}
            )
            os.replace(package, temporary)
        except Exception as error:  # Inductor raises many kinds: name the step that failed
            raise ExportError(f"AOTInductor could not compile the exported program: {error}") from error
        finally:
            package.unlink(missing_ok=True)
    log.info("exported %s (%.1f MB)", output, output.stat().st_size / 2**20)
    return output
