"""Checkpoint files on disk: written atomically, read with a diagnosis when they are not usable.

Writing (``write_atomic``, ``AtomicCheckpointIO``): the bytes go to a temporary file beside the
target, are flushed and ``fsync``-ed, and the temporary file is renamed over the target (atomic on
POSIX file systems), then the folder is ``fsync``-ed so the rename survives a power cut. A process
killed at any moment leaves the target either as it was or complete, never half written. Lightning's
own writer stages the file in the system temporary folder and moves it, which is a copy (not atomic)
whenever that folder is on another file system than the checkpoints, as on most clusters, and syncs
nothing.

Reading (``read_checkpoint``): ``torch.load(weights_only=True)``, nothing unpickled, and a failure
says which of these it is, naming the file: missing, empty, truncated (a zip archive without its end,
what an interrupted copy leaves), corrupt, not a PyTorch file at all, a PyTorch file holding pickled
Python objects (never executed), not a checkpoint of this project (e.g. a bare state dict), or
written by a newer version of this project (``CHECKPOINT_FORMAT``).
"""

from __future__ import annotations

import os
import secrets
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH

# Written into every checkpoint (``DetectionModule.on_save_checkpoint``); raise it when a change makes
# old code unable to read new checkpoints. Checkpoints without it are format 1 (all written before).
CHECKPOINT_FORMAT = 1
FORMAT_KEY = "frcnn_checkpoint_format"

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container
_PICKLE_MAGIC = b"\x80"  # torch.save's legacy (pre-1.6) format starts with a pickle protocol byte


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and says why."""


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then make it ``path`` atomically.

    The temporary file (``.<name>.<pid>.<random>.tmp``, hidden, never ``*.ckpt``) is removed when
    ``write`` fails; only a kill -9 can leave one behind, never in place of a good file, and the next
    write of ``path`` removes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 honours the umask, as a plain open() of the target would
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files a killed writer of ``path`` left behind (its process is gone)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            pid = int(stale.name[len(path.name) + 2:].split(".")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except (ValueError, PermissionError):  # not ours, or another user's live process
            continue


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _diagnose_unreadable(path: Path, error: Exception) -> str:
    """Why ``torch.load`` refused ``path``: the first words of the message ``read_checkpoint`` raises."""
    with path.open("rb") as file:
        head = file.read(8)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return (f"is truncated: a zip archive ({path.stat().st_size} bytes) whose end is missing, as an "
                    "interrupted copy, download or write leaves it")
        if "Unsupported global" in str(error) or "weights only" in str(error).lower():
            detail = next((line.strip() for line in str(error).splitlines() if "Unsupported global" in line),
                          _first_line(error))
            return ("holds pickled Python objects, refused by torch.load(weights_only=True) and never executed "
                    f"({detail}): this project's checkpoints hold tensors and plain containers only, so src/train.py "
                    "did not write it. Only load files you trust")
        return f"is corrupt: a complete zip archive whose contents torch cannot read ({_first_line(error)})"
    if head.startswith(_PICKLE_MAGIC):
        return ("is in PyTorch's legacy (pre-1.6) format or a plain pickle, which this project neither writes "
                f"nor unpickles: not a checkpoint of this project ({_first_line(error)})")
    if head.startswith(b"\x08") or path.suffix == ".onnx":
        return "is not a PyTorch checkpoint (an ONNX model? predict.py runs one with runtime=onnxruntime model_path=<file>)"
    return f"is not a PyTorch checkpoint at all (it starts with the bytes {head!r})"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def read_checkpoint(path: str | Path, map_location: Any = "cpu", project: bool = True) -> dict:
    """``torch.load(path, weights_only=True)`` with a ``CheckpointError`` that names ``path`` and says
    what is wrong. ``project``: also require a checkpoint of this project (``state_dict`` and the
    stored model config) in a format this version reads."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted copy or write. Use another checkpoint "
                              "(the run's last.ckpt or best one), or copy it again")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError, ...: diagnosed from the bytes
        raise CheckpointError(f"{path} {_diagnose_unreadable(path, error)}") from error
    if project:
        check_project_checkpoint(checkpoint, path)
    return checkpoint


def check_project_checkpoint(checkpoint: Any, path: str | Path) -> None:
    """Raise ``CheckpointError`` unless ``checkpoint`` (loaded) is one of ours, in a format we read."""
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        kind = "a bare state dict" if isinstance(checkpoint, dict) and checkpoint and all(
            isinstance(v, torch.Tensor) for v in checkpoint.values()) else f"a {type(checkpoint).__name__}"
        raise CheckpointError(
            f"{path} is not a checkpoint of this project: it holds {kind}, not a src/train.py checkpoint "
            "(state_dict, hyper_parameters, loop state). Weights of a torchvision model go in init_from=<file> "
            "(a detector) or backbone.weights_path=<file> (a classification backbone)")
    hparams = checkpoint.get("hyper_parameters") or {}
    if not hparams.get("model_config"):
        raise CheckpointError(
            f"{path} is not a checkpoint of this project: a Lightning checkpoint without the stored model config "
            "(hyper_parameters.model_config) that src/train.py writes")
    written = checkpoint.get(FORMAT_KEY, 1)
    if not isinstance(written, int) or written > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} was written by an incompatible (newer) version of this project: checkpoint format {written!r}, "
            f"this version reads format {CHECKPOINT_FORMAT} and older. Update the code, or use a checkpoint of this version")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic local writes (``write_atomic``) and diagnosed reads
    (``read_checkpoint``: resuming from a truncated or foreign file says so). Remote paths
    (``s3://``...) keep Lightning's own handling. ``conf/trainer/default.yaml`` plugs it in."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_atomic(path, lambda file: torch.save(checkpoint, file))

    def load_checkpoint(self, path: _PATH, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_local(path) or weights_only is False:
            return super().load_checkpoint(path, map_location, weights_only)
        return read_checkpoint(path, map_location)


def _is_local(path: _PATH) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(get_filesystem(path), LocalFileSystem)
