"""Which layout a 4-D tensor is in, where it matters which one a convolution will pick."""

from __future__ import annotations

import torch
from torch import Tensor


def is_channels_last(t: Tensor) -> bool:
    """A 4-D tensor laid out channels-last and not also contiguous (C = 1 or H = W = 1 are both,
    so neither layout is told apart there)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
