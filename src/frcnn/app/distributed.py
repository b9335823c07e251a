"""One Hydra job = one DDP world: Lightning's DDP launcher kept inside a Hydra multirun job."""

from __future__ import annotations

import contextlib
import os
import sys

import torch
from omegaconf import open_dict, read_write

_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK")


@contextlib.contextmanager
def distributed_job():
    """One Hydra job = one DDP world, whatever ran before it in this process.

    On entry, inside a multirun, Lightning's DDP launcher is pointed at this job
    (``keep_ddp_in_this_job``). On exit the process group is destroyed and the DDP variables that
    Lightning put into ``os.environ`` (``LOCAL_RANK``...) are restored: otherwise the next job of a
    multirun would reuse the finished world and believe its ranks were started externally.
    """
    saved_env = {key: os.environ.get(key) for key in _DDP_ENV}
    saved_argv = list(sys.argv)
    keep_ddp_in_this_job()
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sys.argv = saved_argv


def keep_ddp_in_this_job() -> None:
    """Make Lightning's DDP launcher start the other ranks inside THIS Hydra job.

    ``strategy=ddp`` re-runs the script for ranks > 0 with ``sys.argv`` plus
    ``hydra.run.dir=<HydraConfig run.dir>``. In a multirun, ``sys.argv`` is the whole sweep
    (``-m optimizer.lr=1e-3,1e-2``) and ``run.dir`` is not this job's directory, so every rank would
    start a sweep of its own in new directories. Here argv becomes this job's overrides, run as a
    single run in the job's output directory. A no-op outside a Hydra multirun.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    flags, skip_next = [], False
    for i, arg in enumerate(sys.argv[1:], start=1):
        if skip_next:
            skip_next = False
            continue
        if arg in ("-cp", "-cn", "-cd", "--config-path", "--config-name", "--config-dir"):
            flags += [arg, sys.argv[i + 1]]
            skip_next = True
        elif arg.startswith(("--config-path=", "--config-name=", "--config-dir=")):
            flags.append(arg)
    sys.argv = [sys.argv[0], *flags, *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):  # HydraConfig is read-only
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
