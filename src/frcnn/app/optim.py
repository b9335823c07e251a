"""Optimizer parameter groups and step-based learning-rate schedules.

Weight decay is L2 regularisation on the weights of convolutions and linear layers. Norm layers
(BatchNorm, GroupNorm, LayerNorm...) and biases get ``norm_bias_weight_decay`` instead (0 by
default): decaying a norm's scale or a bias towards zero only fights the normalisation.

Every schedule is a ``LambdaLR`` stepped once per optimizer step (``interval: step`` in Lightning),
so "50k" in a config means 50k iterations, as in the seed. The factor objects are small classes
rather than closures so that the scheduler's ``state_dict`` (and a checkpoint) holds only numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float, norm_bias_weight_decay: float | None = 0.0) -> list[dict]:
    """Split the trainable parameters into a decayed group and a norm-and-bias group.

    Args:
        model: any module; parameters with ``requires_grad=False`` (frozen stages) are left out.
        weight_decay: L2 coefficient of conv / linear weights.
        norm_bias_weight_decay: coefficient of norm-layer parameters and biases; None: the same
            ``weight_decay`` as the rest (a single group in effect).

    Returns:
        ``[{"params": [...], "weight_decay": ...}, ...]`` for ``torch.optim`` constructors; empty
        groups are dropped.
    """
    if norm_bias_weight_decay is None:
        norm_bias_weight_decay = weight_decay
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:  # shared parameters appear twice
                continue
            seen.add(id(param))
            if isinstance(module, _NORM_LAYERS) or name.endswith("bias") or param.ndim <= 1:
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": float(norm_bias_weight_decay)},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    optimizer: Callable[..., Optimizer], model: nn.Module, norm_bias_weight_decay: float | None = 0.0
) -> Optimizer:
    """``optimizer`` is a partial (``torch.optim.SGD`` with lr, momentum, weight_decay...).

    Its ``weight_decay`` keyword sets the decayed group; the norm-and-bias group follows
    ``norm_bias_weight_decay``.
    """
    keywords = getattr(optimizer, "keywords", {}) or {}
    weight_decay = float(keywords.get("weight_decay", 0.0))
    return optimizer(params=param_groups(model, weight_decay, norm_bias_weight_decay))


class _Warmup:
    """Linear warm-up from ``start_factor`` to 1 over ``warmup_steps`` (1 afterwards)."""

    def __init__(self, warmup_steps: int, start_factor: float) -> None:
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)

    def warmup(self, step: int) -> float:
        if step >= self.warmup_steps:
            return 1.0
        alpha = step / self.warmup_steps
        return self.start_factor * (1.0 - alpha) + alpha


class StepFactor(_Warmup):
    """lr factor ``gamma ** (number of milestones passed)``, times the warm-up."""

    def __init__(self, milestones: Sequence[int], gamma: float, warmup_steps: int = 0, start_factor: float = 0.001):
        super().__init__(warmup_steps, start_factor)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        passed = sum(step >= m for m in self.milestones)
        return self.warmup(step) * self.gamma**passed


class CosineFactor(_Warmup):
    """Cosine decay from 1 to ``min_factor`` between the end of the warm-up and ``total_steps``."""

    def __init__(self, total_steps: int, min_factor: float = 0.0, warmup_steps: int = 0, start_factor: float = 0.001):
        super().__init__(warmup_steps, start_factor)
        self.total_steps = int(total_steps)
        self.min_factor = float(min_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup(step)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ConstantFactor(_Warmup):
    """1 after the warm-up."""

    def __call__(self, step: int) -> float:
        return self.warmup(step)


def step_schedule(
    optimizer: Optimizer,
    milestones: Iterable[int] = (50_000,),
    gamma: float = 0.1,
    warmup_steps: int = 0,
    warmup_start_factor: float = 0.001,
    total_steps: int | None = None,
) -> LambdaLR:
    """The seed's schedule: lr x ``gamma`` at each milestone step (1e-3 -> 1e-4 at 50k)."""
    del total_steps  # the module passes it to every schedule; only cosine needs it
    return LambdaLR(optimizer, StepFactor(list(milestones), gamma, warmup_steps, warmup_start_factor))


def cosine_schedule(
    optimizer: Optimizer,
    steps: int | None = None,
    min_factor: float = 0.0,
    warmup_steps: int = 0,
    warmup_start_factor: float = 0.001,
    total_steps: int | None = None,
) -> LambdaLR:
    """Cosine decay to ``min_factor x lr`` at ``steps`` (None: ``total_steps``, the whole run)."""
    length = steps if steps is not None else total_steps
    if length is None or length <= 0 or math.isinf(length):
        raise ValueError("the cosine schedule needs `steps` or a run of known length (trainer.max_steps / max_epochs)")
    return LambdaLR(optimizer, CosineFactor(int(length), min_factor, warmup_steps, warmup_start_factor))


def constant_schedule(
    optimizer: Optimizer, warmup_steps: int = 0, warmup_start_factor: float = 0.001, total_steps: int | None = None
) -> LambdaLR:
    """A constant lr, after an optional warm-up."""
    del total_steps
    return LambdaLR(optimizer, ConstantFactor(warmup_steps, warmup_start_factor))
