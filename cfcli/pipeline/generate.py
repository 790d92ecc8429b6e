"""One generation job: a planned video (prompt features encoded) through a loaded engine into its file.

`cfcli.session.Session` builds the `GenerateRequest`, encodes the prompts and holds the engine; the job streams the
video block by block into its reserved file (`cfcli.pipeline.files`), reports `Progress` through a callback and
returns a `Summary`.
"""

from collections.abc import Callable
from pathlib import Path

from cfcli.pipeline.engine import Engine
from cfcli.pipeline.files import (OutputRequest, SafeWriter, Summary, made_with, metadata, reserve_outputs,
                                  stream_to_file)
from cfcli.pipeline.media import load_image
from cfcli.pipeline.outputs import Outputs
from cfcli.pipeline.sinks import Progress


class GenerateRequest(OutputRequest):
    """One video from a prompt (or a schedule) and optionally a start picture (`plan`: a `VideoPlan` whose prompt
    features are encoded, `VideoPlan.with_features`)."""

    @property
    def image(self) -> Path | None:
        return self.plan.image


def run(req: GenerateRequest, engine: Engine, on_progress: Callable[[Progress], None] = lambda p: None) -> Summary:
    """Generate one video; its outputs are `req.outputs` when the caller reserved them, else reserved here first."""
    with req.outputs or reserve_outputs(req.out, req.save_latents, req.overwrite, req.codec, req.crf,
                                        req.preset) as outputs:
        return _run(req, outputs, engine, on_progress)


def _run(req: GenerateRequest, outputs: Outputs, engine: Engine, on_progress) -> Summary:
    plan, p = req.plan, req.preset
    image = load_image(plan.image, p.width, p.height) if plan.image is not None else None
    text = plan.text(engine.text_kv)
    ctx_latents = engine.encode_video(image[:, None]) if image is not None else None
    meta = metadata(plan.prompt, req.seed, p, plan.frames, plan.fps, plan.schedule, **made_with(req))
    writer = SafeWriter(outputs.video, plan.fps, p.width, p.height, req.codec, req.crf, meta)
    chunks = engine.generate(text, plan.generated, req.seed, ctx_latents, run_frames=plan.run_generated)
    return stream_to_file(chunks, writer, plan.frames, req, on_progress, write_context=True, latents=outputs.latents)
