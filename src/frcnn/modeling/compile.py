"""Compiled training steps: the dense parts of a detector through ``torch.compile`` (Inductor),
the dynamic parts eager.

``compile_for_training(detector)`` compiles the forward of the backbone (trunk + FPN), the R-CNN
box head and its predictor: fixed-shape convolutions, matmuls and the elementwise work between
them, which Inductor fuses (frozen-BatchNorm affine maps, ReLUs, residual adds, the FPN's
upsample-and-add). Left eager, by design: the transform (a loop over images of different sizes),
anchors, proposal selection (top-k, NMS: data-dependent sizes), target matching and sampling,
RoI pooling (a sparse product with a custom backward) and the RPN head (whose sparse backward,
``frcnn.layers.sparse_heads``, does less work than any compiled dense one).

Only training steps run compiled (the module in training mode with gradients on); validation,
test and prediction run the same modules eagerly, so they cost no second compilation and keep
the inference rewrite's own path. State dicts are untouched (the forward is swapped, not the
module): checkpoints save, load and resume as without compilation.

Recompilation policy (``dynamic``): images of different sizes give batches of different padded
sizes (aspect-ratio groups, multi-scale training). With ``dynamic=None`` (the default, PyTorch's
"automatic dynamic") the first batch compiles a static graph and the first batch of another size
recompiles once with symbolic height and width, which then serves every size: two compilations
per compiled part whatever the sizes (measured in ``tests/model/test_compile.py`` and
bench/README.md). ``dynamic=False`` compiles once per distinct padded size (best code, but up to
``torch._dynamo.config.recompile_limit`` compilations, eager beyond); ``dynamic=True`` compiles the
symbolic graph at once. The transform pads to ``size_divisible``, which bounds the distinct sizes
for ``dynamic=False``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
from torch import nn


class _CompiledSlot:
    """Holds one module's compiled forward; deep copies and pickles come out empty (a copy compiles
    its own when it trains), so a compiled detector can still be copied (EMA, inference rewrite)."""

    def __init__(self) -> None:
        self.fn = None

    def __deepcopy__(self, memo: dict) -> _CompiledSlot:
        return _CompiledSlot()

    def __reduce__(self):
        return (_CompiledSlot, ())


def _training_forward(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The forward of a module compiled for training: compiled in a training step, eager otherwise."""
    eager = type(module).forward
    if not (module.training and torch.is_grad_enabled()) or torch.compiler.is_compiling():
        return eager(module, *args, **kwargs)
    options, slot = module._compile_for_training
    if slot.fn is None:
        slot.fn = torch.compile(eager.__get__(module), **options)
    return slot.fn(*args, **kwargs)


def compiled_parts(detector: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The (name, module) pairs ``compile_for_training`` compiles: the backbone, and the box head
    and predictor of the R-CNN heads where the detector has them."""
    yield "backbone", detector.backbone
    heads = getattr(detector, "roi_heads", None)
    if heads is not None:
        yield "roi_heads.box_head", heads.box_head
        yield "roi_heads.predictor", heads.predictor


def compile_for_training(detector: nn.Module, dynamic: bool | None = None, **options: Any) -> nn.Module:
    """Compile ``detector``'s dense parts for its training steps, in place (module docstring).

    ``dynamic``: the recompilation policy; ``options``: more ``torch.compile`` arguments (``mode``,
    ``backend``, ``fullgraph``). Nothing is compiled until the first training step. Returns
    ``detector``.
    """
    for _, module in compiled_parts(detector):
        module._compile_for_training = ({"dynamic": dynamic, **options}, _CompiledSlot())
        module.forward = partial(_training_forward, module)  # an instance attribute: not in the state dict
    return detector


def uncompile(detector: nn.Module) -> nn.Module:
    """Undo ``compile_for_training``: every part runs its own forward again."""
    for module in detector.modules():
        if "_compile_for_training" in module.__dict__:
            del module.forward, module._compile_for_training
    return detector


def is_compiled_for_training(module: nn.Module) -> bool:
    return "_compile_for_training" in module.__dict__
