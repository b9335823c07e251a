"""BatchNorm as the detector uses it: frozen for fine-tuning, folded into convolutions for
inference, calibrated on a batch for random-weight benchmarks and tests.

Shape shorthand: C channels of a norm layer; C_out output channels of a convolution.
No model logic: these functions take any module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops.misc import FrozenBatchNorm2d

_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | FrozenBatchNorm2d) -> nn.Conv2d:
    """A Conv2d equal to ``bn(conv(x))`` with ``bn`` in evaluation (running statistics)."""
    if isinstance(bn, nn.BatchNorm2d) and bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm2d without running statistics")
    weight, bias = bn.weight, bn.bias
    if weight is None:  # BatchNorm2d(affine=False)
        weight, bias = torch.ones_like(bn.running_mean), torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        scale = weight * torch.rsqrt(bn.running_var + bn.eps)  # (C_out,)
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=True,
            padding_mode=conv.padding_mode,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((conv_bias - bn.running_mean) * scale + bias)
    return fused


def conv_bn_pairs(module: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """Every conv -> BatchNorm pair below (or at) ``module`` whose order is certain, as
    ``(parent, conv attribute, norm attribute)``: consecutive children of an ``nn.Sequential`` or
    ``IntermediateLayerGetter`` (their forward runs the children in order), and the
    ``conv{k}`` / ``bn{k}`` of torchvision's ResNet and its blocks (forward: ``bn{k}(conv{k}(x))``)."""
    pairs = []
    for parent in module.modules():
        if isinstance(parent, (nn.Sequential, IntermediateLayerGetter)):
            children = list(parent.named_children())
            for (name, conv), (bn_name, bn) in zip(children, children[1:]):
                if isinstance(conv, nn.Conv2d) and isinstance(bn, _NORMS):
                    pairs.append((parent, name, bn_name))
        if isinstance(parent, (ResNet, BasicBlock, Bottleneck)):
            for k in (1, 2, 3):
                conv, bn = getattr(parent, f"conv{k}", None), getattr(parent, f"bn{k}", None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, _NORMS):
                    pairs.append((parent, f"conv{k}", f"bn{k}"))
    return pairs


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every conv -> BatchNorm pair below ``module`` in place (``conv_bn_pairs``); returns how
    many were folded."""
    pairs = conv_bn_pairs(module)
    for parent, name, bn_name in pairs:
        setattr(parent, name, fold_conv_bn(getattr(parent, name), getattr(parent, bn_name)))
        setattr(parent, bn_name, nn.Identity())
    return len(pairs)


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


@torch.no_grad()
def calibrate_batchnorm(module: nn.Module, *batches: Tensor, forward=None, freeze: bool = True) -> nn.Module:
    """Set every ``BatchNorm2d`` below ``module`` to the statistics of ``batches`` (then freeze them).

    A randomly initialised network with identity BatchNorm blows activations up layer after
    layer; statistics measured on real-looking inputs give every layer unit-scale outputs, as
    pretrained ones roughly would. ``forward(module, batch)`` runs one batch (default
    ``module(batch)``); the statistics are the cumulative average over all batches. Returns
    ``module`` in its former mode, with its BatchNorms replaced by ``FrozenBatchNorm2d``
    (``convert_frozen_batchnorm``) when ``freeze``.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = module.training
    module.train()
    for batch in batches:
        (forward or (lambda m, x: m(x)))(module, batch)
    for m in norms:
        m.momentum = 0.1  # PyTorch's default, should the module train on
    module.train(was_training)
    return convert_frozen_batchnorm(module) if freeze else module
