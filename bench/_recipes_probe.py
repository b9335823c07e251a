"""EMA probes of bench/_recipes_run.py: in a run with the EMA callback, more averages of the same
weight trajectory (the raw weights as decay 0, and other decays), so the EMA's effect is measured
paired (one training, several weight sets) instead of against another run's noise.

``EMAProbe`` sits after ``CPUBudget`` in the callback list: its updates run after the budget's clock
has stopped for the step, so they cost the run no training steps. Each average uses the callback's
own rule (``frcnn.app.callbacks.EMA.update`` with ``ema_decay``), with the run's warm-up.
"""

from __future__ import annotations

import copy

import torch
from lightning import Callback

from frcnn.app.callbacks.ema import EMA, ema_decay, named_tensors

PROBE_DECAYS = (0.0, 0.9, 0.98)  # 0.0: the raw weights (each update copies them)


class EMAProbe(Callback):
    def __init__(self, warmup_steps: float, decays: tuple[float, ...] = PROBE_DECAYS) -> None:
        self.averages = {decay: EMA(decay, warmup_steps) for decay in decays}

    def on_fit_start(self, trainer, pl_module) -> None:
        for ema in self.averages.values():
            ema.on_fit_start(trainer, pl_module)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        current = dict(named_tensors(pl_module))
        for ema in self.averages.values():
            ema.updates += 1
            ema.update(current, ema_decay(ema.decay, ema.warmup_steps, ema.updates))





def probe_models(module, probe: EMAProbe) -> dict[str, torch.nn.Module]:
    """'decay <d>' -> a copy of ``module.model`` holding that average (the module keeps its weights)."""
    kept = {name: t.detach().clone() for name, t in named_tensors(module)}
    models = {}
    for decay, ema in probe.averages.items():
        EMA._load(module, ema.average)
        models[f"decay {decay:g}"] = copy.deepcopy(module.model)
    EMA._load(module, kept)
    return models
