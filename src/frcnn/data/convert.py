"""Write any data config's split as COCO JSON: ``python -m frcnn.data.convert data=<name> output=coco.json``.

Options (besides Hydra overrides of the project config, as for ``frcnn.data.check``):

- ``output=<file>``: the JSON to write. With ``{split}`` in the name (``output=coco_{split}.json``)
  every distinct split is written; otherwise the one ``split=`` names (default ``train``).
- ``image_dir=<folder>``: the folder ``file_name`` is relative to (default: the deepest folder
  holding all of the split's images; printed, and stored in the JSON's ``info``).

The split is read and checked as training reads it (``data.check_images``); a fatal problem stops
the conversion with the data check's message. The boxes are written as the annotations state them
(not clipped: fixes are the training's business), with the image sizes the check measured. What
is written and what is not: ``frcnn.data.coco_export``. Exit status 1 on a data error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from frcnn.data.coco_export import to_coco
from frcnn.data.records import DataError, ImageRecord, Source
from frcnn.data.validate import raise_for_problems, validate_records
from frcnn.tools.compose import CONF_DIR, compose_project_config

OWN_KEYS = ("output", "split", "image_dir")


def convert_split(source: Source, check_images: str) -> list[ImageRecord]:
    """The split's records as annotated, with measured sizes; ``DataError`` on a fatal problem."""
    records, problems = source.load()
    checked, check_problems = validate_records(records, check_images)
    raise_for_problems("converted", source, problems + check_problems)
    kept = []
    for record, valid in zip(records, checked, strict=True):  # nothing fatal: one checked record per record
        if source.keep_empty or len(valid.boxes) > 0:
            kept.append(replace(record, width=valid.width, height=valid.height))
    return kept


def write_json(data: dict, path: Path) -> None:
    """Write through a temporary file, so a failure never leaves half a JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)


def common_folder(records: Sequence[ImageRecord]) -> Path:
    """The deepest folder that holds every record's image."""
    if not records:
        return Path.cwd()
    return Path(os.path.commonpath([str(r.path.resolve().parent) for r in records]))


def convert(datamodule, output: str, split: str = "train", image_dir: str | None = None) -> list[Path]:
    """Write the split(s) of a built ``DetectionDataModule`` as COCO JSON; return the files written."""
    splits = [split]
    if "{split}" in output:  # every distinct split (coco128's val is its train: written once)
        by_files = {}
        for name, source in datamodule.sources.items():
            by_files.setdefault(repr(source), name)
        splits = list(by_files.values())
    written = []
    for name in splits:
        source = datamodule.sources[name]
        records = convert_split(source, datamodule.check_images)
        folder = Path(image_dir) if image_dir else common_folder(records)
        data = to_coco(records, source.class_names, source.category_ids, folder)
        data["info"] = {"description": f"written by frcnn.data.convert from {source}", "image_dir": str(folder)}
        path = Path(output.replace("{split}", name))
        write_json(data, path)
        print(f"{name}: {len(data['images'])} images, {len(data['annotations'])} boxes, "
              f"{len(data['categories'])} categories -> {path} (file_name relative to {folder})")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None, config_dir: str | Path = CONF_DIR, config_name: str = "train") -> int:
    """Compose, build, convert; return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    own = {key: value for key, _, value in (a.partition("=") for a in args if a.split("=")[0] in OWN_KEYS)}
    overrides = [a for a in args if a.split("=")[0] not in OWN_KEYS]
    if not own.get("output"):
        print("usage: python -m frcnn.data.convert data=<name> output=<file.json> [split=train] [image_dir=<folder>]")
        return 2
    cfg = compose_project_config(overrides, config_name, config_dir)
    try:
        datamodule = instantiate(cfg.data, _convert_="all")
        datamodule.prepare_data()
        convert(datamodule, own["output"], own.get("split") or "train", own.get("image_dir") or None)
    except (DataError, InstantiationException) as error:
        cause = error.__cause__ if isinstance(error.__cause__, DataError) else error
        print(f"DATA ERROR: {cause}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
