"""A W&B run that survives a resume: its id travels in the checkpoint.

``WandbRunLogger`` (``conf/logger/wandb.yaml``) is Lightning's ``WandbLogger`` plus:

- ``ckpt_path``: the checkpoint training resumes from (``src/train.py`` passes ``cfg.ckpt_path``).
  The run stored in it (``checkpoint["wandb_run"]``, written by ``WandbRunCallback``) is continued:
  same id, ``resume="allow"``; the x-axis ``trainer/global_step`` continues from the restored step.
  No id to pass by hand (lightning-hydra-template #128).
- ``resume``: "allow" (default: continue the checkpoint's run, else start one), "must" (fail without
  a run to continue), "never" (a new run even when resuming training).
- ``id``: an explicit id wins over the checkpoint's.
- ``log_model``: true uploads the best and the last checkpoint as artifacts at the end of fit, with
  the class names and the metrics as metadata, online or offline (Lightning's own ``log_model``
  refuses offline runs). See ``frcnn.app.wandb_callback``.

Offline, the resumed process writes a second ``offline-run-<time>-<id>`` folder with the same id.
W&B numbers history rows (``_step``) from 0 in every process, and ``wandb sync --append`` can only
append rows whose ``_step`` comes after the synced ones, so the resumed run starts its ``_step``
after the previous process's last row (read from that folder when it is still on this disk, else
after the row of the checkpoint). Upload: ``wandb sync <first folder>``, then ``wandb sync --append
<second folder>``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from frcnn.app.wandb_records import last_step

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "wandb_run"
RESUME_MODES = ("allow", "must", "never")


def stored_run(ckpt_path: str | Path) -> dict | None:
    """The W&B run a checkpoint was written by (``id``, ``step``, ``global_step``, ``offline_dir``,
    ``metrics``), or None for a checkpoint of a run without W&B."""
    from frcnn.app.checkpoint_file import read_checkpoint

    # any readable checkpoint: only its W&B run is read here (a resume checks the rest)
    checkpoint = read_checkpoint(ckpt_path, project=False)
    stored = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    return dict(stored) if isinstance(stored, dict) and stored.get("id") else None


def first_step_after(stored: dict) -> int:
    """The ``_step`` a continued run should start at: after every row the earlier process wrote."""
    start = int(stored.get("step") or 0)
    offline_dir = stored.get("offline_dir")
    if offline_dir and Path(offline_dir).is_dir():
        previous = last_step(offline_dir)
        if previous is not None:
            start = max(start, previous + 1)
    return start


class WandbRunLogger(WandbLogger):
    """``WandbLogger`` that continues the run of the checkpoint it resumes from.

    Args:
        ckpt_path: the checkpoint training resumes from (None: a fresh run, unless ``id`` is given).
        resume: "allow", "must" or "never" (see the module docstring).
        log_model: upload best and last as artifacts at the end of fit.
        id: an explicit W&B run id (wins over the checkpoint's).
        **kwargs: the other ``WandbLogger`` / ``wandb.init`` arguments (project, name, save_dir, offline...).
    """

    def __init__(self, ckpt_path: str | Path | None = None, resume: str = "allow", log_model: bool = False,
                 id: str | None = None, **kwargs: Any) -> None:
        if resume not in RESUME_MODES:
            raise ValueError(f"logger.wandb.resume must be one of {RESUME_MODES}, got {resume!r}")
        if log_model not in (True, False):
            raise ValueError(f"logger.wandb.log_model must be true or false, got {log_model!r}")
        self.stored = None
        if ckpt_path and resume != "never" and not id:
            if Path(ckpt_path).is_file():
                self.stored = stored_run(ckpt_path)
            else:  # Lightning's "last" / "hpc" shortcuts name no file: there is no run to read
                log.warning("W&B: ckpt_path=%s is not a file, so its W&B run is not known: a new run starts "
                            "(give the checkpoint's path to continue it)", ckpt_path)
        run_id = id or (self.stored["id"] if self.stored else None)
        if resume == "must" and run_id is None:
            raise ValueError("logger.wandb.resume=must needs a run to continue: ckpt_path=<a checkpoint of a W&B "
                             "run> or logger.wandb.id=<run id>")
        if self.stored:
            log.info("W&B: continuing run %s (stored in %s)", run_id, ckpt_path)
        super().__init__(id=run_id, log_model=False, resume=resume, **kwargs)
        self.log_model_artifacts = log_model
        self._start_aligned = self.stored is None

    @property
    def experiment(self):
        """The W&B run; a continued one first moves its ``_step`` past the earlier process's rows."""
        run = super().experiment
        if not self._start_aligned and rank_zero_only.rank == 0:
            self._start_aligned = True
            start = first_step_after(self.stored)
            if run.step < start:  # offline (or a run the server lost): W&B counted from 0 again
                run.log({"trainer/resumed_from_step": int(self.stored.get("global_step", 0))}, step=start,
                        commit=False)
        return run


def run_state(run, global_step: int, metrics: dict[str, float]) -> dict:
    """What a checkpoint stores about its W&B run (plain types: loadable with ``weights_only``)."""
    offline = bool(getattr(run, "offline", False))
    return {
        "id": str(run.id),
        "step": int(run.step),
        "global_step": int(global_step),
        "offline_dir": str(Path(run.dir).parent) if offline else None,
        "metrics": dict(metrics),
    }
