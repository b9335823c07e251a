"""Entry points as real processes, as a user runs them: no HYDRA_FULL_ERROR, optional injected faults.

A fault is Python code run at interpreter start-up (a ``sitecustomize`` module on the child's
``PYTHONPATH``) that patches a function to fail as the real world would (a download without network,
an out-of-memory error, a slow disk), so nothing real is downloaded or exhausted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.app.helpers import ROOT


def fault(tmp_path: Path, code: str) -> Path:
    """A folder holding ``sitecustomize.py`` with ``code``: put it first on a child's PYTHONPATH."""
    folder = tmp_path / "fault"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(textwrap.dedent(code))
    return folder


def user_env(fault_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: HYDRA_FULL_ERROR unset (conftest sets it for the tests)."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1", **extra)
    for key in ("HYDRA_FULL_ERROR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    paths = [str(fault_dir)] if fault_dir is not None else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def entry_point(name: str, args: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "src" / f"{name}.py"), *args]


def run_entry(name: str, args: list[str], env: dict[str, str] | None = None,
              timeout: float = 240) -> subprocess.CompletedProcess:
    """``python src/<name>.py args`` to its end, as a user runs it; the caller checks the outcome."""
    return subprocess.run(entry_point(name, args), cwd=ROOT, env=env or user_env(), capture_output=True, text=True,
                          timeout=timeout)
