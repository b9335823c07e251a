"""The three sets ``frcnn.tools.fetch`` builds, each as ``../shared`` holds it: ``<dest>/data/raccoon``,
``<dest>/data/coco128``, ``<dest>/weights/<file>``.

- raccoon: github.com/datitran/raccoon_dataset at a pinned commit (MIT). ``images/*.jpg`` ->
  ``JPEGImages/``, ``annotations/*.xml`` -> ``Annotations/`` (as written; their ``<filename>``
  still says ``.png``, and ``VocSource`` falls back to ``<id>.jpg``), ``LICENSE``, and the split
  of the repository's ``data/train_labels.csv`` / ``data/test_labels.csv`` as
  ``ImageSets/Main/train.txt`` / ``val.txt`` (160 / 40 ids, sorted).
- coco128: the 128 train2017 images with the smallest ids, each downloaded from
  images.cocodataset.org and checked, and ``annotations/instances.json``: COCO's official
  ``instances_train2017.json`` (in ``annotations_trainval2017.zip``, 241 MB) reduced to those
  images (images sorted by id, annotations in COCO's order; info, licences, categories kept). The
  reduction parses the 448 MB JSON once (about 3 GB of memory for a minute).
- mobilenet_v2: torchvision's ``mobilenet_v2-b0353104.pth`` into ``weights/``.

``record_manifest(shared)`` computes the content checksums from a ``../shared`` copy.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from pathlib import Path

from frcnn.tools.fetch import FetchError, build_atomically, canonical_digest, sha256_of, verify_files

Get = Callable[[str, Path, "str | None"], Path]  # (url, dest, sha256) -> dest, checked


def voc_digest(annotations: Path) -> str:
    """Digest of what VOC XMLs say (size, names, boxes, difficult), not of their bytes or file names."""
    content = []
    for path in sorted(annotations.glob("*.xml")):
        root = ET.parse(path).getroot()
        objects = [[(o.findtext("name") or "").strip(), *((o.findtext(f"bndbox/{k}") or "").strip()
                    for k in ("xmin", "ymin", "xmax", "ymax")), (o.findtext("difficult") or "0").strip()]
                   for o in root.findall("object")]
        content.append([path.stem, root.findtext("size/width"), root.findtext("size/height"), objects])
    return canonical_digest(content)


def _split_ids(labels_csv: bytes) -> str:
    """``filename,...`` rows -> the sorted image ids, one a line (a VOC split list)."""
    rows = csv.DictReader(io.StringIO(labels_csv.decode()))
    return "".join(f"{name}\n" for name in sorted({Path(row["filename"]).stem for row in rows}))


def raccoon(dest: Path, entry: dict, get: Get) -> None:
    archive = get(entry["archive"]["url"], dest / ".downloads" / f"raccoon_dataset-{entry['commit']}.zip",
                  entry["archive"]["sha256"])

    def build(folder: Path) -> None:
        with zipfile.ZipFile(archive) as zipped:
            top = f"raccoon_dataset-{entry['commit']}/"
            for member in zipped.namelist():
                parent, name = Path(member).parent.as_posix() + "/", Path(member).name
                if parent == f"{top}images/" and name.endswith(".jpg"):
                    (folder / "JPEGImages").mkdir(exist_ok=True)
                    (folder / "JPEGImages" / name).write_bytes(zipped.read(member))
                elif parent == f"{top}annotations/" and name.endswith(".xml"):
                    (folder / "Annotations").mkdir(exist_ok=True)
                    (folder / "Annotations" / name).write_bytes(zipped.read(member))
            (folder / "LICENSE").write_bytes(zipped.read(f"{top}LICENSE"))
            (folder / "ImageSets" / "Main").mkdir(parents=True)
            for split, labels in (("train", "train_labels.csv"), ("val", "test_labels.csv")):
                (folder / "ImageSets" / "Main" / f"{split}.txt").write_text(_split_ids(zipped.read(f"{top}data/{labels}")))
        verify_files(folder, entry["files"], "raccoon")
        if voc_digest(folder / "Annotations") != entry["annotations_digest"]:
            raise FetchError("raccoon: the annotations' content differs from the manifest's digest")

    build_atomically(dest / "data" / "raccoon", build)


def coco128_instances(dataset: dict, image_ids: set[int]) -> dict:
    """COCO instances reduced to ``image_ids``: images sorted by id, annotations in their order."""
    return {
        "info": dataset.get("info"),
        "licenses": dataset.get("licenses"),
        "categories": dataset["categories"],
        "images": sorted((i for i in dataset["images"] if i["id"] in image_ids), key=lambda i: i["id"]),
        "annotations": [a for a in dataset["annotations"] if a["image_id"] in image_ids],
    }


def coco128(dest: Path, entry: dict, get: Get) -> None:
    annotations = entry["annotations"]
    archive = get(annotations["url"], dest / ".downloads" / Path(annotations["url"]).name, annotations["sha256"])

    def build(folder: Path) -> None:
        for name, sha256 in entry["images"].items():
            get(entry["image_url"].format(name=name), folder / "images" / name, sha256)
        with zipfile.ZipFile(archive) as zipped, zipped.open(annotations["member"]) as file:
            dataset = json.load(file)
        reduced = coco128_instances(dataset, {int(Path(name).stem) for name in entry["images"]})
        del dataset
        if canonical_digest(reduced) != entry["instances_digest"]:
            raise FetchError("coco128: the reduced instances JSON differs from the manifest's digest")
        (folder / "annotations").mkdir()
        (folder / "annotations" / "instances.json").write_text(json.dumps(reduced))

    build_atomically(dest / "data" / "coco128", build)


def mobilenet_v2(dest: Path, entry: dict, get: Get) -> None:
    get(entry["url"], dest / entry["file"], entry["sha256"])


SETS = {"raccoon": raccoon, "coco128": coco128, "mobilenet_v2": mobilenet_v2}


def record_manifest(shared: Path, manifest: dict) -> dict:
    """``manifest`` with the content checksums of the raccoon and coco128 copies in ``shared/data``."""
    racc, coco = shared / "data" / "raccoon", shared / "data" / "coco128"
    files = sorted([*racc.glob("JPEGImages/*.jpg"), racc / "LICENSE", *racc.glob("ImageSets/Main/*.txt")])
    manifest["raccoon"]["files"] = {p.relative_to(racc).as_posix(): sha256_of(p) for p in files}
    manifest["raccoon"]["annotations_digest"] = voc_digest(racc / "Annotations")
    manifest["coco128"]["images"] = {p.name: sha256_of(p) for p in sorted(coco.glob("images/*.jpg"))}
    manifest["coco128"]["instances_digest"] = canonical_digest(
        json.loads((coco / "annotations" / "instances.json").read_text()))
    return manifest
