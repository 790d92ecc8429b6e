"""The live recording: every frame since start, a sink in the generation loop, saved as `cf generate` would write it.

The frames stream into a reserved temp file beside the output (the same file sink as `cf generate`'s: fragmented
MP4 / short-cluster Matroska, flushed as written, so a killed server leaves a file that plays). The prompt schedule
is known only when the session ends: then the metadata is rewritten (packets copied, not re-encoded) and the file is
renamed into place. A metadata rewrite that fails never costs the frames: the file is kept with the metadata it
opened with.

A server killed outright (SIGKILL, power loss) cannot rename its file; `recover_partials` finds such files at the next
start and puts them in place as visible `….partial.mp4` files.
"""

import logging
from pathlib import Path

from cfcli.pipeline import containers
from cfcli.pipeline.files import SafeWriter
from cfcli.pipeline.outputs import adopt_stale, free_name, reserve
from cfcli.pipeline.signals import finalising
from cfcli.pipeline.video import rewrite_metadata

log = logging.getLogger("cfcli.live")


class Recording(SafeWriter):
    def __init__(self, out_dir: Path, name: str, fps: float, width: int, height: int, codec: str, crf: int,
                 metadata: dict | None = None):
        target = reserve(free_name(Path(out_dir) / f"{name}{containers.get(codec).suffix}"), overwrite=False,
                         what="the recording", option="--out-dir")
        try:
            super().__init__(target, fps, width, height, codec, crf, metadata)
        except BaseException:
            target.discard()
            raise
        self.final = target.final

    def save(self, metadata: dict) -> tuple[Path, str | None]:
        """Close, give the file `metadata` (with the prompt schedule, known only now) and put it in place; (the path,
        a note when the metadata could not be written and the file keeps its opening metadata)."""
        self.close()
        note = None
        with finalising():
            try:
                rewrite_metadata(self.target.temp, metadata)
            except Exception as exc:  # noqa: BLE001 - the frames are kept whatever went wrong with the metadata
                log.warning("live recording: metadata not written: %s", exc)
                note = f"the recording was kept without its full metadata: {exc}".splitlines()[0]
            return self.target.commit(), note


def recover_partials(out_dir: Path) -> list[Path]:
    """Recordings left hidden by a server that was killed: each put in place as `<name>.partial<ext>`."""
    return adopt_stale(Path(out_dir))
