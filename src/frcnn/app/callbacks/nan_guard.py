"""Stop at the first NaN / inf loss, before it reaches the weights."""

from __future__ import annotations

import torch
from lightning import Callback, LightningModule, Trainer
from torch import Tensor


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the step and the losses."""


class NonFiniteLossGuard(Callback):
    """Stops training at the first NaN / inf loss, before it reaches the weights.

    The check runs before the backward pass, so the weights and the optimizer state stay those of
    the last good step, and no checkpoint is written afterwards: ``last.ckpt`` on disk is the last
    good one. Under DDP the ranks agree (any rank bad -> all stop), so no rank hangs in a collective.
    """

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        any_bad = trainer.strategy.reduce_boolean_decision(not finite, all=False)
        if not any_bad:
            return
        losses = getattr(pl_module, "last_losses", None) or {"loss": loss.detach()}
        values = ", ".join(f"{name}={float(value):.4g}" for name, value in losses.items())
        where = f"global step {trainer.global_step} (epoch {trainer.current_epoch})"
        if finite:
            where += " on another rank"
        saved = [path for c in trainer.checkpoint_callbacks for path in (c.last_model_path, c.best_model_path) if path]
        ckpt = next((p for p in saved if p.endswith("last.ckpt")), saved[0] if saved else "none written yet")
        raise NonFiniteLossError(
            f"non-finite training loss at {where}: {values}. Training stopped before the update; "
            f"last good checkpoint: {ckpt}. Try a lower lr, a longer warm-up or gradient clipping."
        )
