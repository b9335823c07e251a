"""SGD with momentum whose update is torch's fused kernel over each parameter's memory as it lies.

``torch.optim.SGD`` on a CPU runs a loop of per-tensor ops: with weight decay, ``grad + wd * param``
allocates a fresh gradient-sized tensor per parameter every step, and the momentum and the update
make three more passes over memory. ``fused=True`` does it in one pass, but its kernel wants
contiguous tensors: a channels-last convolution weight (what the training rewrite makes,
``frcnn.layers.training_rewrite``) is copied to contiguous memory and back, with its gradient and
momentum buffer, which makes the fused step slower than the loop (bench/README.md, "Training
speed-ups").

An elementwise update does not care about the order of the elements, only that the parameter,
its gradient and its momentum buffer put the same element at the same offset. When the three share
their strides and cover their memory densely, permuting the dimensions by decreasing stride gives
each a contiguous view of the same memory; the fused kernel updates those views in place. A
parameter whose gradient is laid out differently (or sparse, or of a dtype the kernel lacks) takes
torch's per-tensor update instead. The arithmetic is torch's own (weight decay, momentum,
dampening, Nesterov, maximize), the state (``momentum_buffer`` per parameter) and the state dict
are ``torch.optim.SGD``'s, so checkpoints load into either class.

Measured on the training rewrite's parameters (bench/README.md, "Fused SGD and threaded proposal
NMS"): ResNet-50-FPN with weight decay 130 -> 26 ms per step, without 36 -> 25 ms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.optim.sgd import sgd as _sgd_reference

_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _dense_order(t: Tensor) -> list[int] | None:
    """The permutation of t's dimensions that makes it contiguous, or None if t's memory has gaps
    or overlaps (so that no permutation does)."""
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.size(d)), reverse=True)
    return order if t.permute(order).is_contiguous() else None


def _same_layout(a: Tensor, b: Tensor) -> bool:
    """a and b put every element at the same offset (strides equal where a dimension has > 1 element)."""
    return a.shape == b.shape and all(sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()) if n > 1)


def _flat(t: Tensor, order: list[int]) -> Tensor:
    """t's elements as a 1-D view of its memory (``order`` from ``_dense_order``)."""
    return t.permute(order).view(-1)


class SGD(torch.optim.SGD):
    """``torch.optim.SGD`` (same arguments, update and state) whose step runs the fused kernel on
    views of every parameter's own memory layout (module docstring).

    ``fused=False`` gives torch's step unchanged (``foreach`` as torch picks it).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        fused: bool = True,
    ) -> None:
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov, maximize=maximize, foreach=False if fused else None)
        self.fused_layout = bool(fused)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        if not self.fused_layout:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict) -> None:
        momentum = group["momentum"]
        hyper = dict(weight_decay=group["weight_decay"], momentum=momentum, lr=group["lr"],
                     dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"])
        # fused: (first step?, device, dtype) -> (params, grads, buffers) as flat views
        fused: dict[tuple, tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}
        rest: list[Tensor] = []
        scalars = not isinstance(group["lr"], Tensor) and not isinstance(group["weight_decay"], Tensor)
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad
            order = _dense_order(p) if scalars and p.dtype in _FUSED_DTYPES and not g.is_sparse else None
            if order is None or not _same_layout(p, g):
                rest.append(p)
                continue
            state = self.state[p]
            buf = state.get("momentum_buffer")
            first = momentum != 0 and buf is None
            if momentum != 0:
                if buf is None:
                    buf = state["momentum_buffer"] = torch.empty_like(p)  # p's strides; the kernel fills it
                elif not _same_layout(p, buf):  # e.g. loaded from a checkpoint of contiguous weights
                    buf = state["momentum_buffer"] = torch.empty_like(p).copy_(buf)
            params, grads, bufs = fused.setdefault((first, p.device, p.dtype), ([], [], []))
            params.append(_flat(p, order))
            grads.append(_flat(g, order))
            if momentum != 0:
                bufs.append(_flat(buf, order))
        for (first, _, _), (params, grads, bufs) in fused.items():
            torch._fused_sgd_(params, grads, bufs, is_first_step=first, **hyper)
        if rest:
            self._reference_step(rest, hyper)

    def _reference_step(self, params: list[Tensor], hyper: dict) -> None:
        """torch's per-tensor update for the parameters the fused views cannot take."""
        buffers = [self.state[p].get("momentum_buffer") for p in params]
        _sgd_reference(params, [p.grad for p in params], buffers,
                       has_sparse_grad=any(p.grad.is_sparse for p in params), foreach=False, fused=False, **hyper)
        if hyper["momentum"] != 0:
            for p, buf in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buf
