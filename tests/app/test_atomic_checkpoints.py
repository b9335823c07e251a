"""Checkpoints are written atomically, and a bad checkpoint file is named and diagnosed.

A kill -9 lands in the middle of a write by construction: the writer's ``torch.save`` is slowed to
64 KiB chunks 10 ms apart, and the process is killed once the file being written has reached a
given fraction of its size. With the atomic writer the checkpoint on disk is then always the
previous complete one; with a plain ``torch.save`` to the target (the control) it is half a file.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from frcnn.app.checkpoint_file import FORMAT_KEY, AtomicCheckpointIO, CheckpointError, read_checkpoint
from tests.api.checkpoint import tiny_checkpoint
from tests.app.helpers import ROOT, compose_config, script, tiny_overrides
from tests.app.processes import entry_point, fault, user_env

SLOW_SAVE = """
    import io, time, torch
    _save = torch.save
    def save(obj, f, *args, **kwargs):
        if isinstance(f, io.BytesIO):
            return _save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        _save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        out = open(f, "wb") if isinstance(f, (str, bytes)) or hasattr(f, "__fspath__") else f
        for start in range(0, len(data), 1 << 16):
            out.write(data[start:start + (1 << 16)])
            out.flush()
            time.sleep(0.01)
        if out is not f:
            out.close()
    torch.save = save
"""
WRITER = """
    import sys, torch
    from frcnn.app.checkpoint_file import AtomicCheckpointIO
    checkpoint = {"state_dict": {"w": torch.arange(1_500_000, dtype=torch.float32)}, "version": 2,
                  "hyper_parameters": {"model_config": {"_target_": "x"}}}
    print("ready", flush=True)
    if sys.argv[2] == "atomic":
        AtomicCheckpointIO().save_checkpoint(checkpoint, sys.argv[1])
    else:
        torch.save(checkpoint, sys.argv[1])
"""


def kill_when(proc: subprocess.Popen, file_of, fraction: float, size: int, timeout: float = 120) -> int:
    """SIGKILL ``proc`` once ``file_of()`` (the file being written) holds ``fraction`` of ``size`` bytes."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the writer ended before it was killed"
        assert time.monotonic() < deadline
        path = file_of()
        written = path.stat().st_size if path is not None and path.exists() else -1
        if written >= fraction * size:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return written
        time.sleep(0.002)


def temporary(folder: Path, name: str):
    return lambda: next(iter(folder.glob(f".{name}.*.tmp")), None)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.95])
def test_kill_9_while_writing_leaves_the_previous_complete_checkpoint(tmp_path, fraction):
    target = tmp_path / "last.ckpt"
    previous = {"state_dict": {"w": torch.ones(10)}, "version": 1, "hyper_parameters": {"model_config": {"a": 1}}}
    AtomicCheckpointIO().save_checkpoint(previous, target)
    size = 6_000_000  # about the new checkpoint's size (1.5 M float32)
    env = user_env(fault(tmp_path, SLOW_SAVE))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(target), "atomic"], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    written = kill_when(proc, temporary(tmp_path, "last.ckpt"), fraction, size)
    assert 0 <= written < size  # killed mid-write
    loaded = read_checkpoint(target)
    assert loaded["version"] == 1 and torch.equal(loaded["state_dict"]["w"], torch.ones(10))
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]  # the killed write: a hidden .tmp
    AtomicCheckpointIO().save_checkpoint(previous, target)  # the next write clears it away
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["last.ckpt"]


def test_the_control_a_plain_write_killed_midway_leaves_half_a_file(tmp_path):
    target = tmp_path / "last.ckpt"
    torch.save({"version": 1}, target)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(target), "plain"],
                            env=user_env(fault(tmp_path, SLOW_SAVE)), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    kill_when(proc, lambda: target if target.stat().st_size > 1000 else None, 0.5, 6_000_000)
    with pytest.raises(CheckpointError, match=f"{target} is truncated: a zip archive"):
        read_checkpoint(target)


