"""Balanced sampling of foreground and background, the seed's RPN and R-CNN mini-batches.

Shape shorthand: N images, P anchors or proposals per image (padded with IGNORED labels).
"""

from __future__ import annotations

import torch
from torch import Tensor

from frcnn.modeling.matcher import BACKGROUND, FOREGROUND


def subsample_labels(
    labels: Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """labels (N, P) int8 in {1, 0, -1} -> sampled (N, P) bool.

    Per image: up to ``batch_size_per_image`` samples, of which at most ``positive_fraction`` are
    foreground; when an image has fewer foreground than its quota, background fills the rest (as
    the seed says: the mini-batch is balanced only when it can be). Chosen uniformly at random
    without a Python loop: each candidate draws a random key, and the per-image top-k keys win.
    With a ``generator`` the draw is reproducible.
    """
    N, P = labels.shape
    if P == 0:
        return torch.zeros_like(labels, dtype=torch.bool)
    if generator is None:
        keys = torch.rand((N, P), device=labels.device)
    else:
        keys = torch.rand((N, P), generator=generator, device=generator.device).to(labels.device)

    is_fg = labels == FOREGROUND
    is_bg = labels == BACKGROUND
    num_fg = is_fg.sum(dim=1).clamp(max=int(batch_size_per_image * positive_fraction))  # (N,)
    num_bg = is_bg.sum(dim=1).clamp(max=batch_size_per_image - num_fg)  # (N,)

    sampled = torch.zeros_like(labels, dtype=torch.bool)
    k = min(batch_size_per_image, P)
    for candidates, quota in ((is_fg, num_fg), (is_bg, num_bg)):
        # Non-candidates get key 2 (> any rand), so the k smallest keys are candidates first and
        # the first `quota` of them are a uniform random subset of the candidates.
        order = torch.where(candidates, keys, 2.0).topk(k, dim=1, largest=False).indices  # (N, k)
        take = torch.arange(k, device=labels.device)[None, :] < quota[:, None]  # (N, k)
        sampled |= torch.zeros_like(sampled).scatter_(1, order, take)
    return sampled
