"""Fine-tuning controls: stop gradients into early stages, freeze BatchNorm statistics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d


def freeze_stages(stages: Sequence[Iterable[nn.Module]], trainable_layers: int) -> None:
    """Set ``requires_grad = False`` on every parameter of all but the last ``trainable_layers`` stages.

    ``stages`` runs from the input (index 0, the stem) to the deepest stage. Only parameters are
    touched: a plain BatchNorm in a frozen stage still updates its running statistics in train
    mode, which is one reason ``frozen_bn=True`` is the default.
    """
    if not 0 <= trainable_layers <= len(stages):
        raise ValueError(f"trainable_layers must be in [0, {len(stages)}], got {trainable_layers}")
    for stage in stages[: len(stages) - trainable_layers]:
        for module in stage:
            module.requires_grad_(False)


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` below (or at) ``module`` by a ``FrozenBatchNorm2d`` with its values.

    The affine weight, bias and running statistics are copied, so call this after the weights are
    loaded. Detection batches hold one or two images, too few for batch statistics, so fine-tuning
    keeps ImageNet's statistics and affine transform fixed (as torchvision and detectron2 do).
    Returns ``module`` itself, or its replacement when ``module`` is a BatchNorm2d.
    """
    if isinstance(module, nn.BatchNorm2d):
        return _frozen_copy(module)
    for child_name, child in module.named_children():
        converted = convert_frozen_batchnorm(child)
        if converted is not child:
            setattr(module, child_name, converted)
    return module


def _frozen_copy(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot freeze a BatchNorm2d that tracks no running statistics")
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    frozen.running_mean.copy_(bn.running_mean.detach())
    frozen.running_var.copy_(bn.running_var.detach())
    if bn.affine:
        frozen.weight.copy_(bn.weight.detach())
        frozen.bias.copy_(bn.bias.detach())
    return frozen.to(bn.running_mean.device)
