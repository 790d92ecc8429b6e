"""Prompt switching: the schedule's parsing and rules, which prompt each sampler call sees, and runs through the CLI.

Guarantees tested on the tiny presets (same seed): with the causal sampler every block before the switch's block, and
every video frame decoded from it, is bit-identical to a run without the switch, and later blocks differ; with the
rolling sampler the blocks finalised before the first window that uses the new prompt are identical and later ones
differ. A switch to the same prompt changes nothing (the random stream does not depend on the text).
"""

import pytest
import torch
from safetensors.torch import load_file

from cfcli.errors import CfError
from cfcli.models.build import model_configs
from cfcli.models.rolling_cache import RollingKVCache
from cfcli.pipeline.prompts import PromptSchedule, Switch, TextSchedule, parse_time, read_schedule_file
from cfcli.pipeline.rolling import RollingSampler
from cfcli.pipeline.sampler import CausalSampler, StepPlan
from cfcli.pipeline.schedule import FlowSchedule
from cfcli.pipeline.video import read_video

from conftest import FIXTURES, PROMPT

WAN = model_configs({}).geometry  # the released models' strides

FRAMEWISE, CHUNKWISE, LONGVIDEO = (FIXTURES / f"tiny-{n}.yaml" for n in ("framewise", "chunkwise", "longvideo"))
JUMP = "the fox jumps into the river"
TAU = (1000.0, 937.5, 833.3333129882812, 625.0)


# --- parsing and validation -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("12", 12), ("12.5", 12.5), ("12s", 12), (".5s", 0.5), ("1:05", 65),
                                           ("1:02:03.5", 3723.5), (" 0 ", 0)])
def test_times(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text, message", [("soon", "not a time"), ("-1", "negative"), ("1:75", "not a time"),
                                           ("1.5:00", "not a time"), ("", "not a time"), ("inf", "not a time"),
                                           ("1:2:3:4", "not a time")])
def test_bad_times(text, message):
    with pytest.raises(CfError, match=message):
        parse_time(text)


def test_schedule_file_lines(tmp_path):
    f = tmp_path / "story.tsv"
    f.write_text("# the story\n\n0\ta fox in the snow\n  12.5\tthe fox jumps\tinto the river \n1:05 spaces work too\n")
    got = [(s.seconds, s.prompt) for s in read_schedule_file(f)]
    assert got == [(0, "a fox in the snow"), (12.5, "the fox jumps\tinto the river"), (65, "spaces work too")]
    f.write_text("0\ta fox\nlater\tit jumps\n")
    with pytest.raises(CfError, match="line 2 of story.tsv"):
        read_schedule_file(f)


def test_build_sorts_and_adds_the_opening_prompt():
    s = PromptSchedule.build("a fox", [Switch(2, "b"), Switch(1, "c")])
    assert s.as_metadata() == [[0.0, "a fox"], [1, "c"], [2, "b"]] and s.opening == "a fox"
    assert PromptSchedule.build(None, [Switch(0, "a fox"), Switch(1, "b")]).opening == "a fox"
    assert PromptSchedule.build("a fox", [Switch(0, "a fox"), Switch(1, "a fox")]).prompts() == ["a fox"]
    with pytest.raises(CfError, match="two opening prompts"):
        PromptSchedule.build("a fox", [Switch(0, "a cat")])
    with pytest.raises(CfError, match="no prompt for the start"):
        PromptSchedule.build(None, [Switch(1, "b")])


def test_a_switch_takes_effect_at_the_next_block_start():
    def starts(seconds, block_frames, frames=33, fps=16):
        return PromptSchedule.build("a", [Switch(seconds, "b")]).block_starts(fps, frames, block_frames, WAN)[1]

    # 1 s at 16 fps = frame 16, made by latent (16 + 3) // 4 = 4 (frames 13…16)
    assert starts(1.0, 1) == 4 and starts(1.0, 3) == 6
    assert starts(0.75, 1) == 3 and starts(0.75, 3) == 3  # frame 12 → latent 3, a chunk start
    assert starts(0.78, 1) == 3  # frame 12.48 rounds to 12
    assert starts(0.1, 1) == 1  # frame 2 → latent 1
    with pytest.raises(CfError, match="past the end"):
        starts(2.0625, 1)  # frame 33 of a 33-frame video
    assert starts(2.0, 1) == 8
    assert starts(1.5, 3) == 6  # frame 24 → latent 6, the last chunk's start
    with pytest.raises(CfError, match="last block"):
        starts(1.6, 3)  # frame 26 → latent 7, inside the last chunk (6–8): no later block to switch at
    with pytest.raises(CfError, match="same block"):
        PromptSchedule.build("a", [Switch(1, "b"), Switch(1.03, "c")]).block_starts(16, 33, 1, WAN)  # frames 16, 16.48


