"""A large fully connected layer whose weight gradient is written into the same memory every step.

Shape shorthand: R rows (RoIs), D_in / D_out features.

Why: with ``zero_grad(set_to_none=True)`` (torch's and Lightning's default) every step's weight
gradient is a fresh allocation, and a large one comes straight from the operating system: the R-CNN
box head's fc6 (FPN: 12544 x 1024, 51 MB; MobileNetV2: 62720 x 1024, 257 MB) is above glibc's
32 MB ``mmap`` ceiling, so each step maps it anew and page-faults on every 4 KB of it while the
matmul writes it (bench/README.md "Reused weight-gradient memory"). ``ReusedGradLinear`` keeps that
memory (``ReusableBuffer``) and computes the gradient into it, as long as nothing else still holds
it: when ``weight.grad`` from the step before is still set (gradient accumulation), or anything else
kept a reference to it, a fresh tensor is allocated instead, so no gradient a caller can see is ever
overwritten. The gradient reaches ``weight.grad`` through autograd as usual (hooks, DDP's reducer and
gradient accumulation see an ordinary gradient): it is a view of the kept memory, which autograd's
``AccumulateGrad`` takes as it is.

The arithmetic is autograd's for ``F.linear`` (``x @ W.T + b``): the same three matmul / sum calls
in the backward, so the gradients are bitwise those of ``nn.Linear`` (tests/model/test_reused_grad.py).
Without gradients (validation), under ``torch.compile``, tracing or autocast the plain ``F.linear`` runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frcnn.layers.module_swap import replace_modules

MIN_REUSED_ELEMENTS = 1 << 20  # 4 MB in float32: smaller gradients come from the allocator's free lists


def _storage_refs(t: Tensor) -> int | None:
    """References to ``t``'s memory other than ``t`` and this query's own (None: not knowable)."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return None
    return use_count(t.untyped_storage()._cdata) - 2  # ``t`` itself and the storage object made here


class ReusableBuffer:
    """Memory kept across calls and handed out again only when no one else holds it."""

    def __init__(self) -> None:
        self._memory: Tensor | None = None
        self.reused = 0  # calls answered with the kept memory
        self.allocated = 0  # calls that allocated

    def take(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A tensor of ``shape`` (contents undefined): a new view of the kept memory when it has the
        same shape, dtype and device and nothing else references it, otherwise new memory (kept)."""
        memory = self._memory
        if (
            memory is not None and memory.shape == shape and memory.dtype == dtype and memory.device == device
            and _storage_refs(memory) == 0
        ):
            self.reused += 1
        else:
            memory = self._memory = torch.empty(shape, dtype=dtype, device=device)
            self.allocated += 1
        return memory.view(shape)  # a tensor of its own over that memory: autograd keeps it as the .grad

    def __deepcopy__(self, memo: dict) -> ReusableBuffer:
        return ReusableBuffer()  # a copied model keeps no scratch memory of the original's

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_memory": None}  # nor does a pickled one

    @property
    def nbytes(self) -> int:
        return 0 if self._memory is None else self._memory.numel() * self._memory.element_size()

    def release(self) -> None:
        self._memory = None


class _LinearReusedGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, buffer: ReusableBuffer) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.buffer, ctx.has_bias = buffer, bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        needs_x, needs_w, needs_b, _ = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        rows = grad.reshape(-1, grad.shape[-1])  # (R, D_out)
        if needs_x:
            grad_x = grad @ weight  # (R, D_out) @ (D_out, D_in)
        if needs_w:
            out = ctx.buffer.take(weight.shape, rows.dtype, rows.device)
            grad_w = torch.mm(rows.t(), x.reshape(-1, x.shape[-1]), out=out)  # (D_out, D_in)
        if needs_b and ctx.has_bias:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b, None


class ReusedGradLinear(nn.Linear):
    """``nn.Linear`` whose weight gradient reuses one block of memory across steps (module docstring)."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> ReusedGradLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias  # the very Parameters: optimizers keep them
        return new.train(linear.training)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.grad_buffer = ReusableBuffer()

    def forward(self, x: Tensor) -> Tensor:
        """(..., D_in) -> (..., D_out)."""
        if (
            not torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch.is_autocast_enabled(x.device.type) or x.dtype != self.weight.dtype
        ):
            return F.linear(x, self.weight, self.bias)
        return _LinearReusedGrad.apply(x, self.weight, self.bias, self.grad_buffer)

    def unfused(self) -> nn.Linear:
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        plain.weight, plain.bias = self.weight, self.bias
        return plain.train(self.training)


def reuse_grad_memory(model: nn.Module) -> int:
    """Swap every plain ``nn.Linear`` below ``model`` with at least ``MIN_REUSED_ELEMENTS`` weights
    for a ``ReusedGradLinear`` holding the same Parameters; -> how many."""

    def reused(m: nn.Module) -> nn.Module | None:
        large = type(m) is nn.Linear and m.weight.numel() >= MIN_REUSED_ELEMENTS
        return ReusedGradLinear.from_linear(m) if large else None

    return replace_modules(model, reused)


def restore_grad_memory(model: nn.Module) -> int:
    """Undo ``reuse_grad_memory`` (the kept memory is released); -> how many."""

    def plain(m: nn.Module) -> nn.Module | None:
        if not isinstance(m, ReusedGradLinear):
            return None
        m.grad_buffer.release()
        return m.unfused()

    return replace_modules(model, plain)


def reused_grad_bytes(model: nn.Module) -> int:
    """Bytes of gradient memory the model keeps between steps (``ReusableBuffer``s of its modules)."""
    buffers = (getattr(m, "grad_buffer", None) for m in model.modules())
    return sum(b.nbytes for b in buffers if isinstance(b, ReusableBuffer))
