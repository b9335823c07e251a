"""The data check CLI: ``python -m frcnn.data.check data=<name> [hydra overrides]``.

Composes the project config (``conf/train.yaml``) with the overrides, builds the data module and
reads and validates every distinct split with the same code ``DetectionDataModule.setup`` runs, but
with ``check_images=full`` (every image decoded) unless ``data.check_images=...`` is given. Prints,
per split: images, boxes per class, image and box size distributions, images without boxes and
every problem with its file; with ``classes: auto`` it says so under the class list. Exit status 1
when a split has a fatal problem.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from frcnn.data.records import DataError
from frcnn.data.validate import format_report, summarize
from frcnn.tools.compose import CONF_DIR, compose_project_config


def run_check(datamodule) -> tuple[str, bool]:
    """Check every split of a built ``DetectionDataModule``; return (the report, any fatal problem)."""
    identity = all(label == category for label, category in datamodule.label_to_category_id.items())
    lines = [f"classes ({datamodule.num_classes}): {', '.join(datamodule.class_names)}"]
    if getattr(datamodule.sources["train"], "classes_auto", False):
        lines.append("  (classes: auto, found in the annotations and sorted; pin them with classes: [...] "
                     "once the dataset is final)")
    if getattr(datamodule, "dataset_yaml", None):
        lines.append(f"dataset: {datamodule.dataset_yaml}")
    lines.append(f"check_images: {datamodule.check_images}")
    if not identity:
        lines.append("label -> dataset category id: " + ", ".join(
            f"{label}->{category}" for label, category in datamodule.label_to_category_id.items()))
    failed = False
    for split, (records, problems) in datamodule.check().items():
        lines += ["", format_report(split, datamodule.sources[split], summarize(records, datamodule.class_names),
                                    problems)]
        failed |= any(p.fatal for p in problems)
    return "\n".join(lines), failed


def main(argv: Sequence[str] | None = None, config_dir: str | Path = CONF_DIR, config_name: str = "train") -> int:
    """Compose, build, check and print; return the exit status."""
    overrides = list(sys.argv[1:] if argv is None else argv)
    if not any(o.lstrip("+~").startswith("data.check_images=") for o in overrides):
        overrides.append("data.check_images=full")
    cfg = compose_project_config(overrides, config_name, config_dir)
    try:
        datamodule = instantiate(cfg.data)
        report, failed = run_check(datamodule)
    except (DataError, InstantiationException) as error:
        cause = error.__cause__ if isinstance(error.__cause__, DataError) else error  # Hydra wraps it
        print(f"DATA ERROR: {cause}")
        return 1
    print(report)
    print("\nRESULT:", "FAILED (fatal problems above)" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