def test_text_schedule_lookup():
    kvs = tuple(torch.full((1,), float(i)) for i in range(3))
    text = TextSchedule((0, 3, 7), kvs)
    assert [int(text.at(f)) for f in range(9)] == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        TextSchedule((1, 3), kvs[:2])


# --- which prompt each sampler call sees ----------------------------------------------------------------------------

class TextRecorder:
    """Stand-in DiT: records the start frame, whether it is a clean pass (all t = 0) and the prompt of each call."""

    def __init__(self):
        self.calls: list[tuple[int, bool, int]] = []

    def __call__(self, x, t, text_kv, cache, start_frame, refresh=False):
        self.calls.append((start_frame, bool((t == 0).all()), int(text_kv)))
        return torch.zeros_like(x)


def prompts_kv(n):
    return tuple(torch.tensor(i) for i in range(n))


@pytest.mark.parametrize("block_frames", [1, 3])
def test_causal_sampler_gives_each_block_its_own_prompt(block_frames):
    dit = TextRecorder()
    sampler = CausalSampler(dit, FlowSchedule(5.0), StepPlan(TAU), block_frames, cache=None)
    text = TextSchedule((0, 3, 6), prompts_kv(3))
    sampler.prime(torch.zeros(1, block_frames, 1, 1, 1), text)
    list(sampler.stream(torch.zeros(1, 9, 1, 1, 1), text, torch.Generator().manual_seed(0)))
    for start, clean, prompt in dit.calls:
        assert prompt == text.at(start).item(), (start, clean)  # steps and clean pass alike
    assert {p for _, _, p in dit.calls} == {0, 1, 2}


def test_rolling_sampler_uses_the_newest_block_prompt():
    dit = TextRecorder()
    cache = RollingKVCache(1, 1, 1, 1, 2, anchor_frames=3, attn_frames=21,
                           rope=lambda s, f: torch.stack([torch.ones(f, 1, 1), torch.zeros(f, 1, 1)]))
    sampler = RollingSampler(dit, FlowSchedule(5.0), StepPlan(TAU), 3, cache)
    text = TextSchedule((0, 15), prompts_kv(2))  # switch at block 5
    outs = list(sampler.stream(torch.zeros(1, 24, 1, 1, 1), text, torch.Generator().manual_seed(0)))
    assert len(outs) == 8
    main = [(s, p) for s, clean, p in dit.calls if not clean]
    # window w holds blocks max(0, w−3)…min(7, w): its prompt is the one at its newest block
    assert [p for _, p in main] == [int(min(7, w) >= 5) for w in range(11)]
    clean = [(s, p) for s, c, p in dit.calls if c]
    assert clean == [(3 * b, int(b + 3 >= 5)) for b in range(7)]  # block b's clean pass is in window b + 3


# --- through the CLI ------------------------------------------------------------------------------------------------

def gen(cf, tmp_path, name, preset, frames, *extra, prompt=PROMPT):
    out, lat = tmp_path / f"{name}.mkv", tmp_path / f"{name}.safetensors"
    args = [] if prompt is None else [prompt]
    r = cf("generate", *args, "--preset", preset, "--seed", 5, "--frames", frames, "--device", "cpu", "--dtype",
           "float32", "--codec", "ffv1", "--out", out, "--save-latents", lat, *extra)
    assert r.exit_code == 0, r.output
    return load_file(str(lat))["latents"], read_video(out)


def differ_per_block(latents_a, latents_b, first, block_frames):
    return all(not torch.equal(latents_a[i:i + block_frames], latents_b[i:i + block_frames])
               for i in range(first, latents_a.shape[0], block_frames))


def test_framewise_switch_keeps_earlier_frames_and_changes_later_ones(cf, tmp_path):
    base, base_clip = gen(cf, tmp_path, "base", FRAMEWISE, 33)
    lat, clip = gen(cf, tmp_path, "switch", FRAMEWISE, 33, "--prompt-at", "1s", JUMP)
    # 1 s → frame 16 → latent 4 (frames 13…16): latents 0–3 and frames 0–12 are the run without the switch
    assert torch.equal(lat[:4], base[:4]) and differ_per_block(lat, base, 4, 1)
    assert torch.equal(clip.frames[:13], base_clip.frames[:13])
    assert not torch.equal(clip.frames[13:17], base_clip.frames[13:17])
    assert clip.metadata["prompt"] == PROMPT
    assert clip.metadata["prompt_schedule"] == [[0.0, PROMPT], [1.0, JUMP]]
    assert "prompt_schedule" not in base_clip.metadata


