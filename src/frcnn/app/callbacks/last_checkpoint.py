"""``last.ckpt``: the latest training state, written however a fit ends.

Lightning's ``ModelCheckpoint`` writes ``last`` only at validations or epoch ends, and not at the end
of a training epoch without validation when ``check_val_every_n_epoch != 1``: a run stopped by
``max_steps``, ``max_time``, early stopping, Ctrl-C, a preemption signal or an error kept nothing of
what it trained since. This callback writes ``last.ckpt``

- every ``every_n_train_steps`` optimizer steps and every ``train_time_interval`` (long epochs);
- at the end of every ``every_n_epochs``-th training epoch, with or without validation;
- when the fit ends, whatever ended it: after the final step when ``max_steps``, ``max_time`` or a
  callback stops it mid-epoch (written at once, while the loop state still says "mid-epoch", so a
  resume continues the epoch where it stopped), else at the end of training;
- when it is interrupted (``on_exception``): SIGTERM / SIGUSR1 / a first Ctrl-C stop at the end of the
  current step (``frcnn.app.preemption``) and the step's state is written; after an error inside a
  training step (out of memory, a non-finite loss) the weights are those before that step's update,
  and the data position is rewound so a resume retries that batch; a second Ctrl-C inside a step
  writes nothing (its update may be half applied) and says so.

The path and step of an exit-time write are attached to the exception (``checkpoint_path``,
``checkpoint_step``) for the message ``frcnn.app.errors`` prints.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


def _seconds(interval: float | str | timedelta | None) -> float | None:
    """``3600``, ``"01:00:00"`` or a ``timedelta`` -> seconds."""
    if interval is None or isinstance(interval, int | float):
        return None if interval is None else float(interval)
    if isinstance(interval, timedelta):
        return interval.total_seconds()
    hours, minutes, seconds = (float(part) for part in str(interval).split(":"))
    return hours * 3600 + minutes * 60 + seconds


class LastCheckpoint(Checkpoint):
    """Writes ``<dirpath>/<filename>.ckpt`` with the latest training state (see the module docstring).

    Args:
        dirpath: the checkpoint folder.
        filename: without ``.ckpt``.
        every_n_train_steps: also every N optimizer steps (None: off).
        train_time_interval: also every so many seconds of training (``3600`` or ``"01:00:00"``; None: off).
        every_n_epochs: at the end of every N-th training epoch (None: off).
        verbose: log every write, not only those at exit.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last", every_n_train_steps: int | None = None,
                 train_time_interval: float | str | timedelta | None = None, every_n_epochs: int | None = 1,
                 verbose: bool = False) -> None:
        super().__init__()
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1 or null, got {every_n_train_steps}")
        self.dirpath = Path(dirpath)
        self.filename = filename
        self.every_n_train_steps = every_n_train_steps
        self.train_time_interval = _seconds(train_time_interval)
        self.every_n_epochs = every_n_epochs
        self.verbose = verbose
        self.best_model_path = ""  # read by code that walks trainer.checkpoint_callbacks (NaN guard)
        self.last_model_path = ""
        self._saved_step: int | None = None
        self._last_time = time.monotonic()

    @property
    def path(self) -> Path:
        return self.dirpath / f"{self.filename}.ckpt"

    def _save(self, trainer: Trainer, why: str, collective: bool = True) -> None:
        path = str(self.path)
        if collective:
            trainer.save_checkpoint(path, weights_only=False)
        else:  # one rank failed alone: the others will not join a barrier, so write without one
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            if trainer.is_global_zero:
                trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, path)
        self._saved_step = trainer.global_step
        self._last_time = time.monotonic()
        self.last_model_path = path
        if self.verbose or why in ("end of training", "interrupted"):
            log.info("%s: wrote %s (global step %d)", why, path, trainer.global_step)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_time = time.monotonic()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args, **kwargs) -> None:
        step = trainer.global_step
        if self._saved_step == step:
            return
        # The fit stops after this step (max_steps, max_time, a callback's stop): write now, while the
        # loop state says "mid-epoch"; the end-of-epoch hooks that follow would mark the epoch done.
        last = (trainer.max_steps != -1 and step >= trainer.max_steps) or trainer.should_stop
        due = last or (bool(self.every_n_train_steps) and step % self.every_n_train_steps == 0)
        if self.train_time_interval is not None:
            late = time.monotonic() - self._last_time >= self.train_time_interval
            due = due or bool(trainer.strategy.broadcast(late))  # rank 0's clock decides for all ranks
        if due:
            self._save(trainer, "end of training" if last else "step interval")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        finished = trainer.fit_loop.epoch_loop.batch_progress.current.completed >= trainer.num_training_batches
        if finished and self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._save(trainer, "end of epoch")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step > 0 and self._saved_step != trainer.global_step:
            self._save(trainer, "end of training")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.global_step == 0 or trainer.sanity_checking:
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        in_step = progress.started > progress.processed  # raised inside a training step
        if in_step and isinstance(exception, KeyboardInterrupt):
            log.warning("interrupted inside a training step: nothing written (the update may be half applied); "
                        "%s holds step %s", self.path, self._saved_step if self._saved_step is not None else "none")
            return
        if in_step:  # the failed batch was not trained on: a resume retries it
            rewind = getattr(trainer.train_dataloader, "rewind", None)
            if rewind is not None:
                rewind()
        everyone = isinstance(exception, SIGTERMException | KeyboardInterrupt) or trainer.world_size == 1
        try:
            self._save(trainer, "interrupted", collective=everyone)
        except Exception as error:  # the original error matters more: report this one and go on
            log.error("could not write %s after the interruption: %s", self.path, error)
            return
        exception.checkpoint_path = str(self.path)
        exception.checkpoint_step = trainer.global_step
