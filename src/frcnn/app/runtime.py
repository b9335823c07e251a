"""The process settings every entry point starts with: the seed, the CPU threads and the host
allocator."""

from __future__ import annotations

import torch
from lightning import seed_everything
from omegaconf import DictConfig

from frcnn.app.host_memory import reuse_host_memory


def setup_runtime(cfg: DictConfig) -> None:
    """``cfg.seed`` (everything, data-loader workers included), ``cfg.torch_threads`` (intra-op
    CPU threads; None keeps PyTorch's default of one per core) and ``cfg.reuse_host_memory``
    (glibc keeps large freed blocks for the next step instead of unmapping them:
    ``frcnn.app.host_memory``; process-wide)."""
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg.torch_threads)
    if cfg.get("reuse_host_memory"):
        reuse_host_memory()
