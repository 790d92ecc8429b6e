"""The live recording: every frame since start, a sink in the generation loop, saved as `cf generate` would write it.

The prompt schedule is known only when the session ends, and a streamed container's header is written with its
first frame, so the frames go to a hidden file beside the output and are remuxed (packets copied, not re-encoded)
into the final file with the metadata, then renamed into place.
"""

import json
import os
import time
from pathlib import Path

from cfcli.pipeline.generate import SafeWriter
from cfcli.pipeline.video import META_KEY


class Recording(SafeWriter):
    def __init__(self, out_dir: Path, name: str, fps: float, width: int, height: int, codec: str, crf: int):
        suffix = ".mkv" if codec == "ffv1" else ".mp4"
        self.final = unique(Path(out_dir) / f"{name}{suffix}")
        super().__init__(self.final.with_name(f".{self.final.stem}.partial{suffix}"), fps, width, height, codec,
                         crf)

    def finish(self, metadata: dict) -> Path:
        """Close, write the final file with `metadata`, remove the partial one; returns the final path."""
        self.close()
        tmp = self.final.with_name(f".{self.final.stem}.{os.getpid()}.tmp{self.final.suffix}")
        try:
            remux(self.path, tmp, metadata)
            os.replace(tmp, self.final)
        finally:
            tmp.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)
        return self.final


def unique(path: Path) -> Path:
    """`path`, or a time-stamped sibling when it exists (a live session never overwrites a recording)."""
    if not path.exists():
        return path
    return path.with_name(f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{time.perf_counter_ns() % 10**6}"
                          f"{path.suffix}")


def remux(src: Path, dst: Path, metadata: dict) -> None:
    """Copy the video packets of `src` into `dst` with cfcli's metadata tag."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), mode="w") as out:
        out.metadata[META_KEY] = json.dumps(metadata, ensure_ascii=False)
        source = inp.streams.video[0]
        target = out.add_stream_from_template(source)
        for packet in inp.demux(source):
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.stream = target
            out.mux(packet)
