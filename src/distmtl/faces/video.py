"""Video frames through PyAV: every frame or every N-th, with its index and time in seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from distmtl.errors import DistmtlError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def read_frames(path: str | Path, every: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
    """``(frame index, timestamp in seconds, HxWx3 uint8 RGB)`` for frames 0, every, 2*every, ...

    A missing file or one PyAV cannot open or decode is a one-line :class:`DistmtlError` naming it.
    """
    import av

    path = Path(path)
    if every < 1:
        raise DistmtlError(f"every: must be at least 1 (every N-th frame), got {every}")
    if not path.is_file():
        raise DistmtlError(f"{path}: video file not found")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DistmtlError(f"{path}: cannot open video: {' '.join(str(exc).split())}") from None
    with container:
        if not container.streams.video:
            raise DistmtlError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index % every:
                    continue
                if frame.pts is not None and frame.time_base is not None:
                    seconds = float(frame.pts * frame.time_base)
                else:
                    seconds = index / rate if rate else float("nan")
                yield index, seconds, frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:
            raise DistmtlError(f"{path}: cannot decode video: {' '.join(str(exc).split())}") from None


def write_video(path: str | Path, frames, fps: int = 10) -> Path:
    """Encode ``HxWx3`` uint8 RGB frames as an H.264 (or MPEG-4) file; used to compose test clips."""
    import av

    path = Path(path)
    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: h - h % 2, : w - w % 2]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
