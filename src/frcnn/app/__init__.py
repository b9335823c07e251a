"""The training application: the LightningModule (``module``), optimizers and schedules (``optim``),
callbacks, and what the entry points share: building from config (``instantiate``, ``build``),
checkpoints (``checkpoint``, ``legacy``), W&B (``wandb``), DDP inside Hydra jobs (``distributed``)
and the process settings (``runtime``)."""

from frcnn.app.module import DetectionModule

__all__ = ["DetectionModule"]
