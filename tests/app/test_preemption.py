"""Preemption with real signals to a real training process: SIGTERM (Kubernetes, SLURM), SIGUSR1 with
SLURM's requeue (Lightning's SLURM environment), Ctrl-C. Each stops at the end of the current step,
writes last.ckpt of that step, exits cleanly (128 + the signal), and training resumes from it with the
global step, optimizer, schedule, random state and data position intact: the losses of the resumed
steps equal an uninterrupted run's, to the last bit (CPU, one thread).

The dataset: 16 training images in batches of 2, so 8 steps an epoch; the stop lands mid-epoch and
the resumed run crosses into the next epoch. No random flips: the augmentation's own generator is
not part of the checkpoint (docs/reliability.md).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.app.helpers import column, compose_config, read_metrics_csv, script, tiny_overrides
from tests.app.processes import entry_point, user_env

STEPS_PER_EPOCH = 8
AFTER = 10  # steps trained after the resume: past the end of the interrupted epoch


def overrides(data_dir) -> list[str]:
    return [
        *tiny_overrides(data_dir),
        "data.batch_size=2",
        "data.train_aug.hflip=0.0",
        "trainer.limit_train_batches=null",
        "trainer.check_val_every_n_epoch=1000",  # no validation: steps only
        "trainer.max_epochs=1000",
        "callbacks.last_checkpoint.every_n_train_steps=1",  # for the test to see the progress
        "test=false",
        "logger=csv",
    ]


def saved_step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["global_step"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return -1


def stop_with(signum: int, run_dir: Path, args: list[str], env: dict, after_step: int = 2):
    """Start train.py, send ``signum`` once it trained ``after_step`` steps; (exit status, output, step)."""
    log = run_dir.parent / f"{run_dir.name}.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(entry_point("train", [*args, f"hydra.run.dir={run_dir}"]), env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 240
        while saved_step(last) < after_step:
            assert proc.poll() is None, f"training ended early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no progress in time:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        proc.send_signal(signum)
        status = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    return status, log.read_text(), saved_step(last)


def losses(run_dir: Path) -> dict[int, float]:
    rows = read_metrics_csv(next(run_dir.glob("csv/version_*/metrics.csv")))
    return dict(column(rows, "train/loss"))


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("sigterm")
    status, output, step = stop_with(signal.SIGTERM, tmp / "first", overrides(data_dir), user_env())
    return tmp, status, output, step


def test_sigterm_writes_the_current_step_and_exits_cleanly(sigterm_run):
    tmp, status, output, step = sigterm_run
    assert status == 128 + signal.SIGTERM, output[-3000:]
    assert "Traceback" not in output
    last = tmp / "first" / "checkpoints" / "last.ckpt"
    assert f"stopped by SIGTERM (preemption) at the end of global step {step}" in output
    assert f"resume: python src/train.py <the same options> ckpt_path={last}" in output
    # The checkpoint is of the last step the process trained (its last logged loss is step - 1).
    assert max(losses(tmp / "first")) == step - 1
    assert step % STEPS_PER_EPOCH != 0  # stopped mid-epoch: the data position matters


def test_resume_after_sigterm_repeats_the_uninterrupted_run(sigterm_run, data_dir):
    tmp, _, _, step = sigterm_run
    last = tmp / "first" / "checkpoints" / "last.ckpt"
    resumed_cfg = compose_config("train", tmp / "resumed", [*overrides(data_dir), f"ckpt_path={last}",
                                                             f"trainer.max_steps={step + AFTER}"])
    _, objects = script("train").train(resumed_cfg)
    assert objects["trainer"].global_step == step + AFTER
    reference_cfg = compose_config("train", tmp / "reference", [*overrides(data_dir),
                                                                f"trainer.max_steps={step + AFTER}"])
    script("train").train(reference_cfg)

    resumed, reference = losses(tmp / "resumed"), losses(tmp / "reference")
    assert sorted(resumed) == list(range(step, step + AFTER))
    # Same batches, same sampled RoIs, same weights and optimizer moments: the same losses, exactly.
    assert [resumed[s] for s in sorted(resumed)] == [reference[s] for s in sorted(resumed)]
    final = torch.load(tmp / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == step + AFTER
    assert final["lr_schedulers"][0]["last_epoch"] == step + AFTER
    assert {float(s["step"]) for s in final["optimizer_states"][0]["state"].values()} == {float(step + AFTER)}


def test_ctrl_c_stops_at_the_end_of_the_step(tmp_path, data_dir):
    status, output, step = stop_with(signal.SIGINT, tmp_path / "run", overrides(data_dir), user_env())
    assert status == 128 + signal.SIGINT, output[-3000:]
    assert "Ctrl-C: stopping at the end of this step" in output and "Traceback" not in output
    assert f"stopped by Ctrl-C (SIGINT) at the end of global step {step}" in output
    assert max(losses(tmp_path / "run")) == step - 1


def test_sigusr1_under_slurm_requeues_and_the_requeued_job_resumes(tmp_path, data_dir, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # the cluster's: records what it was asked
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    scontrol.chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "frcnn", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "SLURM_NODELIST": "127.0.0.1"}
    env = user_env(**slurm)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    run_dir = tmp_path / "job_4242"  # a run folder per job id: the requeued job finds its checkpoint
    status, output, step = stop_with(signal.SIGUSR1, run_dir, overrides(data_dir), env)
    assert status == 128 + signal.SIGUSR1, output[-3000:]
    assert f"stopped by SIGUSR1 (SLURM's time-limit warning) at the end of global step {step}" in output
    assert "SLURM job 4242 requeued" in output
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = run_dir / "hpc_ckpt_1.ckpt"  # Lightning's requeue checkpoint, written at the end of the step
    assert saved_step(hpc) == step == saved_step(run_dir / "checkpoints" / "last.ckpt")

    # The requeued job: the same command and run folder, no ckpt_path: Lightning resumes from hpc_ckpt.
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    cfg = compose_config("train", run_dir, [*overrides(data_dir), f"trainer.max_steps={step + 3}"])
    _, objects = script("train").train(cfg)
    assert objects["trainer"].global_step == step + 3
    rows = read_metrics_csv(sorted(run_dir.glob("csv/version_*/metrics.csv"))[-1])
    assert [s for s, _ in column(rows, "train/loss")] == [step, step + 1, step + 2]
