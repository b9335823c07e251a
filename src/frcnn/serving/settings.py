"""The server's limits and batching settings (``conf/serve.yaml`` fills them in)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ServeSettings:
    """Args:
        max_upload_bytes: a request body over this is refused with 413 before it is read to the end.
        max_pixels: an image whose header says more pixels (width x height) is refused with 413
            before its pixels are decoded (decompression bombs: a few KB that decode to gigabytes).
        max_batch_size: concurrent requests run through the model together, at most this many
            (1: no batching, each request runs alone).
        max_wait_ms: how long the first request of a batch waits for others to join it.
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_batch_size: int = 8
    max_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_pixels < 1 or self.max_batch_size < 1 or self.max_wait_ms < 0:
            raise ValueError(f"invalid server settings: {self}")

    def as_dict(self) -> dict:
        return asdict(self)
