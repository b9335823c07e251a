"""predict.py on a video (one JSON line per frame equal to Detector.predict on that frame, an annotated
video of the same frames) and the min_score / only_classes / ignore_classes options."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest

from frcnn import Detector
from frcnn.data.shapes import render_image
from tests.api.checkpoint import tiny_checkpoint
from tests.app.helpers import compose_config, script

FRAMES, WIDTH, HEIGHT = 10, 128, 96


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "tiny_shared"
    base.mkdir(exist_ok=True)
    return tiny_checkpoint(base)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """10 frames of moving shapes, MPEG-4 at 10 fps."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(FRAMES):
            image, _, _ = render_image(np.random.default_rng(i), WIDTH, HEIGHT, 3, 20, 0.5)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decoded_frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def run_predict(checkpoint, input_path, out, *overrides):
    cfg = compose_config("predict", out / "run", [f"ckpt_path={checkpoint}", f"input={input_path}",
                                                 f"output_dir={out / 'pred'}", *overrides])
    return script("predict").predict(cfg)


def test_video_gives_a_json_line_per_frame_and_an_annotated_video(checkpoint, clip, tmp_path):
    written = run_predict(checkpoint, clip, tmp_path, "draw_score_threshold=0.0")
    lines = [json.loads(line) for line in written["jsonl"].read_text().splitlines()]
    frames = decoded_frames(clip)
    assert written["frames"] == len(lines) == len(frames) == FRAMES
    detector = Detector.from_checkpoint(checkpoint, device="cpu", batch_size=1)
    for i, (line, frame) in enumerate(zip(lines, frames)):
        assert line["frame"] == i and line["time"] == pytest.approx(i / 10)
        assert {k: line[k] for k in ("image", "detections")} == detector.predict(frame).to_dict()
    annotated = decoded_frames(written["video"])
    with av.open(str(written["video"])) as container:
        assert Fraction(container.streams.video[0].average_rate) == 10
    assert len(annotated) == FRAMES and annotated[0].shape == frames[0].shape
    # every box drawn (threshold 0): the annotated frames differ from the input, far beyond codec noise
    assert all(np.abs(a.astype(int) - f).max() > 100 for a, f in zip(annotated, frames))


def test_class_and_score_filters_on_video_and_images(checkpoint, clip, tmp_path, shapes_val_folder):
    full = [json.loads(line) for line in run_predict(checkpoint, clip, tmp_path / "all", "draw=false")["jsonl"]
            .read_text().splitlines()]
    kept = [json.loads(line) for line in run_predict(
        checkpoint, clip, tmp_path / "some", "draw=false", "min_score=0.2", "only_classes=[circle,square]",
        "ignore_classes=[square]")["jsonl"].read_text().splitlines()]
    for all_line, line in zip(full, kept):
        want = [d for d in all_line["detections"] if d["score"] >= 0.2 and d["class_name"] == "circle"]
        assert line["detections"] == want
    images = run_predict(checkpoint, shapes_val_folder, tmp_path / "images", "draw=false")["results"]
    only = run_predict(checkpoint, shapes_val_folder, tmp_path / "only", "draw=false", "only_classes=triangle",
                       "min_score=0.1")["results"]
    assert only and only == [r for r in images if r["category_name"] == "triangle" and r["score"] >= 0.1]
    ignored = run_predict(checkpoint, shapes_val_folder, tmp_path / "ignored", "draw=false",
                          "ignore_classes=[triangle, 1]")["results"]
    assert ignored == [r for r in images if r["category_name"] == "square"]


def test_an_unknown_class_is_named(checkpoint, clip, tmp_path):
    with pytest.raises(ValueError, match="unknown class 'dog'"):
        run_predict(checkpoint, clip, tmp_path, "only_classes=[dog]")


@pytest.fixture(scope="module")
def shapes_val_folder(tmp_path_factory, checkpoint):
    from tests.api.checkpoint import shapes_data

    images = sorted((shapes_data(tmp_path_factory.getbasetemp() / "tiny_shared") / "shapes" / "JPEGImages").glob("val_*"))
    folder = tmp_path_factory.mktemp("val_images")
    for image in images[:4]:
        (folder / image.name).write_bytes(image.read_bytes())
    return folder


def test_the_writer_pads_odd_sides_by_an_edge_pixel(tmp_path):
    from frcnn.app.video import VideoWriter

    frame = np.zeros((95, 127, 3), np.uint8)
    frame[:, -1] = 200  # the last column, repeated into the padding
    writer = VideoWriter(tmp_path / "odd.mp4", Fraction(5))
    for _ in range(3):
        writer.write(frame)
    writer.close()
    (first, *_) = decoded_frames(tmp_path / "odd.mp4")
    assert first.shape == (96, 128, 3)
    assert np.abs(first[:95, 127].astype(int) - 200).mean() < 8 and np.abs(first[95, :120].astype(int)).mean() < 8
