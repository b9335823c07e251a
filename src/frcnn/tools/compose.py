"""The project's Hydra config, composed for the command-line tools as ``src/train.py`` composes it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

PROJECT_ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = PROJECT_ROOT / "conf"


def compose_project_config(
    overrides: Sequence[str], config_name: str = "train", config_dir: str | Path = CONF_DIR
) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, the Hydra config included and registered, so
    ``${hydra:...}`` interpolations resolve and ``HydraConfig.get().runtime.choices`` names the
    selected options. ``PROJECT_ROOT`` is set for ``${paths.root_dir}`` as the entry points set it."""
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg
