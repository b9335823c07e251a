"""Kill -9 in the middle of training, resume from last.ckpt: the global step, the optimizer state,
the schedule and the loop position continue from the checkpoint."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import torch

from tests.app.helpers import (
    ROOT,
    column,
    compose_config,
    read_metrics_csv,
    script,
    script_env,
    tiny_overrides,
)

LR = 0.001
WARMUP, MILESTONE = 4, 6
STEPS_PER_EPOCH = 4  # 16 training images, 4 per batch


def expected_lr(step: int) -> float:
    """schedule=step with warm-up from 0.1 x lr over WARMUP steps, x0.1 at MILESTONE."""
    warmup = 1.0 if step >= WARMUP else 0.1 + 0.9 * step / WARMUP
    return LR * warmup * (0.1 if step >= MILESTONE else 1.0)


def saved_step(path) -> int:
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["global_step"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return -1


def test_kill_9_then_resume_from_last_ckpt(tmp_path, data_dir):
    overrides = [
        *tiny_overrides(data_dir),
        "optimizer=adamw",
        f"optimizer.lr={LR}",
        "schedule=step",
        f"schedule.warmup_steps={WARMUP}",
        "schedule.warmup_start_factor=0.1",
        f"schedule.milestones=[{MILESTONE}]",
        "trainer.limit_train_batches=null",
        "trainer.check_val_every_n_epoch=1000",  # no validation: steps only
        "callbacks.last_checkpoint.every_n_train_steps=1",
        "callbacks.last_checkpoint.every_n_epochs=null",
        "test=false",
    ]
    first = tmp_path / "first"
    output = tmp_path / "first.log"
    with output.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "src" / "train.py"), *overrides, "trainer.max_epochs=100",
             f"hydra.run.dir={first}"],
            cwd=ROOT, env=script_env(), stdout=log, stderr=subprocess.STDOUT,
        )
    last = first / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 180
        while saved_step(last) < 3:
            assert proc.poll() is None, f"training ended early:\n{output.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint after 3 steps in time:\n{output.read_text()[-3000:]}"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    checkpoint = torch.load(last, weights_only=True)  # an atomic write: never half a file
    step = checkpoint["global_step"]
    assert step >= 3

    second = tmp_path / "second"
    cfg = compose_config("train", second, [*overrides, f"ckpt_path={last}", f"trainer.max_steps={step + 4}",
                                           "trainer.max_epochs=100"])
    _, objects = script("train").train(cfg)
    assert objects["trainer"].global_step == step + 4

    rows = read_metrics_csv(second / "csv" / "version_0" / "metrics.csv")
    lrs = column(rows, "train/lr")
    assert [s for s, _ in lrs] == list(range(step, step + 4))  # continues at the saved step
    torch.testing.assert_close([lr for _, lr in lrs], [expected_lr(s) for s in range(step, step + 4)])

    final = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == step + 4
    assert final["lr_schedulers"][0]["last_epoch"] == step + 4
    adam_steps = {float(state["step"]) for state in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {float(step + 4)}  # AdamW's moments continued rather than restarted
    # Loop position: the steps taken after resuming have indices step .. step + 3, four to an epoch,
    # so the last one ran in epoch (step + 3) // 4 (a kill right after an epoch's last step included).
    assert final["epoch"] == (step + 3) // STEPS_PER_EPOCH
