"""A DataLoader worker that dies (the kernel's out-of-memory killer, a decoder that segfaults): training
stops with one clear block naming the worker and the likely causes, never hangs, and keeps last.ckpt."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import torch

from tests.app.helpers import tiny_overrides
from tests.app.processes import entry_point, user_env


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def test_a_killed_loader_worker_is_a_clear_error_not_a_hang(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    args = [*tiny_overrides(data_dir), "data.num_workers=1", "trainer.limit_train_batches=null",
            "trainer.max_epochs=1000", "trainer.check_val_every_n_epoch=1000",
            "callbacks.last_checkpoint.every_n_train_steps=1", "test=false", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(entry_point("train", args), env=user_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "last.ckpt").exists():  # training runs, its worker with it
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        (worker,) = children(proc.pid)
        Path(f"/proc/{worker}/cmdline").read_bytes()  # alive
        killed_at = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)  # a hang would time out here
    finally:
        proc.kill()
        proc.wait()
    assert time.monotonic() - killed_at < 60
    assert proc.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    # PyTorch names the signal when its SIGCHLD handler sees the death first, else says "exited
    # unexpectedly" (its watchdog was first: seen on a loaded machine); both name the worker
    died = f"error: a data-loading worker process (pid {worker}) died"
    assert (f"{died}: killed by SIGKILL, most often the kernel's out-of-memory killer" in stderr
            or f"{died} unexpectedly" in stderr), stderr[-3000:]
    assert "data.num_workers=0" in stderr
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert f"the training state before the failure: {run_dir / 'checkpoints' / 'last.ckpt'} (global step " \
           f"{saved['global_step']})" in stderr
