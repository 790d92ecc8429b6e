"""Reading a clip without holding it: a cheap probe, the last few frames by seeking, every frame as a stream.

`probe_clip` demuxes packets (no decoding) for the exact frame count and timestamps, and reads the first frame for the
display rotation. `read_tail(path, n)` seeks to the keyframe before the n-th frame from the end and decodes only from
there, keeping n frames. `iter_frames(path, batch)` yields the clip in order, a batch at a time. Frames come out
upright (the stream's display matrix, or an old-style `rotate` tag, applied) as uint8 [T, 3, H, W].

Variable frame rate: frames are taken in order and played at the stream's average rate (the timing between them is
not kept). Audio and other streams are not read.
"""

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cfcli.errors import CfError
from cfcli.pipeline.video import read_metadata

VFR_TOLERANCE = 0.02  # relative spread of frame durations still counted as a constant rate


@dataclass(frozen=True)
class ClipInfo:
    path: Path
    frames: int
    fps: float
    width: int  # as displayed (after rotation)
    height: int
    rotation: int  # degrees counter-clockwise the stored frames are turned to display them
    has_audio: bool
    variable_rate: bool
    metadata: dict = field(default_factory=dict)
    pts: tuple[int, ...] = field(default=(), repr=False, compare=False)  # every frame's time, in order (`read_tail`)

    def notes(self) -> list[str]:
        """What the user should know about how this clip is read."""
        out = []
        if self.rotation:
            out.append(f"the clip is stored rotated by {self.rotation}°; it is read upright")
        if self.variable_rate:
            out.append(f"the clip has a variable frame rate; its frames are taken in order at its average "
                       f"{self.fps:.3g} fps")
        if self.has_audio:
            out.append("the clip has audio; it is not carried into the output")
        return out


def _open(path: Path):
    import av

    path = Path(path)
    if not path.is_file():
        raise CfError(f"clip not found: {path}", "check the path of the video to extend")
    try:
        container = av.open(str(path))
    except Exception as exc:  # noqa: BLE001 - PyAV: not a media file, unreadable, ...
        raise CfError(f"cannot read {path} as a video: {exc}".splitlines()[0],
                      "give a video file PyAV can decode (mp4, mkv, mov, webm)") from exc
    if not container.streams.video:
        container.close()
        raise CfError(f"{path} has no video stream", "give a video file with at least one frame")
    return container


def probe_clip(path: Path) -> ClipInfo:
    """Frame count, rate, displayed size, rotation, audio, metadata: packets are demuxed, one frame decoded."""
    with _open(path) as container:
        try:
            return _probe(Path(path), container)
        except CfError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged file
            raise CfError(f"cannot read {path} as a video: {exc}".splitlines()[0],
                          "the file is damaged or not a video PyAV can decode") from exc


def _probe(path: Path, container) -> ClipInfo:
    stream = container.streams.video[0]
    pts = _frame_times(container, stream)
    first = None
    if pts:
        with _open(path) as again:  # a fresh demuxer: seeking back fails on some damaged files
            first = next(again.decode(again.streams.video[0]), None)
    if first is None:
        raise CfError(f"{path} has no frames", "give a video file with at least one frame")
    rotation = _rotation(first, stream)
    w, h = (first.height, first.width) if rotation % 180 else (first.width, first.height)
    fps = float(stream.average_rate or stream.guessed_rate or 16)
    return ClipInfo(path, len(pts), fps, w, h, rotation, bool(container.streams.audio), _variable(pts),
                    read_metadata(container), tuple(pts))


def _frame_times(container, stream) -> list[int]:
    """Every frame's presentation time, in order, from the packets (demuxed, not decoded)."""
    return sorted(p.pts for p in container.demux(stream) if p.size and p.pts is not None)


def _variable(pts: list[int]) -> bool:
    steps = np.diff(np.asarray(pts, dtype=np.float64))
    return len(steps) > 1 and float(steps.max() - steps.min()) > VFR_TOLERANCE * float(np.median(steps))


def _rotation(frame, stream) -> int:
    """Counter-clockwise degrees (multiple of 90) from the display matrix, else the legacy `rotate` tag (clockwise)."""
    degrees = frame.rotation or 0
    if not degrees:
        tag = stream.metadata.get("rotate")
        degrees = -int(tag) if tag and tag.lstrip("-").isdigit() else 0
    return int(round(degrees / 90)) * 90 % 360


def _upright(frame, rotation: int) -> np.ndarray:
    img = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(img, k=rotation // 90)) if rotation else img


def _stack(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def iter_frames(path: Path, batch: int = 16, rotation: int | None = None) -> Iterator[torch.Tensor]:
    """Every frame of the clip, upright, in batches of at most `batch` uint8 [b, 3, H, W] tensors."""
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        images: list[np.ndarray] = []
        for frame in container.decode(stream):
            if rotation is None:
                rotation = _rotation(frame, stream)
            images.append(_upright(frame, rotation))
            if len(images) == batch:
                yield _stack(images)
                images = []
        if images:
            yield _stack(images)


def read_tail(path: Path, n: int, info: ClipInfo | None = None) -> torch.Tensor:
    """The last `n` frames, upright, as uint8 [n, 3, H, W], decoding only from the keyframe before them."""
    info = info or probe_clip(path)
    n = min(n, info.frames)
    with _open(path) as container:
        stream = container.streams.video[0]
        start = (info.pts or _frame_times(container, stream))[-n]  # the probe's times: the file is not demuxed again
        container.seek(start, stream=stream, backward=True, any_frame=False)
        kept: deque = deque(maxlen=n)
        for frame in container.decode(stream):
            if frame.pts is None or frame.pts >= start:
                kept.append(_upright(frame, info.rotation))
    if len(kept) < n:  # the seek landed past the start (a broken index): decode from the top, still keeping n
        kept = deque((f for batch in iter_frames(path, rotation=info.rotation) for f in batch.permute(0, 2, 3, 1)
                      .numpy()), maxlen=n)
    return _stack(list(kept))
