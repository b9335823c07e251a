"""The REST API in process (FastAPI's TestClient): answers equal to Detector.predict, every refusal
with its status and message, and the server still right after each."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image, ImageFile

from frcnn.serving.examples import EXAMPLES, FOLDER, example_pixels
from frcnn.serving.upload import decode_upload
from tests.serving.images import example_bytes, png_bomb, png_bytes


def expected(detector, data: bytes, **filters) -> dict:
    return detector.predict(decode_upload(data, 10**9), **filters).to_dict()


def answer(response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["inference_ms"] > 0 and body["batch_size"] >= 1
    return {key: body[key] for key in ("image", "detections")}


def test_multipart_and_raw_body_equal_detector_predict(client, detector):
    data = example_bytes(0)
    want = expected(detector, data)
    assert len(want["detections"]) > 10 and want["image"] == {"width": 320, "height": 240}
    assert answer(client.post("/api/predict", files={"image": ("a.jpg", data, "image/jpeg")})) == want
    assert answer(client.post("/api/predict", content=data, headers={"content-type": "image/jpeg"})) == want
    assert answer(client.post("/api/predict", content=data, headers={"content-type": "application/octet-stream"})) == want
    scores = [d["score"] for d in want["detections"]]
    assert scores == sorted(scores, reverse=True)


def test_query_filters_equal_detector_filters(client, detector):
    data = example_bytes(1)
    for params in ({"min_score": 0.2}, {"max_detections": 3}, {"classes": "circle,triangle"},
                   {"classes": "square", "min_score": 0.1, "max_detections": 5}):
        filters = {**params}
        if "classes" in filters:
            filters["classes"] = filters["classes"].split(",")
        got = answer(client.post("/api/predict", params=params, files={"image": ("b.jpg", data, "image/jpeg")}))
        assert got == expected(detector, data, **filters), params


def test_info_and_health(client, detector):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/api/info").json()
    assert info["class_names"] == detector.class_names == ["circle", "square", "triangle"]
    assert info["runtime"] == "torch" and info["device"] == "cpu" and info["checkpoint"] == "last.ckpt"
    assert info["model"] == "FasterRCNN (tiny)"
    assert set(info["colours"]) == set(info["class_names"])
    assert info["limits"] == {"max_upload_bytes": 2_000_000, "max_pixels": 4_000_000}
    assert info["batching"]["max_batch_size"] == 4
    assert info["examples"] == [f"/static/examples/{name}" for name in sorted(EXAMPLES)]


BAD_REQUESTS = {
    "empty body": ({"content": b"", "headers": {"content-type": "image/jpeg"}}, 400, "empty body"),
    "empty file": ({"files": {"image": ("x.jpg", b"", "image/jpeg")}}, 400, "empty body"),
    "not an image": ({"content": b"%PDF-1.4 hello", "headers": {"content-type": "image/png"}}, 400, "not an image"),
    "truncated JPEG": ({"content": example_bytes(0)[:9000], "headers": {"content-type": "image/jpeg"}}, 400,
                       "truncated or corrupt JPEG"),
    "wrong content type": ({"content": example_bytes(0), "headers": {"content-type": "text/plain"}}, 400,
                           "wrong content type 'text/plain'"),
    "form without the file": ({"files": {"photo": ("x.jpg", example_bytes(0), "image/jpeg")}}, 400,
                              "field 'image'"),
    "too big": ({"content": b"\xff" * 2_000_001, "headers": {"content-type": "image/jpeg"}}, 413,
                "upload too large: 2000001 bytes, the limit is 2000000"),
    "bomb": ({"content": png_bomb(8000, 8000), "headers": {"content-type": "image/png"}}, 413,
             "8000 x 8000 = 64000000 pixels, the limit is 4000000"),
    "bomb over PIL's own limit": ({"content": png_bomb(60_000, 60_000), "headers": {"content-type": "image/png"}},
                                  413, "image too large"),
    "unknown class": ({"content": example_bytes(0), "headers": {"content-type": "image/jpeg"},
                       "params": {"classes": "dog"}}, 400, "unknown class 'dog'"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_refusals_say_why_and_the_server_goes_on(client, detector, case):
    kwargs, status, message = BAD_REQUESTS[case]
    response = client.post("/api/predict", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    data = png_bytes(97, 83)
    assert answer(client.post("/api/predict", files={"image": ("ok.png", data, "image/png")})) == expected(detector, data)


def test_a_bomb_is_refused_before_any_pixel_is_decoded(client, monkeypatch):
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size))
    response = client.post("/api/predict", content=png_bomb(5000, 5000), headers={"content-type": "image/png"})
    assert response.status_code == 413 and decoded == []


def test_query_validation_and_wrong_method(client):
    assert client.get("/api/predict").status_code == 405
    assert client.put("/api/predict", content=b"x").status_code == 405
    assert client.post("/healthz").status_code == 405
    response = client.post("/api/predict?min_score=2", content=example_bytes(0), headers={"content-type": "image/jpeg"})
    assert response.status_code == 422 and "min_score" in response.text


def test_client_paths_are_never_opened(client):
    """A file name, a body or a form field holding a path of an existing image: none is opened."""
    existing = str(FOLDER / "shapes_1.jpg")
    response = client.post("/api/predict", files={"image": (existing, b"", "image/jpeg")})
    assert response.status_code == 400 and "empty body" in response.json()["detail"]
    response = client.post("/api/predict", content=existing.encode(), headers={"content-type": "image/jpeg"})
    assert response.status_code == 400 and "not an image" in response.json()["detail"]
    response = client.post("/api/predict", data={"image": existing})  # a text field, not a file
    assert response.status_code == 400 and "field 'image'" in response.json()["detail"]
    for path in ("/static/../../../../conf/serve.yaml", "/static/%2e%2e/app.py", "/static//etc/passwd"):
        assert client.get(path).status_code == 404, path


def test_the_page_and_its_assets_come_from_the_app(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]  # a CDN asset would be blocked
    assert page.headers["x-content-type-options"] == "nosniff"
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert links and all(link.startswith("/static/") or link == "#" for link in links), links
    for link in links:
        if link != "#":
            assert client.get(link).status_code == 200, link
    for asset in ("/static/app.js", "/static/style.css"):
        assert not re.search(r"https?://", client.get(asset).text), asset
    for url in client.get("/api/info").json()["examples"]:
        assert Image.open(io.BytesIO(client.get(url).content)).format == "JPEG"


def test_example_images_are_the_generated_ones():
    for name, args in EXAMPLES.items():
        fresh = io.BytesIO()
        Image.fromarray(example_pixels(*args)).save(fresh, format="JPEG", quality=92)
        stored = np.asarray(Image.open(FOLDER / name), dtype=np.float32)
        assert np.abs(stored - np.asarray(Image.open(fresh), dtype=np.float32)).mean() < 0.5, name
