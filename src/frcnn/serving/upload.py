"""Uploaded bytes -> an image, or a clear refusal: ``UploadError(status, message)``.

Checked in this order, so that nothing expensive happens to bad input:
1. empty body -> 400;
2. the header (``Image.open`` reads only the header; formats limited to ``FORMATS``, so no exotic
   decoder such as EPS, which runs Ghostscript, is ever reached) -> 400 when it is no image;
3. width x height over the limit -> 413, BEFORE any pixel is decoded (decompression bombs);
4. decoding the pixels -> 400 when the data is truncated or corrupt.
Decoded as ``frcnn.data.read_image`` decodes files: EXIF orientation applied, any mode -> RGB.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from frcnn.data.decode import EXIF_ORIENTATION, to_rgb

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


class UploadError(Exception):
    """A request the server refuses: HTTP ``status`` and a ``message`` saying what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """Image file bytes -> (H, W, 3) uint8 RGB as displayed; ``UploadError`` otherwise."""
    if not data:
        raise UploadError(400, "empty body: no image bytes were sent")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # header only
    except Image.DecompressionBombError as error:  # PIL's own limit, far above ours
        raise UploadError(413, f"image too large: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UploadError(400, f"not an image, or not one of {', '.join(FORMATS)} ({len(data)} bytes received)") from error
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise UploadError(413, f"image too large: {width} x {height} = {width * height} pixels, the limit is "
                                   f"{max_pixels} (refused before decoding)")
        if width < 1 or height < 1:
            raise UploadError(400, f"image has no pixels ({width} x {height})")
        try:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            image.load()
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            return to_rgb(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise UploadError(400, f"truncated or corrupt {image.format} image ({error})") from error