def test_chunkwise_switch_waits_for_the_next_chunk(cf, tmp_path, chunkwise_ema):
    base, base_clip = gen(cf, tmp_path, "base", chunkwise_ema, 33)
    lat, clip = gen(cf, tmp_path, "switch", chunkwise_ema, 33, "--prompt-at", "0.5s", JUMP)
    # 0.5 s → frame 8 → latent 2, inside chunk 0–2: the switch starts with chunk 3–5 (frames 9…)
    assert torch.equal(lat[:3], base[:3]) and differ_per_block(lat, base, 3, 3)
    assert torch.equal(clip.frames[:9], base_clip.frames[:9])
    assert not torch.equal(clip.frames[9:], base_clip.frames[9:])


def test_rolling_switch_keeps_blocks_finalised_before_the_new_prompt(cf, tmp_path):
    base, _ = gen(cf, tmp_path, "base", LONGVIDEO, 93)  # 24 latent frames, 8 blocks
    lat, clip = gen(cf, tmp_path, "switch", LONGVIDEO, 93, "--prompt-at", "3.25", JUMP)
    # 3.25 s → frame 52 → latent 13 → block 5 (latents 15–17) enters in window 5, with blocks 2–4 in flight:
    # blocks 0–1 (finalised in windows 3–4) are unchanged, every later block differs
    assert torch.equal(lat[:6], base[:6]) and differ_per_block(lat, base, 6, 3)
    assert clip.metadata["prompt_schedule"] == [[0.0, PROMPT], [3.25, JUMP]]


def test_a_switch_to_the_same_prompt_changes_nothing(cf, tmp_path, chunkwise_ema):
    base, base_clip = gen(cf, tmp_path, "base", chunkwise_ema, 21)
    lat, clip = gen(cf, tmp_path, "same", chunkwise_ema, 21, "--prompt-at", "0.2", PROMPT)
    assert torch.equal(lat, base) and torch.equal(clip.frames, base_clip.frames)


def test_rolling_same_prompt_switch_changes_nothing():
    from cfcli.pipeline.engine import Engine
    from cfcli.presets import load_preset

    engine = Engine.load(load_preset(LONGVIDEO), "cpu", torch.float32)
    kv = engine.text_kv(torch.randn(1, 8, engine.dit.cfg.text_dim, generator=torch.Generator().manual_seed(0)))
    plain = [c.latents for c in engine.generate(kv, 18, seed=3, decode=False)]
    same = [c.latents for c in engine.generate(TextSchedule((0, 9), (kv, kv)), 18, seed=3, decode=False)]
    assert all(torch.equal(a, b) for a, b in zip(plain, same, strict=True))


def test_prompt_at_and_prompt_schedule_agree(cf, tmp_path):
    story = tmp_path / "story.tsv"
    story.write_text(f"# opening line replaces PROMPT\n0\t{PROMPT}\n\n1\t{JUMP}\n1.5\ta river at night\n")
    lat_a, clip_a = gen(cf, tmp_path, "at", FRAMEWISE, 33, "--prompt-at", "1s", JUMP, "--prompt-at", "0:01.5",
                        "a river at night")
    lat_f, clip_f = gen(cf, tmp_path, "file", FRAMEWISE, 33, "--prompt-schedule", story, prompt=None)
    assert torch.equal(lat_a, lat_f) and torch.equal(clip_a.frames, clip_f.frames)
    assert clip_a.metadata["prompt_schedule"] == clip_f.metadata["prompt_schedule"] == [
        [0.0, PROMPT], [1.0, JUMP], [1.5, "a river at night"]]
    assert clip_f.metadata["prompt"] == PROMPT


def test_image_with_a_switch(cf, tmp_path):
    pic = ["--image", FIXTURES / "framewise_4step_i2v.png"]
    base, base_clip = gen(cf, tmp_path, "base", FRAMEWISE, 9, *pic)
    lat, clip = gen(cf, tmp_path, "switch", FRAMEWISE, 9, *pic, "--prompt-at", "0.5", JUMP)
    # latent 0 is the picture; 0.5 s → frame 8 → latent 2 (frames 5…8)
    assert torch.equal(lat[:2], base[:2]) and not torch.equal(lat[2], base[2])
    assert torch.equal(clip.frames[:5], base_clip.frames[:5])
    assert clip.metadata["prompt_schedule"] == [[0.0, PROMPT], [0.5, JUMP]]


# --- bad input: one clear message, exit 1, no file --------------------------------------------------------------------

