"""Training-time rewrites of a detector: the same function and gradients, fewer passes over memory.

``optimize_for_training(model)`` (applied by ``frcnn.app.callbacks.TrainingSpeed`` and by
``bench/vs_torchvision.py``); ``restore_training_rewrite(model)`` undoes it:

1. **Frozen BatchNorm folded into the convolution before it, at forward time.** A
   ``FrozenBatchNorm2d`` is a constant per-channel affine map ``y = x * s + t`` (``s = g /
   sqrt(var + eps)``, ``t = b - mean * s``); after a convolution it is that convolution with weight
   ``W * s`` and bias ``b_conv * s + t``. ``FrozenBNConv2d`` computes those from the *same*
   parameter and buffers on every forward (a pass over the weights, not over the activations), so
   a trainable convolution keeps its parametrisation (the gradient reaches ``W`` through ``* s``),
   and the norm module, kept in place as a ``FoldedFrozenBatchNorm2d`` (identity forward, the same
   buffers), keeps its state-dict keys: the model saves, loads and resumes as before, and a loaded
   state dict is what the next forward folds. Pairs are those of ``conv_bn_pairs`` (the inference
   rewrite's); plain ``BatchNorm2d`` (batch statistics in training) is left alone.
2. **Channels-last convolution weights** (so activations follow): oneDNN's and cuDNN's preferred
   layout, and RoIAlign reads channels-last rows without a copy (``frcnn.layers.roi_align``).
3. **The sparse RPN-head backward** (``frcnn.layers.sparse_heads``) on or off: every module with a
   ``sparse_backward`` switch (``RPNHead``) gets ``sparse_rpn_backward``.
4. **Reused weight-gradient memory** (``frcnn.layers.reused_grad``): the large fully connected
   layers' weight gradients (the box head's fc6) are written into the same memory every step
   instead of memory the operating system maps (and page-faults) anew.
5. **Winograd 3 x 3 convolutions** (``frcnn.layers.winograd``): the plain 3 x 3 "same"
   convolutions (the FPN's outputs, the RPN head's trunk) by F(4 x 4, 3 x 3) on a CPU, on maps of
   at least 32 x 32: a quarter of the multiplies; float rounding ~1e-5 relative instead of ~1e-6.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from frcnn.layers import reused_grad
from frcnn.layers.batchnorm import conv_bn_pairs
from frcnn.layers.folded_conv import scaled_weight_conv2d
from frcnn.layers.module_swap import replace_modules
from frcnn.layers.winograd import restore_winograd, use_winograd


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A ``FrozenBatchNorm2d`` whose affine map the convolution before it applies: the identity,
    with the same buffers (and state-dict keys) as the norm it replaces."""

    @classmethod
    def from_frozen(cls, bn: FrozenBatchNorm2d) -> FoldedFrozenBatchNorm2d:
        folded = cls(bn.weight.shape[0], eps=bn.eps)
        for name, buffer in bn.named_buffers(recurse=False):
            setattr(folded, name, buffer)  # the same tensors: a state dict loaded later is shared
        return folded

    def forward(self, x: Tensor) -> Tensor:
        return x

    def unfolded(self) -> FrozenBatchNorm2d:
        bn = FrozenBatchNorm2d(self.weight.shape[0], eps=self.eps)
        for name, buffer in self.named_buffers(recurse=False):
            setattr(bn, name, buffer)
        return bn


class FrozenBNConv2d(nn.Conv2d):
    """``bn(conv(x))`` as one convolution whose weight and bias are folded from ``conv``'s own
    parameters and ``bn``'s buffers on every forward (module docstring). ``bn`` is held, not
    registered: its buffers stay under the norm's own keys."""

    @classmethod
    def from_pair(cls, conv: nn.Conv2d, bn: FoldedFrozenBatchNorm2d) -> FrozenBNConv2d:
        fused = _conv_like(cls, conv)
        fused._norm = (bn,)  # a tuple: not a submodule
        return fused

    def forward(self, x: Tensor) -> Tensor:
        bn = self._norm[0]
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()  # (C_out,), FrozenBatchNorm2d's formula
        shift = bn.bias - bn.running_mean * scale
        bias = shift if self.bias is None else self.bias * scale + shift
        if self.padding_mode != "zeros":
            return super()._conv_forward(x, self.weight * scale.reshape(-1, 1, 1, 1).to(self.weight.dtype), bias)
        # the folded weight is not kept for the backward (frcnn.layers.folded_conv): no memory over the plain pair
        return scaled_weight_conv2d(x, self.weight, scale, bias, self.stride, self.padding, self.dilation, self.groups)

    def unfolded(self) -> nn.Conv2d:
        return _conv_like(nn.Conv2d, self)


def _conv_like(cls: type[nn.Conv2d], conv: nn.Conv2d) -> nn.Conv2d:
    """A ``cls`` with ``conv``'s settings holding ``conv``'s very Parameters (optimizers keep them)."""
    new = cls(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        device="meta",  # no storage: the parameters are replaced at once
    )
    new.weight, new.bias = conv.weight, conv.bias
    return new.train(conv.training)


def fold_frozen_batchnorm(model: nn.Module) -> int:
    """Swap every conv -> ``FrozenBatchNorm2d`` pair below ``model`` for the forward-time fold; -> how many."""
    folded = 0
    for parent, conv_name, bn_name in conv_bn_pairs(model):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        if type(bn) is not FrozenBatchNorm2d or type(conv) is not nn.Conv2d:
            continue  # a BatchNorm2d normalises by the batch in training; a folded pair is done
        norm = FoldedFrozenBatchNorm2d.from_frozen(bn)
        setattr(parent, conv_name, FrozenBNConv2d.from_pair(conv, norm))
        setattr(parent, bn_name, norm)
        folded += 1
    return folded


def unfold_frozen_batchnorm(model: nn.Module) -> int:
    """Undo ``fold_frozen_batchnorm``: the original module types, with the same tensors; -> how many."""
    restored = sum(isinstance(m, FrozenBNConv2d) for m in model.modules())
    replace_modules(model, lambda m: m.unfolded() if isinstance(m, (FrozenBNConv2d, FoldedFrozenBatchNorm2d)) else None)
    return restored


def set_sparse_rpn_backward(model: nn.Module, enabled: bool) -> None:
    for module in model.modules():
        if hasattr(type(module), "sparse_backward"):
            module.sparse_backward = enabled


def optimize_for_training(
    model: nn.Module, fold_frozen_bn: bool = True, channels_last: bool = True, sparse_rpn_backward: bool = True,
    reuse_grad_memory: bool = True, winograd: bool = True,
) -> nn.Module:
    """Rewrite ``model`` in place for training (module docstring) and return it."""
    if fold_frozen_bn:
        fold_frozen_batchnorm(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # 4-D parameters only, in place (same Parameters)
    set_sparse_rpn_backward(model, sparse_rpn_backward)
    if reuse_grad_memory:
        reused_grad.reuse_grad_memory(model)
    if winograd:
        use_winograd(model)
    return model


def restore_training_rewrite(model: nn.Module) -> nn.Module:
    """The model as it was built: norms unfolded, contiguous weights, the sparse RPN backward on,
    plain ``nn.Linear`` layers."""
    unfold_frozen_batchnorm(model)
    reused_grad.restore_grad_memory(model)
    restore_winograd(model)
    model.to(memory_format=torch.contiguous_format)
    set_sparse_rpn_backward(model, True)
    return model
