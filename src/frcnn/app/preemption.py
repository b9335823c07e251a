"""Stopping a fit when the cluster asks: at the end of the current step, with a checkpoint.

Lightning already turns SIGTERM (Kubernetes' and SLURM's stop signal) into a stop at the end of the
current training step (``SIGTERMException``). ``Preemption`` routes two more signals the same way
while training runs:

- SIGUSR1, SLURM's warning before the time limit (``sbatch --signal=USR1@120``). Lightning would
  write its requeue checkpoint inside the signal handler, wherever the step is; here the stop waits
  for the end of the step, and then, under SLURM with auto-requeue (Lightning's ``SLURMEnvironment``),
  Lightning's own routine writes ``<run>/hpc_ckpt_<n>.ckpt`` and runs ``scontrol requeue <job>``. The
  requeued job, started with the same command and run folder, resumes from it by itself.
- SIGINT, a first Ctrl-C: the same clean stop. A second Ctrl-C interrupts at once.

``LastCheckpoint`` writes ``last.ckpt`` on the way out; the entry point prints ``stopped_message``
and exits with 128 + the signal's number (143 for SIGTERM, 138 for SIGUSR1, 130 for Ctrl-C).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class Preemption(Callback):
    """SIGUSR1 and a first Ctrl-C stop training like SIGTERM (see the module docstring).

    Args:
        requeue: under SLURM with Lightning's auto-requeue, requeue the job after SIGUSR1.
    """

    def __init__(self, requeue: bool = True) -> None:
        self.requeue = requeue
        self.signal: int | None = None  # the first stop signal received
        self._previous: dict[int, Any] = {}

    def _install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGUSR1):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals cannot be handled here
                return

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal = signum
        if signum == signal.SIGINT:  # the next Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, self._previous.pop(signal.SIGINT, signal.default_int_handler))
            print("\nCtrl-C: stopping at the end of this step and writing last.ckpt (Ctrl-C again: stop at once)",
                  file=sys.stderr, flush=True)
        signal.raise_signal(signal.SIGTERM)  # Lightning's handler: stop at the end of this step

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.signal = None
        self._install()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore()
        if not isinstance(exception, SIGTERMException):
            return
        exception.stop_signal = self.signal or signal.SIGTERM
        environment = trainer._accelerator_connector.cluster_environment
        if (exception.stop_signal == signal.SIGUSR1 and self.requeue and isinstance(environment, SLURMEnvironment)
                and environment.auto_requeue):
            # Lightning's SLURM routine (hpc checkpoint + scontrol requeue), at the end of a step
            trainer._signal_connector._slurm_sigusr_handler_fn(signal.SIGUSR1, None)
            exception.requeued_job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")


def stopped_message(stop: BaseException) -> tuple[str, int]:
    """(the block to print, the exit status) after a fit stopped by a signal."""
    signum = getattr(stop, "stop_signal", signal.SIGTERM)
    name = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGUSR1: "SIGUSR1 (SLURM's time-limit warning)"}.get(
        signum, "SIGTERM (preemption)")
    path, step = getattr(stop, "checkpoint_path", None), getattr(stop, "checkpoint_step", None)
    lines = [f"stopped by {name} at the end of global step {step if step is not None else '?'}"]
    if path:
        lines += [f"  training state written to {path}",
                  f"  resume: python src/train.py <the same options> ckpt_path={path}"]
    else:
        lines.append("  no checkpoint written (no training step had finished)")
    if getattr(stop, "requeued_job", None):
        lines.append(f"  SLURM job {stop.requeued_job} requeued: it resumes from its hpc_ckpt_*.ckpt by itself")
    return "\n".join(lines), 128 + int(signum)
