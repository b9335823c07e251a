"""The server on a real socket: concurrent requests batched and answered as Detector.predict
answers, size limits at the transport, src/serve.py itself (loopback only, weights_only)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection

import pytest
import torch

from frcnn import Detector
from frcnn.serving import ServeSettings, create_app
from frcnn.serving.upload import decode_upload
from tests.app.helpers import ROOT, script_env
from tests.serving.images import example_bytes, png_bytes
from tests.serving.live import LiveServer


def post_image(port: int, data: bytes, content_type: str = "image/png", path: str = "/api/predict"):
    connection = HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", path, body=data, headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def assert_same_detections(got: dict, want: dict) -> None:
    """Equal to float rounding: in a batch the kernels sum in another order (1e-5 px), which can move
    a number by one step of the JSON's rounding (0.01 px, 1e-5 score)."""
    assert got["image"] == want["image"]
    assert [(d["label"], d["class_name"]) for d in got["detections"]] == \
        [(d["label"], d["class_name"]) for d in want["detections"]]
    if want["detections"]:
        torch.testing.assert_close(torch.tensor([d["box"] for d in got["detections"]]),
                                   torch.tensor([d["box"] for d in want["detections"]]), rtol=0, atol=0.0101)
        torch.testing.assert_close(torch.tensor([d["score"] for d in got["detections"]]),
                                   torch.tensor([d["score"] for d in want["detections"]]), rtol=0, atol=1.01e-5)


@pytest.fixture(scope="module")
def live(detector):
    settings = ServeSettings(max_upload_bytes=1_000_000, max_pixels=4_000_000, max_batch_size=8, max_wait_ms=20.0)
    app = create_app(detector, settings)
    with LiveServer(app) as server:
        yield server


def test_concurrent_requests_are_batched_and_answered_as_detector_predict(live, detector):
    images = [png_bytes(120, 100, colour=(40 * i, 255 - 30 * i, 90)) for i in range(8)]  # one size: one batch key
    want = [detector.predict(decode_upload(data, 10**9)).to_dict() for data in images]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: (i, *post_image(live.port, images[i % 8])), range(48)))
    for i, status, body in answers:
        assert status == 200, body
        assert_same_detections(body, want[i % 8])
    assert max(body["batch_size"] for _, _, body in answers) > 1
    batching = json.loads(urllib.request.urlopen(f"{live.url}/api/info", timeout=30).read())["batching"]
    assert batching["requests"] >= 48 and batching["mean_batch_size"] > 1.0, batching


def test_a_declared_oversize_body_is_refused_before_it_is_sent(live, detector):
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 50000000\r\n\r\n")  # and not one byte of the body
        chunks = []  # the server closes the connection after the answer: read to the end (the
        while chunk := sock.recv(65536):  # headers and the body may come in separate segments)
            chunks.append(chunk)
        reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 413") and "the limit is 1000000 bytes" in reply
    data = example_bytes(2)
    status, body = post_image(live.port, data, "image/jpeg")
    assert status == 200 and body["detections"] == detector.predict(decode_upload(data, 10**9)).to_dict()["detections"]


def test_a_chunked_body_is_cut_off_at_the_limit(live):
    def chunks():
        for _ in range(100):  # 100 x 64 KB = 6.4 MB, never all sent
            yield b"\xff" * 65536

    connection = HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:
        connection.request("POST", "/api/predict", body=chunks(), headers={"Content-Type": "image/jpeg"},
                           encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413 and b"upload too large" in response.read()
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("the server closed the connection without a 413")
    finally:
        connection.close()
    assert post_image(live.port, png_bytes(64, 64))[0] == 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the listening TCP sockets on ``port`` (Linux /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as file:
            for line in file.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return found


def test_serve_py_binds_loopback_and_serves(checkpoint, detector, tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "serve.py"), f"ckpt_path={checkpoint}", f"port={port}",
                             "device=cpu", f"hydra.run.dir={tmp_path}", "log_level=warning"],
                            cwd=ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
                assert time.monotonic() < deadline, "serve.py did not start"
                time.sleep(0.3)
        assert health == {"status": "ok"}
        assert listening_addresses(port) == {"127.0.0.1"}  # loopback only: no other interface
        data = example_bytes(0)
        status, body = post_image(port, data, "image/jpeg")
        assert status == 200 and body["detections"] == detector.predict(decode_upload(data, 10**9)).to_dict()["detections"]
    finally:
        proc.terminate()
        proc.wait(30)


class Payload:
    """Unpickling this would run ``touch <marker>``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_load_with_weights_only(checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    real = torch.load(checkpoint, weights_only=True)
    torch.save({**real, "payload": Payload(str(marker))}, evil)
    with pytest.raises(ValueError, match="weights_only=True"):
        Detector.from_checkpoint(evil, device="cpu")
    assert not marker.exists()
