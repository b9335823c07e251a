"""Image decoding: any file PIL reads -> (H, W, 3) uint8 RGB as displayed.

- EXIF orientation is applied, so width and height are those of the image as a viewer shows it
  (annotations tools draw boxes on that image).
- Grayscale, grayscale+alpha, palette, RGBA, CMYK, 1-bit, YCbCr... are converted by PIL; an alpha
  channel is dropped (as torchvision's ``read_image(mode=RGB)`` does).
- 16-bit grayscale (PIL modes "I;16*", and "I" holding 16-bit values) is scaled to 8 bits over the
  full 16-bit range (``value >> 8``); PIL's own ``convert("L")`` would clip at 255 instead.
- ``reduce_for`` lets a big JPEG decode at 1/2, 1/4 or 1/8 size (libjpeg's DCT scaling, much faster
  than a full decode and a resize) when the loader resizes it anyway; never used at native size.

The integrity checks used by the data check live here too (``inspect_image``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

EXIF_ORIENTATION = 0x0112
# Orientations 5..8 rotate by 90 degrees: the displayed image is the stored one transposed.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageDecodeError(OSError):
    """The file is missing, empty, not an image, truncated or corrupt; the message says which."""


@dataclass(frozen=True)
class ImageInfo:
    """Header facts of an image file: size as displayed (after EXIF orientation)."""

    width: int
    height: int
    stored_width: int
    stored_height: int
    orientation: int
    format: str | None


def to_rgb(image: Image.Image) -> np.ndarray:
    """A decoded PIL image in any mode -> (H, W, 3) uint8 RGB array (writable, C-contiguous)."""
    if image.mode == "RGB":
        return np.array(image)  # a copy: PIL's buffer is read-only and torch wants writable memory
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        gray = (np.clip(values, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)  # (H, W)
        return np.repeat(gray[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3)
    return np.array(image.convert("RGB"))


def _reduction_for(stored_size: tuple[int, int], scale: float | None) -> tuple[int, int] | None:
    """The smallest size a JPEG may be decoded at when the loader will scale it by ``scale``."""
    if scale is None or scale >= 0.5:  # DCT reduction halves at least: no gain above scale 1/2
        return None
    width, height = stored_size
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def read_image(path: str | Path, reduce_for: float | None = None) -> tuple[np.ndarray, int]:
    """Decode an image file as displayed.

    Args:
        path: the image file.
        reduce_for: the scale the loader applies to this image next (< 1 shrinks); a JPEG may then be
            decoded directly at 1/2, 1/4 or 1/8 of its size, never smaller than the scaled size.

    Returns:
        image: (H, W, 3) uint8 RGB, oriented as displayed.
        reduction: 1, 2, 4 or 8: the stored image was decoded at 1/reduction of its size, so pixel
            coordinates of the full-size image must be divided by it.

    Raises:
        ImageDecodeError: naming the file, when it cannot be decoded completely.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            stored_width = image.width
            target = _reduction_for(image.size, reduce_for)
            if target is not None and image.format == "JPEG":
                image.draft(image.mode, target)
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            image.load()
            reduction = max(1, round(stored_width / image.width))
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            return to_rgb(image), reduction
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"{path}: cannot decode image ({error})") from error


def _tail_is_complete(path: Path, image_format: str | None) -> bool:
    """Cheap truncation test for JPEG and PNG: their last bytes are a fixed end marker.

    A file cut short (interrupted copy or download) lacks the marker. Some writers append bytes after
    it, so a missing marker only means "decode fully to be sure", never "broken".
    """
    if image_format not in ("JPEG", "PNG"):
        return True
    marker = b"\xff\xd9" if image_format == "JPEG" else b"IEND"
    with path.open("rb") as file:
        file.seek(0, 2)
        file.seek(max(0, file.tell() - 64))
        return marker in file.read()


def inspect_image(path: str | Path, full: bool) -> ImageInfo:
    """Check that an image file is usable and return its header facts.

    Args:
        path: the image file.
        full: decode every pixel (finds any corruption; costs a full decode). Otherwise read the header
            and, for JPEG and PNG, check the end marker, decoding fully only when it is missing; that
            finds truncated files at the cost of one small read.

    Raises:
        ImageDecodeError: with a message that says what is wrong (no file name: the caller adds it).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageDecodeError("image file not found")
    if path.stat().st_size == 0:
        raise ImageDecodeError("image file is empty (0 bytes)")
    try:
        with Image.open(path) as image:
            image_format = image.format
            stored_width, stored_height = image.size
            orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
            if full or not _tail_is_complete(path, image_format):
                image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"not a readable image, truncated or corrupt ({error})") from error
    width, height = stored_width, stored_height
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(width, height, stored_width, stored_height, orientation, image_format)
