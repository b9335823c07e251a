"""Exponential moving average (EMA) of the weights: what validation, checkpoints and export see.

After every optimizer step the average moves towards the weights:

    ema_n = d_n * ema_{n-1} + (1 - d_n) * w_n,    d_n = decay * (1 - exp(-n / warmup_steps))

(n = 1, 2, ... counts the updates; ``ema_0`` is the first weights). The warm-up (YOLOX's and
MMDetection's ``ExpMomentumEMA``) keeps d_n small at first, so the early average follows the
weights instead of remembering the random start; ``warmup_steps=0`` uses ``decay`` throughout.

With the callback on:
- validation runs on the EMA weights (swapped in for the epoch, the raw ones back afterwards), so
  ``val/map`` and the best checkpoint by it are the EMA's;
- every checkpoint's ``state_dict`` holds the EMA weights (eval.py, predict.py, export.py and
  ``Detector`` load those) and ``raw_state_dict`` the weights being trained; resuming restores both;
- at the end of training the module keeps the EMA weights (the test after training uses them).
Every floating-point parameter and buffer is averaged; integer buffers follow the weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from lightning import Callback, LightningModule, Trainer
from torch import Tensor

RAW_KEY = "raw_state_dict"  # the checkpoint key of the weights being trained


def ema_decay(decay: float, warmup_steps: float, update: int) -> float:
    """d_n of the ``update``-th update (1-based): ``decay * (1 - exp(-update / warmup_steps))``."""
    if warmup_steps <= 0:
        return decay
    return decay * (1.0 - math.exp(-update / warmup_steps))


def named_tensors(module: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Parameters and persistent buffers, by their state-dict names."""
    yield from module.state_dict(keep_vars=True).items()


class EMA(Callback):
    """Keeps the EMA of a LightningModule's weights (see the module docstring for the rule).

    Args:
        decay: the long-run decay d (0.9998 is detectron2 / YOLOX's over ~100k iterations; short
            runs want less: the average spans about 1 / (1 - d) steps).
        warmup_steps: the warm-up's time constant in optimizer steps (0: none).
    """

    def __init__(self, decay: float = 0.999, warmup_steps: float = 2000.0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup_steps = float(warmup_steps)
        self.updates = 0
        self.average: dict[str, Tensor] | None = None  # state-dict name -> EMA tensor
        self._raw: dict[str, Tensor] | None = None  # the trained weights while validation runs on the EMA
        self._last_step = -1

    # --- the average ----------------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Here, not in setup(): the module is on its device by now, so the average lives beside it.
        if self.average is None:
            self.average = {name: t.detach().clone() for name, t in named_tensors(pl_module)}
        else:  # restored from a checkpoint (on the CPU): to the module's device
            self.average = {name: t.to(pl_module.device) for name, t in self.average.items()}
        self._last_step = trainer.global_step

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._last_step or self.average is None:  # no optimizer step (accumulation)
            return
        self._last_step = trainer.global_step
        self.updates += 1
        self.update(dict(named_tensors(pl_module)), ema_decay(self.decay, self.warmup_steps, self.updates))

    @torch.no_grad()
    def update(self, current: dict[str, Tensor], decay: float) -> None:
        """ema <- decay * ema + (1 - decay) * current, for every floating tensor; the others copied."""
        averaged, weights = [], []
        for name, ema in self.average.items():
            value = current[name].detach()
            if ema.is_floating_point():
                averaged.append(ema)
                weights.append(value)
            else:
                ema.copy_(value)
        if averaged:
            torch._foreach_lerp_(averaged, weights, 1.0 - decay)

    # --- validation on the average ----------------------------------------------------------------

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.average is not None and trainer.state.fn == "fit":
            self._raw = {name: t.detach().clone() for name, t in named_tensors(pl_module)}
            self._load(pl_module, self.average)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._raw is not None:
            self._load(pl_module, self._raw)
            self._raw = None

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.average is not None:
            self._load(pl_module, self.average)

    @staticmethod
    @torch.no_grad()
    def _load(pl_module: LightningModule, values: dict[str, Tensor]) -> None:
        for name, tensor in named_tensors(pl_module):
            tensor.copy_(values[name])

    # --- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"updates": self.updates, "decay": self.decay, "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.updates = int(state_dict["updates"])

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if self.average is None:
            return
        raw = checkpoint["state_dict"] if self._raw is None else self._raw  # saved mid-validation: swapped
        checkpoint[RAW_KEY] = {name: t.detach().cpu().clone() for name, t in raw.items()}
        checkpoint["state_dict"] = {name: t.detach().cpu().clone() for name, t in self.average.items()}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        # Only a resumed fit restores the two sets; testing or validating a checkpoint keeps its
        # state_dict, which is the EMA's already.
        if trainer.state.fn != "fit":
            return
        if RAW_KEY in checkpoint:
            self.average = {name: t.to(pl_module.device, copy=True) for name, t in checkpoint["state_dict"].items()}
            pl_module.load_state_dict(checkpoint[RAW_KEY])
        # A checkpoint without EMA: the average starts from its weights at fit start.
