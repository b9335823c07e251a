"""Serve a detector over HTTP: ``python src/serve.py ckpt_path=<ckpt> [host=127.0.0.1 port=5000 runtime=torch]``.

The REST API (``POST /api/predict``, ``GET /api/info``, ``GET /healthz``) and the web page at ``/``
(``frcnn.serving``, docs/serving.md), run by uvicorn. Binds 127.0.0.1 unless ``host=`` says otherwise;
the checkpoint is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

log = logging.getLogger(__name__)


def build_detector(cfg: DictConfig):
    """``cfg.ckpt_path`` run by ``cfg.runtime`` on ``cfg.device``, in batches of the batcher's size."""
    from frcnn.api import Detector

    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg.torch_threads)
    batch_size = cfg.batching.max_batch_size
    if cfg.runtime == "torch":
        return Detector.from_checkpoint(cfg.ckpt_path, device=cfg.get("device"), batch_size=batch_size,
                                        inference_rewrite=cfg.get("inference_rewrite", True))
    options = {"device": cfg.device} if cfg.get("device") else {}
    return Detector.from_exported(cfg.ckpt_path, runtime=cfg.runtime, batch_size=batch_size, **options)


def build_app(cfg: DictConfig):
    from frcnn.serving import ServeSettings, create_app

    settings = ServeSettings(
        max_upload_bytes=int(cfg.limits.max_upload_mb * 1024 * 1024),
        max_pixels=int(cfg.limits.max_pixels),
        max_batch_size=int(cfg.batching.max_batch_size),
        max_wait_ms=float(cfg.batching.max_wait_ms),
    )
    return create_app(build_detector(cfg), settings)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(cfg: DictConfig) -> None:
    import uvicorn

    app = build_app(cfg)
    if not is_loopback(cfg.host):
        log.warning("serving on %s: anyone who can reach this machine can use the model (no authentication)",
                    cfg.host)
    log.info("%s on http://%s:%d", app.state.detector.info["model"], cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=int(cfg.port), log_level=cfg.log_level,
                limit_concurrency=int(cfg.limits.max_concurrency), timeout_keep_alive=5)


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve.yaml")
def main(cfg: DictConfig) -> None:
    from frcnn.app.errors import report_errors

    report_errors(serve, cfg)  # a bad checkpoint, no GPU...: one block, no stack trace


if __name__ == "__main__":
    main()
