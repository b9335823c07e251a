"""The FastAPI app: the REST API, the web page and its assets.

    POST /api/predict   an image (multipart field ``image``, or the raw body with an image/* type)
                        -> {"image": {width, height}, "detections": [{box, label, class_name, score}],
                            "inference_ms", "batch_size", "queue_ms"}; query min_score, max_detections,
                            classes (comma-separated names)
    GET  /api/info      class names and colours, model, checkpoint, runtime, device, limits, batching stats
    GET  /healthz       {"status": "ok"}
    GET  /              the page (static/index.html); /static/* its assets and example images

Requests are refused with a status and a message that says why (``frcnn.serving.upload``); the app
never opens a path that a client sends: it reads bytes from the request and files from its own
``static`` folder only.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from frcnn.api.detector import Detector
from frcnn.api.draw import class_colour
from frcnn.api.filters import class_labels
from frcnn.api.inputs import to_image_tensor
from frcnn.serving.batcher import DynamicBatcher
from frcnn.serving.guards import BodySizeLimit, SecurityHeaders
from frcnn.serving.settings import ServeSettings
from frcnn.serving.upload import UploadError, decode_upload

STATIC_DIR = Path(__file__).resolve().parent / "static"
RAW_TYPES = ("image/", "application/octet-stream")


def create_app(detector: Detector, settings: ServeSettings | None = None) -> FastAPI:
    """The app serving ``detector``; its batcher starts and stops with the app (FastAPI lifespan)."""
    settings = settings or ServeSettings()
    batcher = DynamicBatcher(detector.predict_tensors, settings.max_batch_size, settings.max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="frcnn", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.detector, app.state.batcher, app.state.settings = detector, batcher, settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    examples = sorted(f"/static/examples/{p.name}" for p in (STATIC_DIR / "examples").glob("*.jpg"))

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/api/info")
    async def info() -> dict:
        return {**detector.info,
                "colours": {name: class_colour(k) for k, name in enumerate(detector.class_names, start=1)},
                "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels},
                "batching": {"max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms,
                             **batcher.stats.as_dict()},
                "examples": examples}

    @app.post("/api/predict")
    async def predict(
        request: Request,
        min_score: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
        max_detections: Annotated[int | None, Query(ge=0, le=10000)] = None,
        classes: Annotated[str | None, Query(description="comma-separated class names")] = None,
    ) -> dict:
        try:
            labels = class_labels([c for c in classes.split(",") if c], detector.class_names) if classes else None
        except ValueError as error:
            raise HTTPException(400, str(error)) from error
        data = await _image_bytes(request)
        try:
            image = await run_in_threadpool(_decode, data, settings.max_pixels)
        except UploadError as error:
            raise HTTPException(error.status, error.message) from error
        result, batch = await batcher.submit(image)
        return {**result.filter(min_score, max_detections, labels).to_dict(),
                "inference_ms": round(batch.inference_ms, 2), "queue_ms": round(batch.queue_ms, 2),
                "batch_size": batch.size}

    return app


def _decode(data: bytes, max_pixels: int):
    """Uploaded bytes -> (3, H, W) float32 in [0, 1] (off the event loop: decoding takes milliseconds)."""
    return to_image_tensor(decode_upload(data, max_pixels))


async def _image_bytes(request: Request) -> bytes:
    """The uploaded file's bytes: multipart field ``image``, or the whole body for an image/* type."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, "multipart upload without a file in the field 'image'")
            return await upload.read()  # its file name is ignored: nothing is opened by name
    if content_type == "" or content_type.startswith(RAW_TYPES):
        return await request.body()
    raise HTTPException(400, f"wrong content type {content_type!r}: send multipart/form-data with the file in "
                             "the field 'image', or the image bytes with Content-Type image/* (e.g. image/jpeg)")
