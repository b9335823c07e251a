"""Where the tests find the real data (raccoon, coco128, the ImageNet MobileNetV2 weights).

In order: ``FRCNN_SHARED_DIR``; ``../shared`` beside the checkout (the developers' and CI's copy);
``data/shared`` (what ``make data`` fetches from the public sources). The weights file is the
int8-derived one of ``../shared`` where it exists, else torchvision's float file that ``make data``
fetches (``FRCNN_MOBILENET_V2_WEIGHTS`` names another). Tests that read any of it carry
``@pytest.mark.shared_data``; without the data they are deselected with one line saying so
(tests/conftest.py).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [ROOT.parent / "shared", ROOT / "data" / "shared"]


def _shared_dir() -> Path:
    if os.environ.get("FRCNN_SHARED_DIR"):
        return Path(os.environ["FRCNN_SHARED_DIR"]).resolve()
    return next((c.resolve() for c in CANDIDATES if (c / "data" / "raccoon").is_dir()), CANDIDATES[0].resolve())


SHARED = _shared_dir()
RACCOON = SHARED / "data" / "raccoon"
COCO128 = SHARED / "data" / "coco128"
MOBILENET_V2 = Path(
    os.environ.get("FRCNN_MOBILENET_V2_WEIGHTS")
    or next(
        (p for p in (SHARED / "weights" / n for n in ("mobilenet_v2_imagenet_int8derived.pth", "mobilenet_v2-b0353104.pth"))
         if p.is_file()),
        SHARED / "weights" / "mobilenet_v2_imagenet_int8derived.pth",
    )
)
AVAILABLE = RACCOON.is_dir() and COCO128.is_dir() and MOBILENET_V2.is_file()
