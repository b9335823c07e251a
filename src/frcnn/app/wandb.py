"""W&B without surprises: online only with credentials, offline otherwise, never a login prompt."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

log = logging.getLogger(__name__)

WANDB_TARGETS = ("lightning.pytorch.loggers.WandbLogger", "lightning.pytorch.loggers.wandb.WandbLogger",
                 "frcnn.app.wandb_run.WandbRunLogger")


def wandb_has_credentials() -> bool:
    """True when W&B can log in without asking: ``WANDB_API_KEY`` or a ``wandb login`` netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_offline(offline: bool | None) -> bool:
    """Resolve the W&B logger's ``offline`` (null: decide here). Online needs credentials.

    ``WANDB_MODE=offline`` / ``dryrun`` -> True; ``disabled`` -> False, so that Lightning leaves the
    variable alone and W&B itself stays disabled. Otherwise (``WANDB_MODE=online`` or unset) online
    only with credentials, unless ``offline: true`` forces offline. Without credentials W&B would
    ask for a login: this never happens, the run goes offline with a warning instead.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode in ("offline", "dryrun"):
        return True
    if mode == "disabled":
        return False
    if not wandb_has_credentials():
        if mode == "online" or offline is False:
            log.warning("W&B online was asked for, but there are no credentials (WANDB_API_KEY or `wandb login`): "
                        "logging offline instead")
        return True
    return bool(offline)
