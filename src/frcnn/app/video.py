"""predict.py on a video: one JSON line per frame and the video with the boxes drawn (PyAV).

    <output_dir>/<stem>.jsonl       {"frame": i, "time": seconds, "image": {width, height},
                                     "detections": [{box, label, class_name, score}]}  per frame
    <output_dir>/<stem>_boxes.mp4   the frames with the detections scoring >= draw_score_threshold drawn
                                    (H.264 when PyAV has libx264, else MPEG-4 part 2), at the input's rate

Frames are decoded as RGB (H, W, 3) uint8 and go through the ``Detector`` in batches (all frames of a
video have one size, so they batch exactly). Audio and subtitles are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from frcnn.api.detector import Detector
from frcnn.api.draw import draw_result
from frcnn.api.inputs import to_image_tensor

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg")


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def read_frames(path: str | Path) -> Iterator[tuple[int, float, np.ndarray]]:
    """-> (frame index, time in seconds, (H, W, 3) uint8 RGB) for each frame of the first video stream."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise ValueError(f"{path}: cannot open the video ({error})") from error
    with container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            yield index, float(frame.time or 0.0), frame.to_ndarray(format="rgb24")


def frame_rate(path: str | Path) -> Fraction:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return Fraction(stream.average_rate or stream.guessed_rate or 25)


class VideoWriter:
    """Writes (H, W, 3) uint8 RGB frames; odd sides are padded by one edge pixel (4:2:0 needs even ones)."""

    def __init__(self, path: Path, rate: Fraction) -> None:
        import av

        self.path = path
        self.rate = rate
        self.container = av.open(str(path), "w")
        self.stream = None
        self.codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"

    def write(self, frame: np.ndarray) -> None:
        import av

        height, width = frame.shape[:2]
        frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        if self.stream is None:
            self.stream = self.container.add_stream(self.codec, rate=self.rate)
            self.stream.height, self.stream.width = frame.shape[:2]
            self.stream.pix_fmt = "yuv420p"
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():  # flush
                self.container.mux(packet)
        self.container.close()


def predict_video(detector: Detector, path: str | Path, output_dir: str | Path, batch_size: int = 8,
                  min_score: float | None = None, labels: Collection[int] | None = None, draw: bool = True,
                  draw_score_threshold: float = 0.5) -> dict:
    """Detections on every frame of ``path`` -> the JSON lines file and (``draw``) the annotated video."""
    path, output_dir = Path(path), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lines_path = output_dir / f"{path.stem}.jsonl"
    video_path = output_dir / f"{path.stem}_boxes.mp4"
    writer = VideoWriter(video_path, frame_rate(path)) if draw else None
    frames = 0
    with lines_path.open("w") as lines:
        batch: list[tuple[int, float, np.ndarray]] = []
        for item in read_frames(path):
            batch.append(item)
            if len(batch) == batch_size:
                frames += _run(detector, batch, lines, writer, min_score, labels, draw_score_threshold)
                batch = []
        if batch:
            frames += _run(detector, batch, lines, writer, min_score, labels, draw_score_threshold)
    if writer is not None:
        writer.close()
    return {"jsonl": lines_path, "video": video_path if draw else None, "frames": frames}


def _run(detector, batch, lines, writer, min_score, labels, draw_score_threshold) -> int:
    results = detector.predict_tensors([to_image_tensor(pixels) for _, _, pixels in batch])
    for (index, time, pixels), result in zip(batch, results):
        result = result.filter(min_score, None, labels)
        lines.write(json.dumps({"frame": index, "time": round(time, 4), **result.to_dict()}) + "\n")
        if writer is not None:
            writer.write(draw_result(pixels, result.filter(draw_score_threshold)))
    return len(batch)
