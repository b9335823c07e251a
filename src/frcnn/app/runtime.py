"""The process settings every entry point starts with: the seed and the CPU threads."""

from __future__ import annotations

import torch
from lightning import seed_everything
from omegaconf import DictConfig


def setup_runtime(cfg: DictConfig) -> None:
    """``cfg.seed`` (everything, data-loader workers included) and ``cfg.torch_threads`` (intra-op
    CPU threads; None keeps PyTorch's default of one per core)."""
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg.torch_threads)
