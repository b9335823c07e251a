"""The load of bench/serve.py: C client threads on loopback, each with one keep-alive connection,
sending N requests in all (bounded in count and time), and the comparison of every answer."""

from __future__ import annotations

import json
import statistics
import threading
import time
from http.client import HTTPConnection

import torch


def same_detections(got: dict, want: dict) -> bool:
    """Equal to float rounding (a batch sums in another order: 1e-5 px, so at most one step of the
    JSON's 0.01 px / 1e-5 score rounding); labels, names and order exactly."""
    if got["image"] != want["image"] or len(got["detections"]) != len(want["detections"]):
        return False
    if [(d["label"], d["class_name"]) for d in got["detections"]] != [(d["label"], d["class_name"]) for d in want["detections"]]:
        return False
    if not want["detections"]:
        return True
    boxes = torch.tensor([d["box"] for d in got["detections"]]) - torch.tensor([d["box"] for d in want["detections"]])
    scores = torch.tensor([d["score"] for d in got["detections"]]) - torch.tensor([d["score"] for d in want["detections"]])
    return bool(boxes.abs().max() <= 0.0101 and scores.abs().max() <= 1.01e-5)


def run_load(port: int, images: list[bytes], expected: list[dict], requests: int, clients: int,
             deadline_s: float) -> dict:
    """-> {"latencies_ms": [...], "wall_s", "failures": [...], "batch_sizes": [...]}."""
    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    batch_sizes: list[int] = []
    failures: list[str] = []
    stop_at = time.monotonic() + deadline_s

    def client() -> None:
        connection = HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while time.monotonic() < stop_at:
                with lock:
                    i = next_index[0]
                    if i >= requests:
                        return
                    next_index[0] += 1
                image = i % len(images)
                start = time.perf_counter()
                connection.request("POST", "/api/predict", body=images[image], headers={"Content-Type": "image/jpeg"})
                response = connection.getresponse()
                body = response.read()
                elapsed = (time.perf_counter() - start) * 1000.0
                answer = json.loads(body)
                with lock:
                    latencies.append(elapsed)
                    if response.status != 200:
                        failures.append(f"request {i}: HTTP {response.status} {body[:200]!r}")
                    elif not same_detections(answer, expected[image]):
                        failures.append(f"request {i}: detections differ from Detector.predict")
                    else:
                        batch_sizes.append(answer["batch_size"])
        finally:
            connection.close()

    threads = [threading.Thread(target=client, name=f"client-{c}") for c in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if len(latencies) < requests:
        failures.append(f"only {len(latencies)} of {requests} requests done within {deadline_s:.0f} s")
    return {"latencies_ms": latencies, "wall_s": wall, "failures": failures, "batch_sizes": batch_sizes}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def summary(result: dict) -> dict:
    latencies = result["latencies_ms"]
    return {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
            "images_s": len(latencies) / result["wall_s"],
            "mean_batch": statistics.fmean(result["batch_sizes"]) if result["batch_sizes"] else float("nan")}
