"""The video writer's cost per frame on this machine's CPUs (what a fresh `cf generate`'s tail waits for when the
encoder falls behind): 81 smooth 480×832 frames through each step of `cfcli.pipeline.video.VideoWriter`, then the
writer whole, as `sink-writer` runs it. Run from the repository root: python3 scripts/encoder_bench.py"""

import os
import tempfile
import time
from pathlib import Path

import av
import torch

from cfcli.pipeline import containers
from cfcli.pipeline.video import VideoWriter

H, W, N = 480, 832, 81


def frames() -> list[torch.Tensor]:
    y, x = torch.linspace(0, 1, H).view(H, 1), torch.linspace(0, 1, W).view(1, W)
    return [(torch.stack([torch.sin(6 * x + 0.1 * i + 3 * y), torch.cos(5 * y - 0.07 * i + 2 * x),
                          torch.sin(4 * (x + y) + 0.05 * i)]) * 120 + 128).to(torch.uint8) for i in range(N)]


def per_frame(label: str, fn, items) -> list:
    t = time.perf_counter()
    out = [fn(a) for a in items]
    print(f"  {label:<14} {1e3 * (time.perf_counter() - t) / len(items):6.2f} ms/frame", flush=True)
    return out


def main() -> None:
    print(f"encoder on {os.cpu_count()} CPUs, {N} frames {H}x{W}, libx264 crf 18 (cfcli's options)")
    clip = frames()
    arrays = per_frame("to numpy", lambda f: f.permute(1, 2, 0).contiguous().numpy(), clip)
    rgb = per_frame("from_ndarray", lambda a: av.VideoFrame.from_ndarray(a, format="rgb24"), arrays)
    per_frame("to yuv420p", lambda f: f.reformat(format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG",
                                                 dst_color_trc=containers.BT709,
                                                 dst_color_primaries=containers.BT709), rgb)
    h264 = containers.get("h264").options
    default = h264["x264-params"]
    # x264's frame threads (1.5 a core) each hold a frame: the flush at close encodes that many at once.
    for variant in ("", ":sliced-threads=1", ":threads=4"):
        h264["x264-params"] = default + variant
        with tempfile.TemporaryDirectory() as tmp:
            writer = VideoWriter(Path(tmp) / "bench.mp4", 16, W, H)
            t0 = time.perf_counter()
            for f in clip:
                writer.write(f.unsqueeze(0))
            t1 = time.perf_counter()
            writer.close()
            t2 = time.perf_counter()
            size = (Path(tmp) / "bench.mp4").stat().st_size
        print(f"  VideoWriter{variant or ' (as shipped)':<20} {1e3 * (t1 - t0) / N:6.2f} ms/frame ({N / (t1 - t0):.0f} fps), "
              f"close {t2 - t1:.2f} s, {size / 1e6:.2f} MB", flush=True)
    h264["x264-params"] = default

if __name__ == "__main__":
    main()