def _no_output(tmp_path):
    return not (tmp_path / "x.mkv").exists() and not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("args, message", [
    ([PROMPT, "--prompt-at", "5s", JUMP], "past the end of the video"),
    ([PROMPT, "--prompt-at", "5s", JUMP], "2.06s (33 frames at 16 fps)"),
    ([PROMPT, "--prompt-at", "soon", JUMP], "'soon' (--prompt-at soon) is not a time"),
    ([PROMPT, "--prompt-at", "-1", JUMP], "is negative"),
    ([PROMPT, "--prompt-at", "1s", "  "], "has no prompt"),
    ([PROMPT, "--prompt-at", "1s", JUMP, "--prompt-at", "1.0", "b"], "two prompts start at 1s"),
    ([PROMPT, "--prompt-at", "1s", JUMP, "--prompt-at", "1.03", "b"], "start at the same block"),
    ([PROMPT, "--prompt-at", "1s"], "takes a time and a prompt"),
    (["--prompt-at", "1s", JUMP], "no prompt for the start of the video"),
    ([PROMPT, "--prompt-schedule", "missing.tsv"], "cannot read --prompt-schedule missing.tsv"),
    ([PROMPT, "--frames", 4093], "the maximum is 4089 frames"),
])
def test_bad_schedule_input(cf, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    r = cf("generate", *args, "--preset", FRAMEWISE, "--device", "cpu", "--out", tmp_path / "x.mkv", "--codec",
           "ffv1", "--save-latents", tmp_path / "x.safetensors", *([] if "--frames" in args else ["--frames", 33]))
    assert r.exit_code == 1, r.output
    assert message in r.output and "Traceback" not in r.output
    assert _no_output(tmp_path)


def test_bad_schedule_files(cf, tmp_path):
    story = tmp_path / "story.tsv"
    cases = [("0\ta fox\n1\n", "(line 2 of story.tsv) has no prompt"),
             ("0\ta fox\nsoon\tit jumps\n", "line 2 of story.tsv"),
             ("# nothing\n\n", "holds no prompt switches"),
             (b"\xff\xfe\x00bad", "not UTF-8")]
    for text, message in cases:
        story.write_bytes(text) if isinstance(text, bytes) else story.write_text(text)
        r = cf("generate", PROMPT, "--prompt-schedule", story, "--preset", FRAMEWISE, "--device", "cpu", "--out",
               tmp_path / "x.mkv")
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, (message, r.output)
    r = cf("generate", PROMPT, "--prompt-schedule", tmp_path, "--preset", FRAMEWISE, "--out", tmp_path / "x.mkv")
    assert r.exit_code == 1 and "cannot read --prompt-schedule" in r.output
    assert _no_output(tmp_path)


def test_switch_in_the_last_chunk(cf, tmp_path):
    r = cf("generate", PROMPT, "--preset", CHUNKWISE, "--device", "cpu", "--frames", 33, "--prompt-at", "1.6", JUMP,
           "--out", tmp_path / "x.mkv")
    assert r.exit_code == 1 and "last block" in r.output and "starts at frame 21" in r.output
    assert _no_output(tmp_path)


def test_prompt_file_and_schedule_are_refused_together(cf, tmp_path):
    (tmp_path / "prompts.txt").write_text("a fox\na cat\n")
    r = cf("generate", "--prompt-file", tmp_path / "prompts.txt", "--prompt-at", "1s", JUMP, "--preset", FRAMEWISE,
           "--device", "cpu", "--out", tmp_path / "x.mkv")
    assert r.exit_code == 1 and "--prompt-file cannot be combined" in r.output and _no_output(tmp_path)


def test_unknown_sampler(cf, tmp_path):
    import yaml

    data = yaml.safe_load(FRAMEWISE.read_text())
    data["sampler"] = "sideways"
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump(data))
    r = cf("generate", PROMPT, "--preset", preset, "--prompt-at", "1s", JUMP, "--device", "cpu", "--out",
           tmp_path / "x.mkv")
    assert r.exit_code == 1 and "unknown sampler 'sideways'" in r.output and "causal" in r.output
    assert _no_output(tmp_path)


@pytest.mark.parametrize("args", [
    ["a fox \ud800"],
    ["a fox", "--prompt-at", "0.5s", "a kite \udfff"],
])
def test_text_a_clip_cannot_record_is_refused_before_anything_loads(cf, tmp_path, args):
    out = tmp_path / "v.mkv"
    r = cf("generate", "--preset", FIXTURES / "tiny-framewise.yaml", "--device", "cpu", "--frames", "9", "-o", out,
           *args)
    assert r.exit_code == 1 and "lone surrogate" in r.stderr and "Traceback" not in r.output
    assert not out.exists() and not list(tmp_path.iterdir())
