"""Hydra multiruns from the command line: a 2-value sweep with 2-process DDP on the CPU, and a
2-trial Optuna sweep. Subprocesses, as a user runs them."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.app.helpers import column, read_metrics_csv, run_script, tiny_overrides


def test_multirun_with_ddp_sim_gives_one_directory_per_job(tmp_path, data_dir):
    sweep, logs = tmp_path / "sweep", tmp_path / "logs"
    run_script("train", [
        "-m", "trainer=ddp_sim", "optimizer.lr=0.001,0.01",
        *tiny_overrides(data_dir, single_process=False),
        "trainer.limit_train_batches=1", "callbacks.validation_images.num_images=1",
        f"hydra.sweep.dir={sweep}", f"paths.log_dir={logs}",
    ], timeout=400)

    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert not logs.exists()  # no rank started a run (or a sweep) of its own elsewhere
    for job, lr in (("0", "0.001"), ("1", "0.01")):
        log = (sweep / job / "train.log").read_text()
        # both ranks ran this job, in this directory, with this job's learning rate
        assert f"lr={lr} (rank 0 of 2)" in log and f"lr={lr} (rank 1 of 2)" in log, log
        rows = read_metrics_csv(sweep / job / "csv" / "version_0" / "metrics.csv")
        assert len(column(rows, "val/map")) == 1 and len(column(rows, "test/map")) == 1
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert f"optimizer.lr={lr}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()


def test_optuna_sweep_returns_the_best_value(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    run_script("train", [
        "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
        *tiny_overrides(data_dir), "trainer.limit_val_batches=1", "callbacks.validation_images.num_images=1",
        f"hydra.sweep.dir={sweep}",
    ], timeout=400)

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values, params = [], []
    for job in ("0", "1"):
        rows = read_metrics_csv(sweep / job / "csv" / "version_0" / "metrics.csv")
        values.append(column(rows, "val/map_50")[-1][1])  # what train.py returned for the trial
        overrides = yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml").read_text())
        params.append({k: float(v) for k, v in (o.split("=", 1) for o in overrides) if k in results["best_params"]})
    best = max(range(2), key=values.__getitem__)
    torch.testing.assert_close(results["best_value"], values[best], rtol=1e-6, atol=1e-9)
    assert set(results["best_params"]) == {
        "optimizer.lr", "model.loss_weights.loss_rpn_cls", "model.loss_weights.loss_rpn_reg",
        "model.loss_weights.loss_cls", "model.loss_weights.loss_box_reg",
    }
    # the reported parameters are the ones the best trial ran with, and the two trials differ
    assert results["best_params"] == pytest.approx(params[best], rel=1e-9)
    assert params[0] != params[1]
    lr = results["best_params"]["optimizer.lr"]
    assert f"lr={lr} (rank 0 of 1)" in (sweep / str(best) / "train.log").read_text()  # the run used it
