"""Where a YOLO dataset's files are: the Ultralytics dataset YAML or the bare folder layout.

Two ways to describe a dataset (``YoloLayout.open``):

- An Ultralytics dataset YAML (``data.yaml``)::

      path: ../datasets/mydata   # the root; relative paths count from the YAML's own folder
      train: images/train        # an image folder, a .txt list of image paths, or a list of those
      val: images/val
      test:                      # optional
      names: [cat, dog]          # a list (class id = position) or a dict {0: cat, 1: dog}

  ``path`` missing means the YAML's folder. (Ultralytics itself resolves a relative ``path``
  against its settings' datasets directory; here it is the YAML's folder, so a dataset moves as one.)
- A folder holding ``images/<split>/`` and ``labels/<split>/`` (no names: ``classes: auto`` or a list).

Image folders are searched recursively for the image suffixes Ultralytics reads, in sorted path
order. In a ``.txt`` list, relative lines count from the list's folder (Ultralytics does so for
``./`` lines). The label file of ``.../images/.../a.jpg`` is ``.../labels/.../a.txt``: the last
``images`` folder of the path becomes ``labels`` (Ultralytics' ``img2label_paths``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from frcnn.data.records import DataError, Problem

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"})


def label_path(image: Path) -> Path:
    """``.../images/x/a.jpg`` -> ``.../labels/x/a.txt`` (the last ``images`` part is replaced)."""
    parts = list(image.parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def parse_names(names: object, where: str) -> dict[int, str]:
    """``names`` as a list or a ``{id: name}`` dict -> {class id: name}."""
    if isinstance(names, list | tuple):
        by_id = dict(enumerate(names))
    elif isinstance(names, dict):
        by_id = {}
        for key, name in names.items():
            try:
                by_id[int(key)] = name
            except (TypeError, ValueError):
                raise DataError(f"{where}: names keys must be integer class ids, got {key!r}") from None
    else:
        raise DataError(f"{where}: names must be a list or a dict {{id: name}}, got {names!r}")
    if not by_id or any(i < 0 for i in by_id) or any(not isinstance(n, str | int) for n in by_id.values()):
        raise DataError(f"{where}: names must map class ids >= 0 to names, got {names!r}")
    if len({str(n) for n in by_id.values()}) != len(by_id):
        raise DataError(f"{where}: names must be distinct, got {names!r}")
    return {i: str(by_id[i]) for i in sorted(by_id)}


@dataclass
class YoloLayout:
    """A YOLO dataset's splits: split -> the folders / lists its images come from.

    Attributes:
        origin: the YAML file or the folder the layout was read from (for messages).
        splits: split name -> image folders and ``.txt`` lists.
        names: {class id: name} from the YAML, or None (folder layout, or a YAML without names).
    """

    origin: Path
    splits: dict[str, list[Path]]
    names: dict[int, str] | None = None
    _listed: dict[str, tuple[list[Path], list[Problem]]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, dataset: str | Path) -> YoloLayout:
        """Read a dataset YAML or a folder with ``images/<split>``; ``DataError`` when neither is usable."""
        origin = Path(dataset)
        if origin.is_dir():
            images = origin / "images"
            splits = {p.name: [p] for p in sorted(images.iterdir()) if p.is_dir()} if images.is_dir() else {}
            if not splits:
                raise DataError(f"{origin}: a YOLO folder needs images/<split>/ subfolders (and labels/<split>/)")
            return cls(origin, splits)
        if not origin.is_file():
            raise DataError(f"{origin}: YOLO dataset YAML or folder not found")
        try:
            config = yaml.safe_load(origin.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise DataError(f"{origin}: not a readable YAML file ({error})") from error
        if not isinstance(config, dict):
            raise DataError(f"{origin}: a dataset YAML must be a mapping with train / val / names keys")
        root = Path(config.get("path") or ".")
        root = root if root.is_absolute() else origin.parent / root
        if not root.is_dir():
            raise DataError(f"{origin}: path {config.get('path')!r} is not a folder (resolved against the "
                            f"YAML's folder: {root})")
        splits = {}
        for split in ("train", "val", "test"):
            entries = config.get(split)
            if entries:
                entries = entries if isinstance(entries, list) else [entries]
                splits[split] = [Path(e) if Path(e).is_absolute() else root / e for e in map(str, entries)]
        names = parse_names(config["names"], str(origin)) if config.get("names") is not None else None
        return cls(origin, splits, names)

    def images(self, split: str) -> tuple[list[Path], list[Problem]]:
        """The split's image files, without duplicates, and the problems of its folders and lists."""
        if split not in self.splits:
            raise DataError(f"{self.origin}: no '{split}' split (splits: {', '.join(self.splits) or 'none'})")
        if split not in self._listed:
            self._listed[split] = self._list(split)
        return self._listed[split]

    def _list(self, split: str) -> tuple[list[Path], list[Problem]]:
        images: list[Path] = []
        problems: list[Problem] = []
        for entry in self.splits[split]:
            if entry.is_dir():
                found = sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
                if not found:
                    problems.append(Problem(str(entry), f"no image files in the '{split}' folder"))
                images += found
            elif entry.is_file() and entry.suffix == ".txt":
                images += self._read_list(entry, problems)
            else:
                problems.append(Problem(str(self.origin), f"the '{split}' entry {entry} is neither a folder "
                                                          "nor a .txt list of images"))
        seen: set[Path] = set()
        unique = []
        for image in images:
            if image in seen:
                problems.append(Problem(str(image), f"listed twice in the '{split}' split"))
                continue
            seen.add(image)
            unique.append(image)
        return unique, problems

    @staticmethod
    def _read_list(list_file: Path, problems: list[Problem]) -> list[Path]:
        images = []
        for number, line in enumerate(list_file.read_text().splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            image = Path(line) if Path(line).is_absolute() else list_file.parent / line
            if not image.is_file():
                problems.append(Problem(str(list_file), f"line {number}: image {line} not found ({image})"))
                continue
            images.append(image)
        return images

    def orphan_labels(self, split: str, images: list[Path]) -> list[Problem]:
        """Label files in a split's label folders that belong to no image of the split."""
        expected = {label_path(image) for image in images}
        problems = []
        for entry in self.splits[split]:
            labels = label_path(entry / "x.jpg").parent if entry.is_dir() else None
            if labels is None or labels == entry or not labels.is_dir():
                continue
            for label in sorted(labels.rglob("*.txt")):
                if label not in expected:
                    problems.append(Problem(str(label), "label file without an image (looked for "
                                                        f"{label.stem}.* in {entry})"))
        return problems
