"""W&B across a resume, offline, read back from the run files: one run id over two processes, the
step axis continued, best and last staged as artifacts with class names and metrics."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import torch

from frcnn.app.wandb_records import history, read_records
from frcnn.app.wandb_run import CHECKPOINT_KEY, WandbRunLogger
from tests.app.helpers import CLASS_NAMES, compose_config, script, tiny_overrides


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """W&B's own settings, cache and staging folders inside the test's directory."""
    for variable in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")


def offline_run(output_dir, timeout: float = 60.0):
    """The run folder and file of a finished offline run. ``wandb.finish`` returns before W&B's
    writer process has flushed the file's last blocks: wait for its ``exit`` record."""
    (run_dir,) = (output_dir / "wandb").glob("offline-run-*")
    (run_file,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while not any(r.WhichOneof("record_type") == "exit" for r in read_records(run_file)):
        assert time.monotonic() < deadline, f"{run_file} has no exit record after {timeout} s"
        time.sleep(0.2)
    return run_dir, run_file


def model_artifacts(run_file, run_id) -> dict[tuple[str, ...], object]:
    """The staged versions of ``model-<run id>`` by their aliases (W&B adds "latest" by itself)."""
    found = [r.artifact for r in read_records(run_file) if r.WhichOneof("record_type") == "artifact"]
    return {tuple(sorted(set(a.aliases) - {"latest"})): a for a in found if a.name == f"model-{run_id}"}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_steps(rows) -> list[int]:
    return [row["trainer/global_step"] for row in rows if "train/loss" in row]


def test_resume_continues_the_wandb_run_and_stages_best_and_last(tmp_path, data_dir, wandb_home):
    overrides = [*tiny_overrides(data_dir), "logger=wandb", "logger.wandb.log_model=true", "test=false"]
    first, second = tmp_path / "first", tmp_path / "second"
    script("train").train(compose_config("train", first, [*overrides, "trainer.max_epochs=1"]))
    last = first / "checkpoints" / "last.ckpt"
    stored = torch.load(last, weights_only=True)[CHECKPOINT_KEY]
    run_id = stored["id"]
    run_dir, run_file = offline_run(first)
    assert run_dir.name.endswith(f"-{run_id}") and run_file.name == f"run-{run_id}.wandb"
    rows = history(run_file)
    assert train_steps(rows) == [0, 1]  # limit_train_batches=2

    # Best and last, staged inside the offline run folder, with their own metadata.
    staged = model_artifacts(run_file, run_id)
    assert set(staged) == {("best",), ("last",)}
    for alias, checkpoint in (("best", next((first / "checkpoints").glob("epoch_*.ckpt"))), ("last", last)):
        artifact = staged[(alias,)]
        assert artifact.name == f"model-{run_id}" and artifact.type == "model"
        metadata = json.loads(artifact.metadata)
        assert metadata["class_names"] == CLASS_NAMES and metadata["global_step"] == 2
        assert "val/map" in metadata["metrics"] and metadata["file"] == checkpoint.name
        (entry,) = artifact.manifest.contents
        assert entry.path == checkpoint.name and entry.local_path.startswith(str(run_dir / "artifacts" / alias))
        assert sha256(run_dir / "artifacts" / alias / checkpoint.name) == sha256(checkpoint)
    assert json.loads(staged[("best",)].metadata)["monitor"] == "val/map"

    # The second process: no id given, the checkpoint's run goes on.
    script("train").train(compose_config("train", second, [*overrides, f"ckpt_path={last}", "trainer.max_epochs=2"]))
    run_dir2, run_file2 = offline_run(second)
    assert run_dir2.name.endswith(f"-{run_id}") and run_file2.name == f"run-{run_id}.wandb"
    rows2 = history(run_file2)
    assert train_steps(rows2) == [2, 3]  # the x-axis trainer/global_step continues
    assert rows2[0]["trainer/resumed_from_step"] == 2
    assert min(r["_step"] for r in rows2) == max(r["_step"] for r in rows) + 1  # disjoint: sync --append works
    assert set(model_artifacts(run_file2, run_id)) == {("best",), ("last",)}
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)[CHECKPOINT_KEY]["id"] == run_id

    # A new run only when asked.
    third = tmp_path / "third"
    script("train").train(compose_config("train", third, [
        *overrides, f"ckpt_path={last}", "trainer.max_epochs=2", "logger.wandb.resume=never",
        "logger.wandb.log_model=false"]))
    run_dir3, _ = offline_run(third)
    assert not run_dir3.name.endswith(f"-{run_id}")


def test_which_run_a_logger_continues(tmp_path, wandb_home):
    checkpoint = tmp_path / "last.ckpt"
    torch.save({CHECKPOINT_KEY: {"id": "abc123", "step": 7, "global_step": 3, "offline_dir": None}}, checkpoint)
    plain = tmp_path / "plain.ckpt"
    torch.save({"global_step": 3}, plain)
    options = {"project": "p", "save_dir": str(tmp_path), "offline": True}
    assert WandbRunLogger(ckpt_path=checkpoint, **options).version == "abc123"
    assert WandbRunLogger(ckpt_path=checkpoint, id="mine", **options).version == "mine"
    assert WandbRunLogger(ckpt_path=checkpoint, resume="never", **options).version is None
    assert WandbRunLogger(ckpt_path=plain, **options).version is None  # a checkpoint of a run without W&B
    assert WandbRunLogger(ckpt_path="last", **options).version is None  # Lightning's shortcut: no file to read
    with pytest.raises(ValueError, match="resume=must needs a run to continue"):
        WandbRunLogger(ckpt_path=plain, resume="must", **options)
    with pytest.raises(ValueError, match="resume must be one of"):
        WandbRunLogger(resume="sometimes", **options)