def test_kill_9_while_training_writes_last_ckpt(tmp_path, data_dir):
    folder = tmp_path / "run" / "checkpoints"
    args = [*tiny_overrides(data_dir), "trainer.limit_train_batches=null", "trainer.max_epochs=100",
            "trainer.check_val_every_n_epoch=1000", "callbacks.last_checkpoint.every_n_train_steps=1", "test=false",
            f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(entry_point("train", args), env=user_env(fault(tmp_path, SLOW_SAVE)), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (folder / "last.ckpt").exists():  # a first complete one, then kill the next write
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        size = (folder / "last.ckpt").stat().st_size
        written = kill_when(proc, temporary(folder, "last.ckpt"), 0.5, size)
    finally:
        proc.kill()
        proc.wait()
    assert 0.5 * size <= written < size
    assert read_checkpoint(folder / "last.ckpt")["global_step"] >= 1


# --- bad files given to eval.py, predict.py, a resume and export.py ----------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_ckpts")
    good = tiny_checkpoint(tmp)
    checkpoint = torch.load(good, weights_only=True)
    files = {"truncated": tmp / "truncated.ckpt", "empty": tmp / "empty.ckpt", "foreign": tmp / "foreign.ckpt",
             "newer": tmp / "newer.ckpt", "renamed": tmp / "renamed.ckpt", "pickled": tmp / "pickled.ckpt",
             "text": tmp / "notes.ckpt"}
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    files["empty"].write_bytes(b"")
    torch.save(checkpoint["state_dict"], files["foreign"])
    torch.save({**checkpoint, FORMAT_KEY: 99}, files["newer"])
    model_config = {**checkpoint["hyper_parameters"]["model_config"], "_target_": "frcnn.modeling.FasterRCNNv9"}
    torch.save({**checkpoint, "hyper_parameters": {**checkpoint["hyper_parameters"], "model_config": model_config}},
               files["renamed"])
    torch.save({**checkpoint, "extra": Path("/x")}, files["pickled"])
    files["text"].write_text("epoch=3 step=1200\n")
    return tmp, good, files


DIAGNOSES = {
    "truncated": "is truncated: a zip archive",
    "empty": "is empty (0 bytes)",
    "foreign": "is not a checkpoint of this project: it holds a bare state dict",
    "newer": "was written by an incompatible (newer) version of this project: checkpoint format 99",
    "renamed": "was written by an incompatible version of this project: this version cannot rebuild its detector",
    "pickled": "holds pickled Python objects, refused by torch.load(weights_only=True) and never executed",
    "text": "is not a PyTorch checkpoint at all",
}


@pytest.mark.parametrize("kind", list(DIAGNOSES))
def test_bad_checkpoints_are_named_and_diagnosed_everywhere(bad_files, kind, data_dir):
    tmp, _, files = bad_files
    path = files[kind]
    expected = f"{path} {DIAGNOSES[kind]}"
    # eval.py and predict.py rebuild the detector from the file
    with pytest.raises(CheckpointError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        script("eval").evaluate(compose_config("eval", tmp / f"eval_{kind}", [f"ckpt_path={path}"]))
    image = data_dir / "shapes" / "JPEGImages" / "val_00000.jpg"
    with pytest.raises(CheckpointError) as predicted:
        script("predict").predict(compose_config("predict", tmp / f"pred_{kind}", [f"ckpt_path={path}",
                                                                                   f"input={image}"]))
    assert expected in str(predicted.value)
    # export.py
    from frcnn.export.graph import ExportError

    with pytest.raises(ExportError) as exported:
        script("export").export(compose_config("export", tmp / f"export_{kind}", [
            f"ckpt_path={path}", f"output={tmp / 'm.onnx'}", "verify=false"]))
    assert expected in str(exported.value)
    if kind == "renamed":  # Lightning reads its loop state fine; our model config is what it cannot rebuild
        return
    # resuming training: Lightning reads the file through the atomic checkpoint I/O
    with pytest.raises(CheckpointError) as resumed:
        script("train").train(compose_config("train", tmp / f"resume_{kind}", [*tiny_overrides(data_dir),
                                                                                f"ckpt_path={path}", "test=false"]))
    assert expected in str(resumed.value)
