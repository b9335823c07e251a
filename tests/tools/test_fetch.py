"""``make data`` (frcnn.tools.fetch) against local file:// mirrors that the tests build."""

from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.request
import zipfile
from pathlib import Path

import pytest

from frcnn.data import VocSource, load_split
from frcnn.tools.fetch import CHUNK, MANIFEST, FetchError, download, main, mirrored
from tests.shared_data import SHARED  # noqa: E402

COMMIT = json.loads(MANIFEST.read_text())["raccoon"]["commit"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def never_called(url):
    raise AssertionError(f"nothing should be downloaded, but {url} was opened")


class DropsAfterFirstChunk:
    """An opener whose response dies after the first chunk, as a dropped connection or Ctrl-C does."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __call__(self, url):
        response = urllib.request.urlopen(url)
        reads = iter([response.read(CHUNK)])

        def read(_size):
            try:
                return next(reads)
            except StopIteration:
                raise self.error from None

        response.read = read
        return response


@pytest.fixture
def payload(tmp_path) -> tuple[str, bytes]:
    data = os.urandom(CHUNK * 2 + 123)  # more than one chunk: an interruption lands mid-file
    (tmp_path / "served.bin").write_bytes(data)
    return (tmp_path / "served.bin").as_uri(), data


def test_download_checks_the_checksum(tmp_path, payload):
    url, data = payload
    dest = tmp_path / "got" / "file.bin"
    assert download(url, dest, sha256(data)).read_bytes() == data
    assert download(url, dest, sha256(data), opener=never_called) == dest  # present and right: kept
    dest.write_bytes(b"corrupted")
    assert download(url, dest, sha256(data)).read_bytes() == data  # present but wrong: fetched again
    bad = tmp_path / "bad.bin"
    with pytest.raises(FetchError, match=f"{url}: SHA-256 {sha256(data)} but {'0' * 64} was expected"):
        download(url, bad, "0" * 64)
    assert not bad.exists() and not (tmp_path / "bad.bin.part").exists()


@pytest.mark.parametrize("error", [ConnectionResetError("connection dropped"), KeyboardInterrupt()])
def test_an_interrupted_download_leaves_no_partial_file(tmp_path, payload, error):
    url, data = payload
    dest = tmp_path / "file.bin"
    with pytest.raises(type(error)):
        download(url, dest, sha256(data), opener=DropsAfterFirstChunk(error))
    assert list(tmp_path.iterdir()) == [tmp_path / "served.bin"]  # neither file.bin nor file.bin.part


def test_mirror_urls():
    assert mirrored("https://github.com/a/b/archive/c.zip", "file:///m/") == "file:///m/github.com/a/b/archive/c.zip"
    assert mirrored("http://x.org/p", None) == "http://x.org/p"


def raccoon_archive(images: dict[str, bytes], xmls: dict[str, str], train: list[str], val: list[str],
                    licence: bytes = b"MIT License\n") -> bytes:
    """The raccoon repository's layout, zipped as GitHub names it, with decoys the build must skip."""
    top = f"raccoon_dataset-{COMMIT}/"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in images.items():
            archive.writestr(f"{top}images/{name}.jpg", data)
        for name, text in xmls.items():
            archive.writestr(f"{top}annotations/{name}.xml", text)
        archive.writestr(f"{top}LICENSE", licence)
        for file, names in (("train_labels.csv", train), ("test_labels.csv", val)):
            rows = ["filename,width,height,class,xmin,ymin,xmax,ymax"] + [f"{n}.jpg,9,9,raccoon,1,1,5,5" for n in names * 2]
            archive.writestr(f"{top}data/{file}", "\n".join(rows) + "\n")
        archive.writestr(f"{top}training/notes.txt", "not part of the dataset")
    return buffer.getvalue()


def serve(mirror: Path, url: str, data: bytes) -> None:
    path = Path(mirrored(url, str(mirror)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def tiny_raccoon(tmp_path, corrupt: bool = False) -> tuple[Path, Path]:
    """A two-image raccoon archive on a mirror, and a manifest whose checksums describe it."""
    from frcnn.tools.fetch_sets import voc_digest

    images = {"raccoon-1": b"\xff\xd8 one", "raccoon-2": b"\xff\xd8 two"}
    xml = "<annotation><size><width>9</width><height>9</height></size><object><name>raccoon</name><bndbox>" \
          "<xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
    xmls = {name: xml for name in images}
    (tmp_path / "xml").mkdir()
    for name, text in xmls.items():
        (tmp_path / "xml" / f"{name}.xml").write_text(text)
    manifest = json.loads(MANIFEST.read_text())
    entry = manifest["raccoon"]
    entry["files"] = {f"JPEGImages/{n}.jpg": sha256(d) for n, d in images.items()}
    entry["files"] |= {"LICENSE": sha256(b"MIT License\n"), "ImageSets/Main/train.txt": sha256(b"raccoon-1\n"),
                       "ImageSets/Main/val.txt": sha256(b"raccoon-2\n")}
    entry["annotations_digest"] = voc_digest(tmp_path / "xml")
    if corrupt:
        images["raccoon-2"] = b"\xff\xd8 tw0"
    mirror = tmp_path / "mirror"
    serve(mirror, entry["archive"]["url"], raccoon_archive(images, xmls, ["raccoon-1"], ["raccoon-2"]))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return mirror, tmp_path / "manifest.json"


def test_a_set_is_built_from_a_mirror_and_then_skipped(tmp_path):
    mirror, manifest = tiny_raccoon(tmp_path)
    dest = tmp_path / "data"
    args = ["raccoon", "--dest", str(dest), "--mirror", mirror.as_uri(), "--manifest", str(manifest)]
    assert main(args) == 0
    root = dest / "data" / "raccoon"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "Annotations/raccoon-1.xml", "Annotations/raccoon-2.xml", "ImageSets/Main/train.txt",
        "ImageSets/Main/val.txt", "JPEGImages/raccoon-1.jpg", "JPEGImages/raccoon-2.jpg", "LICENSE"]
    assert (root / "ImageSets" / "Main" / "train.txt").read_text() == "raccoon-1\n"
    assert main(args, opener=never_called) == 0  # complete: nothing fetched again


def test_a_file_that_differs_fails_the_set_and_leaves_nothing(tmp_path, capsys):
    mirror, manifest = tiny_raccoon(tmp_path, corrupt=True)
    dest = tmp_path / "data"
    assert main(["raccoon", "--dest", str(dest), "--mirror", mirror.as_uri(), "--manifest", str(manifest)]) == 1
    error = capsys.readouterr().err
    assert "FETCH ERROR (raccoon): raccoon: 1 file(s) differ from the manifest:" in error
    got, expected = sha256(b"\xff\xd8 tw0"), sha256(b"\xff\xd8 two")
    assert f"JPEGImages/raccoon-2.jpg: SHA-256 {got}, expected {expected}" in error
    assert sorted(p.name for p in dest.iterdir()) == [".downloads", "data"]
    assert list((dest / "data").iterdir()) == []  # no raccoon/, no half-built folder


@pytest.mark.shared_data
def test_the_real_manifest_rebuilds_shared_from_a_mirror_of_the_public_files(tmp_path):
    """A mirror laid out like the public hosts, filled from ../shared: the real recipes and content
    checksums reproduce ../shared byte for byte. Only the two download checksums that cover bytes
    not in ../shared (COCO's 241 MB annotation zip, torchvision's float weights) are swapped for the
    mirror's; the real ones are the published values (fetch_manifest.json)."""
    manifest = json.loads(MANIFEST.read_text())
    mirror = tmp_path / "mirror"
    racc, coco = SHARED / "data" / "raccoon", SHARED / "data" / "coco128"
    split = {s: (racc / "ImageSets" / "Main" / f"{s}.txt").read_text().split() for s in ("train", "val")}
    serve(mirror, manifest["raccoon"]["archive"]["url"], raccoon_archive(
        {p.stem: p.read_bytes() for p in racc.glob("JPEGImages/*.jpg")},
        {p.stem: p.read_text() for p in racc.glob("Annotations/*.xml")}, split["train"], split["val"],
        (racc / "LICENSE").read_bytes()))

    instances = json.loads((coco / "annotations" / "instances.json").read_text())
    decoy = {**instances["images"][0], "id": 999999, "file_name": "000000999999.jpg"}
    full = {"info": instances["info"], "licenses": instances["licenses"], "images": [decoy, *instances["images"]],
            "annotations": [{**instances["annotations"][0], "id": 1, "image_id": 999999}, *instances["annotations"]],
            "categories": instances["categories"]}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(manifest["coco128"]["annotations"]["member"], json.dumps(full))
    serve(mirror, manifest["coco128"]["annotations"]["url"], buffer.getvalue())
    manifest["coco128"]["annotations"]["sha256"] = sha256(buffer.getvalue())
    for image in coco.glob("images/*.jpg"):
        serve(mirror, manifest["coco128"]["image_url"].format(name=image.name), image.read_bytes())
    serve(mirror, manifest["mobilenet_v2"]["url"], b"stand-in weights")
    manifest["mobilenet_v2"]["sha256"] = sha256(b"stand-in weights")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    dest = tmp_path / "data"
    assert main(["--dest", str(dest), "--mirror", mirror.as_uri(), "--manifest", str(tmp_path / "manifest.json")]) == 0
    for copy, original in ((dest / "data" / "raccoon", racc), (dest / "data" / "coco128", coco)):
        files = sorted(p.relative_to(original) for p in original.rglob("*") if p.is_file())
        assert sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file()) == files
        for relative in files:
            assert (copy / relative).read_bytes() == (original / relative).read_bytes(), relative
    assert (dest / "weights" / "mobilenet_v2-b0353104.pth").read_bytes() == b"stand-in weights"
    records, problems = load_split(VocSource(dest / "data" / "raccoon", "train", classes=["raccoon"]), "header")
    assert len(records) == 160 and problems == []
