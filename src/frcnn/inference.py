"""Inference-only rewrites of a trained detector: the same function, fewer and faster operations.

``optimize_for_inference(model)`` (used by ``src/eval.py`` and ``src/predict.py``, and measured by
``bench/vs_torchvision.py``):

1. **Folds each BatchNorm into the convolution before it.** In evaluation a (frozen) BatchNorm is
   the per-channel affine map ``y = (x - mean) * g / sqrt(var + eps) + b``; after a convolution it
   becomes that convolution's weight scaled per output channel and a bias:
   ``W' = W * s``, ``b' = (b_conv - mean) * s + b`` with ``s = g / sqrt(var + eps)``. The BatchNorm
   becomes an ``nn.Identity``. Pairs are found where the order is certain: consecutive children of
   an ``nn.Sequential`` or an ``IntermediateLayerGetter`` (torchvision's ``Conv2dNormActivation``,
   MobileNet blocks, ResNet ``downsample``, the FPN trunks), and the ``conv{k}`` / ``bn{k}`` pairs of torchvision's ResNet and its blocks.
   A BatchNorm before its convolution (DenseNet) is left alone.
2. **Stores the convolution weights channels-last** (NHWC). oneDNN's CPU convolutions and cuDNN's
   tensor-core ones are faster in that layout; a convolution with channels-last weights gives a
   channels-last output, so the whole network follows from its first convolution.

Measured on the 2-core CPU (bench/README.md, "vs torchvision"): ResNet-50 C4 trunk -34 %, its
layer4 box head -32 %, MobileNetV2 features -58 %. Outputs equal the original to float rounding
(relative 1e-6).

The rewritten model is for inference only: it must not be trained (the folded weights change the
parametrisation, and a training-mode BatchNorm would use batch statistics) or saved as a training
checkpoint (its state-dict keys differ). ``optimize_for_inference`` puts it in eval mode and turns
gradients off.
"""

from __future__ import annotations

import torch
from torch import nn
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


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every conv -> BatchNorm pair below ``module`` in place; returns how many were folded."""
    folded = 0
    for child in module.children():
        folded += fold_batchnorm(child)
    if isinstance(module, (nn.Sequential, IntermediateLayerGetter)):  # forward: children in order
        children = list(module.named_children())
        for (name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, _NORMS):
                setattr(module, name, fold_conv_bn(conv, bn))
                setattr(module, bn_name, nn.Identity())
                folded += 1
    if isinstance(module, (ResNet, BasicBlock, Bottleneck)):  # forward: bn{k}(conv{k}(x))
        for k in (1, 2, 3):
            conv, bn = getattr(module, f"conv{k}", None), getattr(module, f"bn{k}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, _NORMS):
                setattr(module, f"conv{k}", fold_conv_bn(conv, bn))
                setattr(module, f"bn{k}", nn.Identity())
                folded += 1
    return folded


def optimize_for_inference(
    model: nn.Module, fold_norms: bool = True, channels_last: bool = True
) -> nn.Module:
    """Rewrite ``model`` in place for inference (module docstring) and return it, in eval mode."""
    model.eval()  # folding reads the running statistics, which is what evaluation uses
    if fold_norms:
        fold_batchnorm(model)
    if channels_last:
        # Only 4-D parameters (conv weights) change layout; the rest stay as they are.
        model.to(memory_format=torch.channels_last)
    return model.eval().requires_grad_(False)  # the folded convolutions are new modules
