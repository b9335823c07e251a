"""Shared by the application tests: compose the real configs, shrink them, run the real entry points.

Every run uses the tiny backbone on a tiny shapes dataset (16 train / 8 val images of 96..128 px)
generated once per session, 128 px model input, CPU, and writes under pytest's tmp_path.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"

# The tiny shapes dataset: these generator parameters are the dataset's identity (its stamp).
SHAPES = {
    "num_train": 16,
    "num_val": 8,
    "min_image_size": 96,
    "max_image_size": 128,
}
CLASS_NAMES = ["circle", "square", "triangle"]


def data_overrides(data_dir: Path) -> list[str]:
    """data=shapes (the default) shrunk to the session's tiny dataset, loaded in the main process."""
    return [
        f"paths.data_dir={data_dir}",
        *(f"data.train.generator.{key}={value}" for key, value in SHAPES.items()),
        "data.num_workers=0",
        "data.batch_size=4",
    ]


def tiny_overrides(data_dir: Path, single_process: bool = True) -> list[str]:
    """A train.yaml run of a few seconds: 2 steps, validation on 2 batches, 128 px input."""
    return [
        *data_overrides(data_dir),
        "model.transform.min_size=128",
        "model.transform.max_size=128",
        *(["trainer.accelerator=cpu", "trainer.devices=1"] if single_process else []),
        "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1",  # the default experiment validates every 3rd epoch
        "trainer.limit_train_batches=2",
        "trainer.log_every_n_steps=1",
        "callbacks.validation_images.num_images=2",
        "print_config=false",
        "torch_threads=1",
    ]


def compose_config(config_name: str, output_dir: Path, overrides: list[str]) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as Hydra would for a run in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(
            config_name=config_name,
            return_hydra_config=True,
            overrides=[
                f"paths.output_dir={output_dir}",
                f"paths.log_dir={output_dir}",
                f"paths.work_dir={output_dir}",
                f"hydra.run.dir={output_dir}",
                *overrides,
            ],
        )
    HydraConfig.instance().set_config(cfg)
    return cfg


@functools.cache
def script(name: str) -> ModuleType:
    """``src/<name>.py`` as a module (the entry points are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"frcnn_entry_{name}", ROOT / "src" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_env() -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="1", PYTHONUNBUFFERED="1")
    env.pop("LOCAL_RANK", None)
    return env


def run_script(name: str, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``python src/<name>.py args`` to completion; a failure shows the end of its output."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src" / f"{name}.py"), *args],
        cwd=ROOT,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{name}.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def read_metrics_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSVLogger metrics.csv."""
    import csv

    with path.open() as file:
        return list(csv.DictReader(file))


def column(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    """(step, value) of every row where ``key`` was logged."""
    return [(int(row["step"]), float(row[key])) for row in rows if row.get(key) not in (None, "")]
