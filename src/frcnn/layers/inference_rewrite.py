"""Inference-only rewrites of a trained detector: the same function, fewer and faster operations.

``optimize_for_inference(model)`` (used by ``src/eval.py`` and ``src/predict.py``, and measured by
``bench/vs_torchvision.py``; the folding itself is ``frcnn.layers.batchnorm.fold_batchnorm``):

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

from frcnn.layers.batchnorm import fold_batchnorm
from frcnn.layers.training_rewrite import unfold_frozen_batchnorm


def optimize_for_inference(
    model: nn.Module, fold_norms: bool = True, channels_last: bool = True
) -> nn.Module:
    """Rewrite ``model`` in place for inference (module docstring) and return it, in eval mode."""
    model.eval()  # folding reads the running statistics, which is what evaluation uses
    unfold_frozen_batchnorm(model)  # a model still in its training rewrite: fold once, not twice
    if fold_norms:
        fold_batchnorm(model)
    if channels_last:
        # Only 4-D parameters (conv weights) change layout; the rest stay as they are.
        model.to(memory_format=torch.channels_last)
    return model.eval().requires_grad_(False)  # the folded convolutions are new modules
