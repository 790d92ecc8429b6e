"""The live recording: every frame since start, a sink in the generation loop, saved as `cf generate` would write it.

The prompt schedule is known only when the session ends, so the frames go to a reserved temp file beside the output
(the same file sink as `cf generate`'s); at the end its metadata is rewritten (packets copied, not re-encoded) and the
file is renamed into place.
"""

from pathlib import Path

from cfcli.pipeline import containers
from cfcli.pipeline.files import SafeWriter
from cfcli.pipeline.outputs import free_name, reserve
from cfcli.pipeline.video import rewrite_metadata


class Recording(SafeWriter):
    def __init__(self, out_dir: Path, name: str, fps: float, width: int, height: int, codec: str, crf: int):
        target = reserve(free_name(Path(out_dir) / f"{name}{containers.get(codec).suffix}"), overwrite=False,
                         what="the recording", option="--out-dir")
        super().__init__(target, fps, width, height, codec, crf)
        self.final = target.final

    def save(self, metadata: dict) -> Path:
        """Close, give the file `metadata` (with the prompt schedule, known only now) and put it in place."""
        self.close()
        rewrite_metadata(self.target.temp, metadata)
        return self.target.commit()

