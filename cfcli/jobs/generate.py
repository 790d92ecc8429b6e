"""`cf generate`'s job: text (or picture) to video, checked and planned before anything loads, each video streamed to
its file block by block. Runs in the `cf` process or in a resident `cf serve` (`cfcli.jobs`)."""

from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from rich.markup import escape

from cfcli.errors import CfError
from cfcli.jobs.checks import check_posters, check_prompt_sources, codec_note
from cfcli.jobs.files import PathSet, write_poster
from cfcli.jobs.notices import cpu_notice, report_stale, show_plan
from cfcli.jobs.view import View, note, summary_fields

PATHS = ("image", "out", "save_latents", "prompt_file", "prompt_schedule", "output_dir")


@dataclass
class GenerateJob:
    """Everything `cf generate` was asked, as plain data. `engine`: the session options given (preset, mode, steps,
    device, dtype, height, width, the speed flags, max_vram, low_vram); those left out take the session's defaults
    (a resident `cf serve`: its own). `prompt_at`: (time, prompt) pairs. `output_dir`: where default names go
    (None: the configured folder)."""

    prompt: str | None = None
    engine: dict = field(default_factory=dict)
    frames: int | None = None
    seconds: float | None = None
    fps: int | None = None
    seed: int | None = None
    count: int = 1
    image: Path | None = None
    out: Path | None = None
    overwrite: bool = False
    codec: str | None = None
    crf: int = 18
    crf_given: bool = False
    save_latents: Path | None = None
    noise_frames: int | None = None
    prompt_file: Path | None = None
    prompt_at: list = field(default_factory=list)
    prompt_schedule: Path | None = None
    poster: bool = False
    output_dir: Path | None = None

    def absolute(self) -> "GenerateJob":
        """Paths made absolute against this process's folder (a job runs elsewhere), default names' folder set."""
        from cfcli.config import output_dir

        given = {k: Path(v).expanduser().absolute() for k in PATHS if (v := getattr(self, k)) is not None}
        return replace(self, **given, output_dir=(given.get("output_dir") or output_dir().absolute()))

    def to_json(self) -> dict:
        return {k: str(v) if k in PATHS and v is not None else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "GenerateJob":
        return cls(**from_json(cls, data))


def from_json(cls, data: dict) -> dict:
    """A job dataclass's fields from JSON: unknown keys refused (a client of another version), paths made Paths."""
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise CfError(f"the job has options this server does not know: {', '.join(sorted(unknown))}",
                      "restart `cf serve` with this version of cf")
    return {k: Path(v) if k in PATHS and v is not None else v for k, v in data.items()}


def run(job: GenerateJob, view: View, open_session, phases) -> int:
    """Make the job's videos; the exit status (0, or 128 + the signal that stopped it). `open_session(**engine)` gives
    the `Session` to run on; `phases` (a `cfcli.pipeline.phases.Phases`) times the run."""
    from cfcli.pipeline import containers
    from cfcli.pipeline.limits import check_options

    check_options(job.frames, job.seconds, job.seed, job.fps, job.crf)
    check_prompt_sources(job.prompt, job.prompt_file)
    pairs = prompt_at_pairs(job.prompt_at, job.prompt_schedule, job.prompt_file)
    prompts = read_prompts(job.prompt, job.prompt_file)
    session = open_session(**job.engine)
    # Planned once, before the models load: a bad --image, an empty prompt, a switch that never shows refused here.
    firsts = [session.generate_request(text, frames=job.frames, seconds=job.seconds, fps=job.fps, seed=0,
                                       image=job.image, out=job.out, codec=job.codec, crf=job.crf, prompt_at=pairs,
                                       prompt_schedule=job.prompt_schedule, noise_frames=job.noise_frames,
                                       overwrite=job.overwrite) for text in prompts]
    first = firsts[0]
    for line in (first.plan.rounding(), codec_note(job.crf_given, first.codec)):
        if line:
            note(view, line)
    suffix = containers.get(first.codec).suffix
    runs = plan_runs([r.plan.prompt for r in firsts], job.seed, job.count, job.out, suffix, job.save_latents,
                     job.output_dir)
    requests = [replace(firsts[i // job.count], seed=s, out=path, save_latents=latents)
                for i, (_, s, path, latents) in enumerate(runs)]
    if job.poster:
        check_posters([(req.out, req.save_latents) for req in requests], job.overwrite)
    show_plan(view, session.plan_memory(first.plan.run_latent_frames))
    report_stale(view, [req.out for req in requests])
    with ExitStack() as reserved:
        # Every output is reserved (checked, locked, its temp file created) before any model loads.
        requests = [reserved.enter_context(session.reserve(req)) for req in requests]
        if not view.quiet:  # once every check has passed
            cpu_notice(view, session.device, session.asked_device)
        phases.mark("prepared")  # torch imported, options checked, outputs reserved
        encode_all(session, requests, phases)
        for req in requests:
            summary = run_one(session, req, view, phases)
            if summary.interrupted or view.stopped():
                return 128 + (view.stopped() or 2)
            if job.poster:
                write_poster(summary.path)
    return 0


def encode_all(session, requests: list, phases) -> None:
    """Every prompt of the run encoded in one umT5 load, gone before the DiT loads; the requests' plans take them."""
    with phases.span("text"):
        features = session.encode([t for req in requests for t in req.plan.prompts()])
    phases.facts["text_cache_hit"] = not session.encoder.loaded_encoder
    for i, req in enumerate(requests):
        requests[i] = replace(req, plan=req.plan.with_features(features))


def run_one(session, req, view: View, phases):
    """One video of the run, with its progress and summary."""
    p = req.preset
    session.engine  # noqa: B018 - loaded (and timed) before the video's clock starts
    if not view.quiet:
        view.line(f"[bold]{escape(p.name)}[/] · seed [cyan]{req.seed}[/] · {req.plan.frames} frames → "
                  f"{escape(str(req.out))}")
        show_switches(view, req.plan, p)
    phases.video()
    phases.mark("video_start")
    view.progress_start(req.plan.fps)
    try:
        summary = session.run(req, progress_to(view, phases, req.device))
    finally:
        view.progress_end()
    view.summary(summary_fields(summary), phases.report(summary.frames))
    return summary


def progress_to(view: View, phases, device):
    """The progress callback: the view hears each chunk written, `phases` notes when frames reach the encoder."""
    def on_progress(p) -> None:
        phases.frame_written()
        mem = None
        if device.type == "cuda":
            import torch

            mem = torch.cuda.max_memory_allocated(device) / 2**30
        view.progress(p.frames_done - p.frames_before, p.frames_total - p.frames_before, p.elapsed, mem)

    return on_progress


def plan_runs(prompts: list[str], seed: int | None, count: int, out: Path | None, suffix: str,
              save_latents: Path | None, folder: Path | None = None) -> list[tuple[str, int, Path, Path | None]]:
    """(prompt, seed, video path, latents path) of every video, `count` per prompt: a batch numbers
    `--out`/`--save-latents`, and default names (in `folder`, else the configured output folder) that slug alike get
    `-2`, `-3`, … so no output of the run overwrites another."""
    from cfcli.config import output_dir
    from cfcli.pipeline.outputs import slug
    from cfcli.session import new_seed

    if count < 1:
        raise CfError(f"--count must be at least 1, got {count}")
    jobs = [(text, seed + k if seed is not None else new_seed(None)) for text in prompts for k in range(count)]
    runs, taken = [], PathSet()
    next_n: dict[Path, int] = {}  # per name: every `-n` below it is taken already, so a search never starts over
    if out is None:
        folder = folder or output_dir()  # the config file read once, not per video
    for i, (text, s) in enumerate(jobs):
        path, latents = out or folder / f"{slug(text)}-{s}{suffix}", save_latents
        if len(jobs) > 1:
            path = path.with_name(f"{path.stem}-{i:03d}{path.suffix}") if out is not None else path
            latents = latents.with_name(f"{latents.stem}-{i:03d}{latents.suffix}") if latents is not None else None
        first, stem = path, path.stem
        if path in taken:
            n = next_n.get(first, 2)
            while (path := first.with_name(f"{stem}-{n}{first.suffix}")) in taken:
                n += 1
            next_n[first] = n + 1
        taken.add(path)
        if latents is not None:
            if latents in taken:
                raise CfError(f"--save-latents {latents} is also a video of this run",
                              "give the latents a file of their own, e.g. latents.safetensors")
            taken.add(latents)
        runs.append((text, s, path, latents))
    return runs


def read_prompts(prompt: str | None, prompt_file: Path | None) -> list[str]:
    if prompt_file is not None:
        from cfcli.pipeline.prompts import read_text_file

        text = read_text_file(prompt_file, "--prompt-file", "prompts, one per line")
        lines = [ln.strip() for ln in text.splitlines()]
        prompts = [ln for ln in lines if ln]
        if not prompts:
            raise CfError(f"{prompt_file} holds no prompts", "write one prompt per line")
        return prompts
    return [prompt]  # an empty one is refused by the plan


def prompt_at_pairs(prompt_at: list | None, schedule_file: Path | None,
                    prompt_file: Path | None) -> list[tuple[str, str]]:
    """The `--prompt-at TIME PROMPT` values as (time, prompt) pairs; a schedule does not go with a batch."""
    if (prompt_at or schedule_file is not None) and prompt_file is not None:
        raise CfError("--prompt-file cannot be combined with --prompt-at/--prompt-schedule",
                      "a schedule tells one video's story; make the batch and the story in separate runs")
    pairs = [value.split("\t", 1) if isinstance(value, str) else list(value) for value in prompt_at or ()]
    if any(len(pair) != 2 for pair in pairs):
        raise CfError("--prompt-at takes a time and a prompt", 'e.g. --prompt-at 12s "the fox jumps into the river"')
    return [(time, text) for time, text in pairs]


def show_switches(view: View, video, preset) -> None:
    """Where each switch lands: at a block start (or a later step of it, `@K`); with the rolling sampler the blocks in
    its window change too."""
    from cfcli.pipeline.samplers import sampler_kind

    first_frame_of = preset.geometry.first_frame_of
    in_flight = sampler_kind(preset).in_flight_frames(preset)
    fps = video.fps
    for entry, start in zip(video.schedule.entries[1:], video.starts[1:]):
        frame, touched = first_frame_of(start), first_frame_of(max(0, start - in_flight))
        rolling = f", blocks in flight from frame {touched} finish under it" if touched != frame else ""
        at, step = (f"@{entry.step}", f", from denoising step {entry.step} of its block") if entry.step else ("", "")
        view.line(f"[dim]prompt switch at {entry.seconds:g}s{at} → from frame {frame} ({frame / fps:.2f}s){step}"
                  f"{rolling}{switch_rounding(entry.seconds, fps, frame, preset)}:[/] {escape(entry.prompt)}")


def switch_rounding(seconds: float, fps: float, frame: int, preset) -> str:
    """Why a switch lands before or after the time asked: it applies to whole latent frames, at block starts."""
    asked = round(seconds * fps)
    if frame < asked:
        return (f", earlier than asked: frame {asked} is made by the latent frame that starts at frame {frame} "
                f"(each latent frame makes {preset.geometry.time_stride} video frames)")
    if frame > asked:
        size = f"{preset.block_frames} latent frames" if preset.block_frames > 1 else "1 latent frame"
        return f", later than asked: a switch starts at the next block ({size}, frame {frame})"
    return ""
