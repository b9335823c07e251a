"""Shared test settings: everything offline, CPU, deterministic; real-data tests deselected (with
one line saying why and what to do) where the real data is absent."""

import os

from tests.shared_data import AVAILABLE, MOBILENET_V2, SHARED

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
# The configs read the same place the tests do (conf/paths/default.yaml).
os.environ.setdefault("FRCNN_SHARED_DIR", str(SHARED))
os.environ.setdefault("FRCNN_MOBILENET_V2_WEIGHTS", str(MOBILENET_V2))

_deselected: list = []


def pytest_collection_modifyitems(config, items):
    if AVAILABLE:
        return
    needs = [item for item in items if item.get_closest_marker("shared_data")]
    if needs:
        config.hook.pytest_deselected(items=needs)
        items[:] = [item for item in items if not item.get_closest_marker("shared_data")]
        _deselected.extend(needs)


def pytest_terminal_summary(terminalreporter):
    if _deselected:
        terminalreporter.write_line(
            f"{len(_deselected)} tests need the real data (raccoon, coco128, MobileNetV2 weights), not found in "
            f"{SHARED}: deselected. Run `make data` to fetch it into data/shared, or set FRCNN_SHARED_DIR."
        )
