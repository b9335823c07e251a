"""What an exact resume needs beyond Lightning's own state: the random generators and the data position.

Data position: the train loader (``frcnn.data.loader.ResumableDataLoader``) saves its place in the
epoch, and Lightning would load it when its fit loop sets the loader up, except that the module's
``configure_optimizers`` has already set it up (``estimated_stepping_batches``, for the schedule's
length) before the checkpoint is restored, so Lightning never loads it. ``ResumeState`` loads it at
the start of training and restarts the loader's iteration there, for the resumed epoch.

Random generators:

The model draws random numbers in every training step (the RPN's and the R-CNN's balanced sampling
of anchors and RoIs). A resumed run that started its generators afresh from the seed would sample
other RoIs than the uninterrupted run at the same step; with the states saved at the checkpoint and
restored just before the first resumed step (after Lightning's own start-up draws), the steps after
a resume draw exactly what the uninterrupted run drew. Saved: Python's ``random``, NumPy's global
generator, torch's CPU generator and, when CUDA is initialised, every CUDA device's generator.

Not covered: the augmentation's own generator (albumentations, reseeded per loader process from
``torch.initial_seed()``), so random flips after a resume differ from the uninterrupted run's.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.fabric.utilities.data import _set_sampler_epoch


def capture() -> dict:
    """The generators' states, as tensors and plain containers (checkpoints load with weights_only)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    """Set the generators to ``capture()``'s ``state``."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_data_position(trainer: Trainer) -> None:
    """Load the train loaders' saved states Lightning left unloaded, and restart the iteration there."""
    fit_loop = trainer.fit_loop
    states = getattr(fit_loop, "_combined_loader_states_to_load", None)
    if not states or fit_loop._combined_loader is None or fit_loop._data_fetcher is None:
        return
    fit_loop._combined_loader._load_state_dicts(states)
    fit_loop._combined_loader_states_to_load = []
    for loader in fit_loop._combined_loader.flattened:  # workers draw at once: the resumed epoch's order
        _set_sampler_epoch(loader, fit_loop.epoch_progress.current.processed)
    iter(fit_loop._data_fetcher)  # a new iteration, from the loaded position


class ResumeState(Callback):
    """Saves the generators' states in checkpoints; when resuming, loads the data position at the start
    of training and restores the generators just before the first step."""

    def __init__(self) -> None:
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        return capture()

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        load_data_position(trainer)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if self._pending is not None:
            restore(self._pending)
            self._pending = None
