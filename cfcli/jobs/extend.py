"""`cf extend`'s job: continue a clip (ours or any video PyAV decodes) past its last frame, planned before anything
loads (`cfcli.jobs`)."""

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.markup import escape

from cfcli.jobs.checks import check_posters, codec_note
from cfcli.jobs.clip_preset import extend_preset
from cfcli.jobs.files import write_poster
from cfcli.jobs.generate import from_json, progress_to
from cfcli.jobs.notices import cpu_notice, report_stale, show_plan
from cfcli.jobs.view import View, note, summary_fields

PATHS = ("clip", "out", "save_latents")


@dataclass
class ExtendJob:
    """Everything `cf extend` was asked, as plain data; `engine` as `GenerateJob.engine` (no preset, mode or steps
    given: the clip's own preset)."""

    clip: Path
    engine: dict = field(default_factory=dict)
    prompt: str | None = None
    frames: int | None = None
    seconds: float | None = None
    context_frames: int | None = None
    only_new: bool = False
    seed: int | None = None
    fps: int | None = None
    out: Path | None = None
    overwrite: bool = False
    codec: str | None = None
    crf: int = 18
    crf_given: bool = False
    save_latents: Path | None = None
    poster: bool = False

    def absolute(self) -> "ExtendJob":
        return replace(self, **{k: Path(v).expanduser().absolute() for k in PATHS if (v := getattr(self, k)) is not None})

    def to_json(self) -> dict:
        return {k: str(v) if k in PATHS and v is not None else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "ExtendJob":
        return cls(**{k: Path(v) if k in PATHS and v is not None else v
                      for k, v in from_json(cls, data).items()})


def run(job: ExtendJob, view: View, open_session, phases) -> int:
    """Extend the clip; the exit status (0, or 128 + the signal that stopped it)."""
    from cfcli.pipeline.limits import check_options

    check_options(job.frames, job.seconds, job.seed, job.fps, job.crf)
    engine = dict(job.engine)
    # The clip's own preset when nothing names one.
    engine["preset"] = extend_preset(job.clip, engine.get("preset"), engine.get("mode"), engine.get("steps"),
                                     lambda text: note(view, text))
    session = open_session(**engine)
    # Planned once, before the models load: the clip probed, its prompt, the context and the new frames.
    req = session.extend_request(job.clip, prompt=job.prompt, frames=job.frames, seconds=job.seconds, fps=job.fps,
                                 context_frames=job.context_frames, only_new=job.only_new, seed=job.seed,
                                 out=job.out, overwrite=job.overwrite, codec=job.codec, crf=job.crf,
                                 save_latents=job.save_latents)
    if job.poster:
        check_posters([(req.out, req.save_latents)], job.overwrite, inputs=(req.clip,))
    show_plan(view, session.plan_memory(req.plan.run_latent_frames))
    for line in (*req.plan.notes, codec_note(job.crf_given, req.codec)):
        if line:
            note(view, line)
    report_stale(view, [req.out])
    with session.reserve(req) as req:  # checked, locked, temp files made before any model loads
        if not view.quiet:  # once every check has passed
            cpu_notice(view, session.device, session.asked_device)
            view.line(f"[bold]{escape(req.preset.name)}[/] · seed [cyan]{req.seed}[/] · {escape(str(job.clip))} + "
                      f"{req.plan.new_frames} frames → {escape(str(req.out))}")
        phases.video()
        phases.mark("video_start")
        view.progress_start(req.plan.fps)
        try:
            summary = session.run(req, progress_to(view, phases, session.device))
        finally:
            view.progress_end()
    view.summary(summary_fields(summary), None)
    if summary.interrupted or view.stopped():
        return 128 + (view.stopped() or 2)
    if job.poster:
        write_poster(summary.path)
    return 0
