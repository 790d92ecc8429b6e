"""The plan of one video, worked out once before any model loads: frames, blocks, prompt switches, prompt features.

The CLI builds it (and renders what it says: rounding, where switches land), the job runs it; nothing downstream
works the frame count or the switch blocks out again. Features are added when the prompts are encoded
(`with_features`), so a command that encodes every prompt of a batch in one umT5 load hands them straight on.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import Tensor

from cfcli.errors import CfError
from cfcli.pipeline.media import check_image_input
from cfcli.pipeline.prompts import PromptSchedule, TextSchedule, blended_blocks
from cfcli.pipeline.samplers import sampler_kind
from cfcli.presets import Preset


@dataclass(frozen=True)
class VideoPlan:
    """One video: `frames` video frames (`asked`, rounded up to whole blocks), of which `context` latent frames are
    given (a start picture) and `generated` are made; `starts[i]` is the latent frame where the schedule's i-th prompt
    takes effect; `features` maps each prompt to its umT5 features once encoded."""

    preset: Preset
    asked: int
    frames: int
    context: int
    generated: int
    fps: float
    schedule: PromptSchedule
    starts: tuple[int, ...]
    image: Path | None = None  # the start picture (`context` is then 1)
    noise_frames: int | None = None  # made as the first frames of a run this long (`with_noise_frames`)
    features: dict[str, Tensor] = field(default_factory=dict, compare=False)

    @property
    def blocks(self) -> int:
        return self.generated // self.preset.block_frames

    @property
    def latent_frames(self) -> int:
        return self.context + self.generated

    @property
    def run_latent_frames(self) -> int:
        """Latent frames of the run that makes it (what its KV cache and memory plan are sized for)."""
        return self.context + (self.run_generated or self.generated)

    @property
    def run_generated(self) -> int | None:
        """New latent frames of the run whose first `generated` this video is (`Engine.generate`'s `run_frames`)."""
        if self.noise_frames is None:
            return None
        return frame_counts(self.preset, self.noise_frames, self.image is not None)[1]

    @property
    def prompt(self) -> str:
        return self.schedule.opening

    def prompts(self) -> list[str]:
        """The distinct prompts, each encoded once."""
        return self.schedule.prompts()

    def rounding(self) -> str | None:
        """What the CLI says when the length asked is not one the model makes."""
        if self.frames == self.asked:
            return None
        return f"{self.asked} frames is not a length the model makes; generating {self.frames}"

    def with_features(self, features: dict[str, Tensor]) -> "VideoPlan":
        missing = [p for p in self.prompts() if p not in features]
        if missing:
            raise ValueError(f"no features for {missing}")
        return replace(self, features={p: features[p] for p in self.prompts()})

    def text(self, text_kv) -> "Tensor | TextSchedule":
        """The sampler's text: one prompt's cross-attention K/V, or by block for a schedule (a transition's blocks each
        with the K/V of their blended features). `text_kv` maps features to K/V (`Engine.text_kv`)."""
        kv = {p: text_kv(self.features[p]) for p in self.prompts()}
        if not self.schedule.has_switches:
            return kv[self.prompt]
        entries, steps = self.schedule.entries, self.schedule.steps
        blocks = blended_blocks(self.starts, [self.features[e.prompt] for e in entries], self.schedule.transitions,
                                self.preset.block_frames, steps)
        # without a step position the schedule is looked up once per block, as before step positions existed
        by_step = tuple(0 if i is None else steps[i] for _, _, i in blocks) if any(steps) else None
        return TextSchedule(tuple(s for s, _, _ in blocks),
                            tuple(text_kv(f) if i is None else kv[entries[i].prompt] for _, f, i in blocks), by_step)


def frame_counts(preset: Preset, video_frames: int, image: bool) -> tuple[int, int]:
    """(video frames, generated latent frames) for a request, rounded up to whole blocks of what the model makes."""
    if video_frames <= 0:
        raise CfError(f"--frames must be positive, got {video_frames}")
    g, bf, given = preset.geometry, preset.block_frames, 1 if image else 0
    generated = g.latent_frames_covering(video_frames) - given
    generated = max(bf, -(-generated // bf) * bf)
    return g.video_frames_for(generated + given), generated


def plan_video(preset: Preset, video_frames: int, fps: float | None = None, image: Path | None = None,
               prompt: str | None = None, schedule: PromptSchedule | None = None,
               image_checked: bool = False) -> VideoPlan:
    """The plan of one video from `prompt` (or a `schedule` of switches), from a start picture `image` or not; an empty
    prompt, a picture the preset cannot start from and a switch that would never show are refused here
    (`image_checked`: the caller already ran `check_image_input` on `image`, e.g. `cf live` when it was uploaded)."""
    if not image_checked:
        check_image_input(preset, image)
    if schedule is None:
        if prompt is None or not prompt.strip():
            raise CfError("the prompt is empty", 'describe the video, e.g. cf generate "a fox running"')
        schedule = PromptSchedule.build(prompt, [])
    fps = fps or preset.fps
    frames, generated = frame_counts(preset, video_frames, image is not None)
    kind = sampler_kind(preset)
    schedule.check_steps(len(preset.steps), kind.label, kind.steps_between)
    starts = schedule.block_starts(fps, frames, preset.block_frames, preset.geometry)
    return VideoPlan(preset, video_frames, frames, 0 if image is None else 1, generated, fps, schedule, starts, image)


def with_noise_frames(plan: VideoPlan, noise_frames: int | None) -> VideoPlan:
    """The video made as the first `plan.frames` frames of a run of `noise_frames` (`--noise-frames`): that run's
    noise, KV cache and sampling, so a live recording cut from a longer run is made again bit for bit."""
    if noise_frames is None:
        return plan
    g = plan.preset.geometry
    if noise_frames < plan.frames:
        raise CfError(f"--noise-frames {noise_frames} is shorter than the video ({plan.frames} frames)",
                      "give the length of the run the video was cut from, at least --frames")
    run = frame_counts(plan.preset, noise_frames, plan.image is not None)[1]
    if plan.context + run > g.max_latent_frames:
        raise CfError(f"--noise-frames {noise_frames} is longer than the model's position table",
                      f"the most is {g.max_video_frames} frames")
    return replace(plan, noise_frames=noise_frames)


def with_resolution(preset: Preset, height: int | None, width: int | None) -> Preset:
    """The preset at another resolution; both sides must be positive multiples of its size multiple (16 for Wan)."""
    step = preset.geometry.size_multiple if height is not None or width is not None else 1
    for name, value in (("--height", height), ("--width", width)):
        if value is not None and (value <= 0 or value % step):
            raise CfError(f"{name} must be a positive multiple of {step}, got {value}",
                          "e.g. --height 480 --width 832")
    return replace(preset, height=height or preset.height, width=width or preset.width)
