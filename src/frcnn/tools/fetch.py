"""``make data``: download the real data the slow tests and benchmarks use, checksummed, into ``data/``.

``python -m frcnn.tools.fetch [--dest data/shared] [--mirror URL] [raccoon coco128 mobilenet_v2]``

What it writes, in the layout of ``../shared`` (so ``paths.shared_dir`` can point at either; see
``frcnn.tools.fetch_sets``):

- ``<dest>/data/raccoon/``: the raccoon dataset (VOC layout, 160 / 40 split) from its public GitHub
  repository.
- ``<dest>/data/coco128/``: the 128 COCO train2017 images with the smallest ids, and their official
  instances JSON (filtered from COCO's ``annotations_trainval2017.zip``).
- ``<dest>/weights/mobilenet_v2-b0353104.pth``: torchvision's ImageNet MobileNetV2 (IMAGENET1K_V1).
  Not the file of ``../shared``: that one was recovered from an int8 model and differs.

Checksums (``fetch_manifest.json``): every download whose bytes are stable has its SHA-256 pinned
and is refused on a mismatch. GitHub's archive of the raccoon repository is generated on request
(its bytes are not guaranteed), so there every extracted file is checked instead: each image, the
licence and the split lists by SHA-256, the annotations by a digest of their parsed content. All
content checksums were taken from ``../shared``; COCO's JSON is checked the same way.

Nothing half-done stays behind: a download streams into ``<file>.part`` and is renamed when its
checksum matches (deleted otherwise, or when interrupted); a dataset is built in a temporary
folder beside its final place and renamed into place once every check passed. A dataset folder
that exists is complete and is skipped; downloads are kept in ``<dest>/.downloads`` for reruns.
``--mirror URL`` fetches ``URL/<host>/<path>`` instead of ``https://<host>/<path>`` (a local copy,
``file://`` included: the tests use one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

MANIFEST = Path(__file__).with_name("fetch_manifest.json")
DEFAULT_DEST = Path(__file__).resolve().parents[3] / "data" / "shared"
CHUNK = 1 << 20

Opener = Callable[[str], object]  # url -> a file-like response with read(n)


class FetchError(RuntimeError):
    """A download or a built dataset that does not match its checksums; the message says which."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def mirrored(url: str, mirror: str | None) -> str:
    """``https://host/path`` -> ``<mirror>/host/path`` (unchanged without a mirror)."""
    if not mirror:
        return url
    parts = urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


def download(url: str, dest: Path, sha256: str | None, opener: Opener = urllib.request.urlopen) -> Path:
    """Fetch ``url`` into ``dest`` unless ``dest`` already has the checksum.

    Streams into ``dest.part``; on success the checksum is compared (when ``sha256`` is given) and the
    file renamed into place. A mismatch raises ``FetchError`` naming the URL and both checksums; any
    failure (a dropped connection, Ctrl-C) deletes the partial file and re-raises.
    """
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with opener(url) as response, partial.open("wb") as file:
            for block in iter(lambda: response.read(CHUNK), b""):
                digest.update(block)
                file.write(block)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise FetchError(f"{url}: SHA-256 {digest.hexdigest()} but {sha256} was expected "
                             "(a changed or corrupted file: not used)")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, dest)
    return dest


def verify_files(root: Path, expected: dict[str, str], what: str) -> None:
    """Every ``relative path -> SHA-256`` of ``expected`` under ``root``; ``FetchError`` lists the misses."""
    wrong = []
    for relative, sha256 in expected.items():
        path = root / relative
        if not path.is_file():
            wrong.append(f"{relative}: missing")
        elif sha256_of(path) != sha256:
            wrong.append(f"{relative}: SHA-256 {sha256_of(path)}, expected {sha256}")
    if wrong:
        shown = "\n  ".join(wrong[:20]) + (f"\n  ... and {len(wrong) - 20} more" if len(wrong) > 20 else "")
        raise FetchError(f"{what}: {len(wrong)} file(s) differ from the manifest:\n  {shown}")


def canonical_digest(data: object) -> str:
    """SHA-256 of a JSON value in canonical form (sorted keys, no spaces): independent of formatting."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def build_atomically(final: Path, build: Callable[[Path], None]) -> bool:
    """Run ``build(folder)`` in a temporary folder beside ``final``, then rename it into place.

    Returns False (and builds nothing) when ``final`` exists: only complete builds are ever renamed.
    """
    if final.exists():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(folder)
        os.replace(folder, final)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return True


def main(argv: Sequence[str] | None = None, opener: Opener = urllib.request.urlopen) -> int:
    """Fetch the named sets (all by default); return the exit status."""
    from frcnn.tools.fetch_sets import SETS

    parser = argparse.ArgumentParser(prog="python -m frcnn.tools.fetch", description=__doc__.split("\n")[0])
    parser.add_argument("sets", nargs="*", help=f"what to fetch: {', '.join(SETS)} (default: all)")
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="where (default: the repository's data/shared)")
    parser.add_argument("--mirror", help="fetch <mirror>/<host>/<path> instead of the public URLs")
    parser.add_argument("--manifest", type=Path, default=MANIFEST, help="URLs and checksums (JSON)")
    args = parser.parse_args(argv)
    manifest = json.loads(args.manifest.read_text())
    unknown = [name for name in args.sets if name not in SETS]
    if unknown:
        parser.error(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")

    def get(url: str, dest: Path, sha256: str | None) -> Path:
        print(f"  {url} -> {dest}", flush=True)
        return download(mirrored(url, args.mirror), dest, sha256, opener)

    for name in args.sets or list(SETS):
        print(f"{name}:", flush=True)
        try:
            SETS[name](args.dest, manifest[name], get)
        except (FetchError, OSError) as error:
            print(f"FETCH ERROR ({name}): {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
