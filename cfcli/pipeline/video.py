"""Video files: a streaming writer (frames appended as they arrive) and a reader, both through PyAV.

Codecs (`containers.TABLE`): h264 / h265 / vp9 / av1 (yuv420p, BT.709 tagged, quality by CRF) and gif for sharing,
ffv1 (lossless RGB, `bgr0`) for exact round trips.
How a clip was made (prompt, seed, preset, …) is stored as JSON in the container's `comment` tag.
"""

import json
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from cfcli.pipeline import containers

META_KEY = "comment"
# Streaming: flush every packet to disk, and pick container layouts that play while still being written
# (fragmented MP4 every 0.25 s; Matroska clusters every 100 ms), so a viewer or a crash sees the frames so far.
CONTAINER_OPTIONS = {
    ".mp4": {"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "250000"},
    ".mov": {"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "250000"},
    ".mkv": {"cluster_time_limit": "100"},
    ".webm": {"cluster_time_limit": "100"},
}


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[-1, 1] pixels -> uint8 as the official writer does: 255·clamp(x·0.5 + 0.5, 0, 1), truncated."""
    return (pixels.float() * 0.5 + 0.5).clamp(0, 1).mul(255).to(torch.uint8)


class VideoWriter:
    """Append uint8 frames [n, 3, H, W] to a video file as they are produced; `close()` finalises the container."""

    def __init__(self, path: Path, fps: float, width: int, height: int, codec: str = "h264", crf: int = 18,
                 metadata: dict | None = None):
        import av

        self.codec = containers.get(codec)
        self.path = Path(path)
        self.fps = fps
        self.frames = 0
        options = {"flush_packets": "1"} | CONTAINER_OPTIONS.get(self.path.suffix.lower(), {})
        self._container = av.open(str(self.path), mode="w", options=options)
        if metadata:
            self._container.metadata[META_KEY] = json.dumps(metadata, ensure_ascii=False)
        rate = Fraction(fps).limit_denominator(1001)  # 29.97 -> 30000/1001
        self._stream = self._container.add_stream(containers.encoder(self.codec), rate=rate)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, self.codec.pix_fmt
        self._stream.options = self.codec.encoder_options(crf)
        if self.codec.tag and self.path.suffix.lower() in (".mp4", ".mov"):
            self._stream.codec_tag = self.codec.tag
        if self.codec.tagged_bt709:
            cc = self._stream.codec_context
            cc.color_primaries = cc.color_trc = cc.colorspace = containers.BT709
            cc.color_range = containers.LIMITED
        if self.codec.pix_fmt != "pal8":  # GIF's encoder takes its palette from the first frame
            self._container.start_encoding()  # the header now: a bad extension or codec fails here, not at frame 1

    def write(self, frames: torch.Tensor) -> None:
        for img in frames.permute(0, 2, 3, 1).contiguous().cpu().numpy():
            frame = self._frame(img)
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames += 1

    def _frame(self, img: np.ndarray):
        """One RGB picture as the frame the encoder takes: BT.709 limited-range 4:2:0, or a GIF palette picture."""
        import av

        if self.codec.pix_fmt == "pal8":
            return av.VideoFrame.from_ndarray(palette_image(img), format="pal8")
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        if not self.codec.tagged_bt709:
            return frame
        return frame.reformat(format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG",
                              dst_color_trc=containers.BT709, dst_color_primaries=containers.BT709)

    def close(self) -> None:
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            for packet in self._stream.encode():
                container.mux(packet)
        finally:
            container.close()  # the file handle goes even when flushing failed (a full disk)


def rewrite_metadata(path: Path, metadata: dict) -> None:
    """Give the video at `path` new metadata: its packets are copied unchanged into a new file that replaces it."""
    import av

    tmp = path.with_name(f"{path.stem}.meta{path.suffix}")
    try:
        with av.open(str(path)) as src, av.open(str(tmp), mode="w") as dst:
            dst.metadata[META_KEY] = json.dumps(metadata, ensure_ascii=False)
            stream = src.streams.video[0]
            copy = dst.add_stream_from_template(stream)
            for packet in src.demux(stream):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                packet.stream = copy
                dst.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def palette_image(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An RGB picture as (indices, 256 ARGB colours): its own adaptive palette (median cut), as GIF needs."""
    from PIL import Image

    pal = Image.fromarray(img).quantize(256, method=Image.Quantize.MEDIANCUT)
    rgb = np.array(pal.getpalette()[:768], dtype=np.uint8).reshape(-1, 3)
    argb = np.zeros((256, 4), dtype=np.uint8)
    argb[: len(rgb), 0], argb[: len(rgb), 1:] = 255, rgb
    return np.asarray(pal, dtype=np.uint8), argb


class NotAClip(ValueError):
    """The file opened but holds no video stream or no frame."""


@dataclass
class Clip:
    frames: torch.Tensor  # [T, 3, H, W] uint8
    fps: float
    metadata: dict


def read_metadata(container) -> dict:
    raw = container.metadata.get(META_KEY) or container.metadata.get(META_KEY.upper())
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def read_video(path: Path) -> Clip:
    """All frames of the first video stream as RGB uint8, its frame rate and cfcli metadata."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise NotAClip("no video stream")
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        fps = float(stream.average_rate or stream.guessed_rate or 16)
        meta = read_metadata(container)
    if not frames:
        raise NotAClip("no frames")
    return Clip(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous(), fps, meta)
