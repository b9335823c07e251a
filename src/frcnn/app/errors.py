"""What a user sees when a run fails for a reason they can fix: one block, no stack trace.

Every entry point (src/train.py, eval.py, predict.py, export.py, serve.py) runs its task through
``report_errors``. An error that ``explain`` recognises (bad data, config, checkpoint, export input,
a weights download without network, a GPU that is not there, out of memory, a data-loading worker
that died) is printed as one block naming the file or config key and the fix, and the process exits
with status 1. Anything else is a bug and keeps its stack trace. ``HYDRA_FULL_ERROR=1`` or
``verbose=true`` print the trace of a recognised error too.

This module is the one place that maps exceptions to messages; the exceptions themselves
(``DataError``, ``ConfigError``, ``CheckpointError``, ``ExportError``, ``WeightsDownloadError``) carry
the facts, and the config keys that fix them are named here.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from frcnn.app.build import ConfigError
from frcnn.app.callbacks.nan_guard import NonFiniteLossError
from frcnn.app.checkpoint_file import CheckpointError
from frcnn.app.preemption import stopped_message
from frcnn.data.records import DataError
from frcnn.modeling import IncompatibleParts
from frcnn.modeling.backbone.weights import WeightsDownloadError

log = logging.getLogger(__name__)
T = TypeVar("T")

TRACE_HINT = "(the stack trace: add verbose=true, or set HYDRA_FULL_ERROR=1)"
_WORKER_DIED = re.compile(r"DataLoader worker \(pid\(?s?\)? ?([\d, ]+)\)? (?:is killed by signal: ([^.]+)|exited unexpectedly)")
_NO_CUDA = ("No supported gpu backend found", "CUDAAccelerator` can not run", "Found no NVIDIA driver",
            "Torch not compiled with CUDA", "no CUDA-capable device", "CUDA driver initialization failed")
_CPU_OOM = ("DefaultCPUAllocator: can't allocate memory", "not enough memory")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what caused it (``raise ... from``, then implicit context), each once."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _setting(cfg: DictConfig | None, key: str) -> Any:
    if cfg is None:
        return None
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    except Exception:  # an unresolvable interpolation: the hint goes without the value
        return None


def _out_of_memory(error: BaseException, cfg: DictConfig | None) -> str:
    device = "GPU" if "CUDA" in str(error) or type(error).__name__ == "OutOfMemoryError" else "CPU"
    batch = _setting(cfg, "data.batch_size") or _setting(cfg, "batch_size")
    eval_batch = _setting(cfg, "data.eval_batch_size")
    min_size, max_size = _setting(cfg, "model.transform.min_size"), _setting(cfg, "model.transform.max_size")
    lines = [f"out of memory on the {device}: {str(error).strip().splitlines()[0][:300]}"]
    if batch is not None:
        lines.append(f"  the batch: data.batch_size={batch} images" + (f" (evaluation: data.eval_batch_size={eval_batch})"
                                                                       if eval_batch else ""))
    if min_size is not None:
        lines.append(f"  resized to model.transform.min_size={min_size} / model.transform.max_size={max_size}")
    lines.append("  fix: lower the batch size (data.batch_size=1, data.eval_batch_size=1; predict.py: batch_size=1) "
                 "or the image size (model.transform.min_size=480 model.transform.max_size=800)")
    if device == "GPU":
        lines.append("       or train in mixed precision (trainer.precision=bf16-mixed or 16-mixed)")
    else:
        lines.append("       or fewer loader processes (data.num_workers=1): each holds its own copy of a batch")
    return "\n".join(lines)


def _worker_died(match: re.Match) -> str:
    pids, how = match.group(1).strip(), (match.group(2) or "").strip()
    why = {"Killed": "SIGKILL, most often the kernel's out-of-memory killer (see `dmesg`)",
           "Segmentation fault": "a segmentation fault, a crash inside an image decoder or a native library",
           "Bus error": "a bus error: too little shared memory (/dev/shm; in Docker: --shm-size=2g)"}.get(how, how)
    return "\n".join([
        f"a data-loading worker process (pid {pids}) died" + (f": killed by {why}" if why else " unexpectedly"),
        "  fix: fewer or lighter workers (data.num_workers=1, data.batch_size=1), more memory for the job;",
        "       data.num_workers=0 decodes in the main process, where a bad image raises an error naming its file;",
        "       `python -m frcnn.data.check data=<name> data.check_images=full` decodes every image once",
    ])


def explain(error: BaseException, cfg: DictConfig | None = None) -> str | None:
    """The block to print for a recognised error (anywhere in its cause chain); None for a bug."""
    for cause in _chain(error):
        text = str(cause)
        if isinstance(cause, DataError):
            return f"bad data: {text}"
        if isinstance(cause, CheckpointError):
            return f"bad checkpoint: {text}"
        if isinstance(cause, ConfigError | IncompatibleParts):
            return f"config: {text}"
        if type(cause).__name__ == "ExportError":  # frcnn.export is imported lazily by export.py only
            return f"export failed: {text}"
        if isinstance(cause, WeightsDownloadError):
            return "\n".join([
                f"no network for the weights download: {cause.weights}",
                f"  from {cause.url} ({cause.__cause__ or text})",
                f"  torchvision caches it as {cause.cache_file}: copy the file there from a machine with network,",
                "  or point at a local copy: backbone.weights=null backbone.weights_path=<file> (a classification",
                "  backbone's state dict), or init_from=<file> (a torchvision detector's), or train without",
                "  pretrained weights: backbone.weights=null",
            ])
        if isinstance(cause, MissingMandatoryValue):
            key = getattr(cause, "full_key", None) or text
            return f"config: the option {key} is required: pass {key}=<value> on the command line"
        if any(marker in text for marker in _NO_CUDA):
            return "\n".join([
                f"no usable GPU on this machine: {text.strip().splitlines()[0][:300]}",
                f"  the config asks for one (trainer.accelerator={_setting(cfg, 'trainer.accelerator')!s}, "
                f"device={_setting(cfg, 'device')!s}); torch.cuda.is_available() is False here",
                "  fix: trainer=cpu (or trainer.accelerator=auto: a GPU when there is one); serve.py: device=cpu;",
                "       on a GPU machine check the driver (nvidia-smi) and that torch is a CUDA build",
            ])
        if type(cause).__name__ == "OutOfMemoryError" or isinstance(cause, MemoryError) or (
                isinstance(cause, RuntimeError) and any(marker in text for marker in _CPU_OOM)):
            return _out_of_memory(cause, cfg)
        if isinstance(cause, RuntimeError) and (match := _WORKER_DIED.search(text)):
            return _worker_died(match)
        if isinstance(cause, NonFiniteLossError):
            return f"training diverged: {text}"
        if isinstance(cause, FileNotFoundError):
            return f"file not found: {text}"
    return None


def _verbose(cfg: DictConfig | None) -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or bool(_setting(cfg, "verbose"))


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _to_log_files(message: str) -> None:
    """The block also into the run's log file (Hydra's file handler), not a second time on the console."""
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def report_errors(task: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """``task(cfg)``; a recognised error is printed as one block (``explain``) and exits with 1.

    With ``HYDRA_FULL_ERROR=1``, and in a multirun (where Hydra records the failed job and the sweep
    goes on), the block is printed and the error re-raised; with ``verbose=true`` the trace is
    printed above the block.
    """
    try:
        return task(cfg)
    except SIGTERMException as stop:  # SIGTERM / SIGUSR1 / Ctrl-C: stopped cleanly at the end of a step
        message, status = stopped_message(stop)
        if rank_zero_only.rank == 0:
            print(f"\n{message}\n", file=sys.stderr, flush=True)
            _to_log_files(message)
        raise SystemExit(status) from None
    except Exception as error:
        message = explain(error, cfg)
        if message is None:
            raise
        if getattr(error, "checkpoint_path", None):
            message += (f"\n  the training state before the failure: {error.checkpoint_path} (global step "
                        f"{error.checkpoint_step}); resume with ckpt_path={error.checkpoint_path}")
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or _in_multirun():
            # a sweep records a failed job and goes on (Hydra's job runner catches exceptions, not exits)
            print(f"\nerror: {message}\n", file=sys.stderr, flush=True)
            raise
        if _verbose(cfg):
            traceback.print_exc()
        print(f"\nerror: {message}\n{'' if _verbose(cfg) else TRACE_HINT}\n", file=sys.stderr, flush=True)
        _to_log_files(f"error: {message}")
        raise SystemExit(1) from None
