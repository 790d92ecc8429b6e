"""Prompt switches between denoising steps: `--prompt-at TIME@K` and a live prompt queued while a block is made.

Guarantees tested on the tiny presets (float32, CPU): a switch before step K of a block equals, bit for bit, a run
whose DiT calls get the two prompts' K/V by hand (steps 0…K−1 the old, steps K… and the clean pass the new); a live
prompt queued mid-block lands at that block's next step, says so in its receipts, and makes the latents `cf generate
--prompt-at T@K` makes from the recorded schedule; `@K` round-trips through the metadata and `cf info`'s remake; a K
the sampler cannot take is refused; the live loop's `StepSync` changes no latent.
"""

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from cfcli.cli.info import generate_argv
from cfcli.errors import CfError
from cfcli.live.schedule import LivePrompt, LiveSchedule
from cfcli.pipeline.engine import Engine
from cfcli.pipeline.plan import plan_video
from cfcli.pipeline.prompts import (CUT, PromptSchedule, Switch, TextSchedule, Transition, parse_prompt_at,
                                    read_schedule_file)
from cfcli.pipeline.sampler import CausalSampler, StepSync
from cfcli.pipeline.video import read_video
from cfcli.presets import load_preset

from conftest import FIXTURES, PROMPT, info, remake

FRAMEWISE, CHUNKWISE = FIXTURES / "tiny-framewise.yaml", FIXTURES / "tiny-chunkwise.yaml"
JUMP = "the fox jumps into the river"


# --- parsing and checks ---------------------------------------------------------------------------------------------

def test_step_positions_parse():
    assert parse_prompt_at([("1s@2", " b ")]) == [Switch(1, "b", "--prompt-at 1s@2", CUT, 2)]
    assert parse_prompt_at([("1:05@1", "b")])[0].position == (65, 1)


@pytest.mark.parametrize("text, message", [("1@0", "not a step position"), ("1@", "not a step position"),
                                           ("1@x", "not a step position"), ("1@-1", "not a step position"),
                                           ("1@²", "not a step position"), ("1~2@1", "both a transition and a step"),
                                           ("1@1~2", "both a transition and a step")])
def test_bad_step_positions(text, message):
    with pytest.raises(CfError, match=message):
        parse_prompt_at([(text, "b")])


def test_schedule_files_take_steps(tmp_path):
    f = tmp_path / "story.tsv"
    f.write_text("0\ta fox\n1@3\tthe fox jumps\n")
    assert [(s.seconds, s.step) for s in read_schedule_file(f)] == [(0, 0), (1, 3)]


def plan(preset, *pairs, frames=33):
    return plan_video(load_preset(preset), frames, schedule=PromptSchedule.build(PROMPT, parse_prompt_at(pairs)))


def test_a_step_outside_the_block_is_refused_with_the_valid_range():
    with pytest.raises(CfError) as e:
        plan(FRAMEWISE, ("1@4", JUMP))
    assert "not between two of the preset's 4 denoising steps" in e.value.message and "1 to 3" in e.value.hint
    with pytest.raises(CfError, match="block starts only"):
        plan(FIXTURES / "tiny-longvideo.yaml", ("1@2", JUMP), frames=45)
    with pytest.raises(CfError, match="first block"):
        plan(FRAMEWISE, ("0.01@2", JUMP))
    with pytest.raises(CfError, match="no prompt comes before it"):
        PromptSchedule.build(None, parse_prompt_at([("0@2", JUMP)]))


def test_steps_order_switches_within_a_block():
    p = plan(FRAMEWISE, ("1@3", "c"), ("1@1", "b"), ("1.3", "d"))
    assert [(e.prompt, e.step) for e in p.schedule.entries] == [(PROMPT, 0), ("b", 1), ("c", 3), ("d", 0)]
    assert p.starts == (0, 4, 4, 6)
    with pytest.raises(CfError, match="start at the same block"):
        plan(CHUNKWISE, ("1@2", "b"), ("1.1", "c"))  # 1.1 s rounds to the same chunk, before step 2 of it


def test_step_metadata_and_remake_arguments():
    s = PromptSchedule.build(PROMPT, parse_prompt_at([("1@2", JUMP), ("2~3", "c")]))
    meta = s.as_metadata()
    assert meta == [[0.0, PROMPT], [1, JUMP, {"step": 2}], [2, "c", {"blocks": 3, "kind": "linear"}]]
    argv, notes = generate_argv({"prompt": PROMPT, "prompt_schedule": meta}, 33)
    assert not notes and argv[-6:] == ["--prompt-at", "1@2", JUMP, "--prompt-at", "2~3", "c"]


# --- the samplers ---------------------------------------------------------------------------------------------------

def ema(preset):
    """The preset on its EMA weights: tiny-chunkwise's non-EMA generator has a zero-initialised head, so ignores the
    text."""
    return replace(load_preset(preset), use_ema=True)


@pytest.fixture(scope="module", params=[FRAMEWISE, CHUNKWISE], ids=["framewise", "chunkwise"])
def engine(request):
    return Engine.load(ema(request.param), "cpu", torch.float32)


def features(engine, seed):
    return torch.randn(1, 8, engine.dit.cfg.text_dim, generator=torch.Generator().manual_seed(seed))


class ByHand:
    """A DiT runner giving the calls of the block at latent `at` from denoising step `step` on (and its clean pass),
    and every later block's, the K/V `after`; `before` otherwise. Records which K/V each call got."""

    def __init__(self, dit, before, after, at: int, step: int):
        self.dit, self.before, self.after, self.at, self.step = dit, before, after, at, step
        self.calls: list[tuple[int, bool, str]] = []
        self._steps = 0

    def __call__(self, x, t, text_kv, cache, frame, refresh=False):
        if frame == self.at and not refresh:
            self._steps += 1
        new = frame > self.at or (frame == self.at and (refresh or self._steps > self.step))
        self.calls.append((frame, refresh, "new" if new else "old"))
        return self.dit(x, t, self.after if new else self.before, cache, frame, refresh=refresh)


def latents(chunks):
    return torch.cat([c.latents for c in chunks])


def remade_text(engine, meta, features: dict, fps):
    """The text schedule `cf info`'s remake command gives a 33-frame clip recorded with the schedule `meta`."""
    argv, _ = generate_argv({"prompt": "a", "prompt_schedule": meta}, 33)
    pairs = [tuple(argv[i + 1:i + 3]) for i, a in enumerate(argv) if a == "--prompt-at"]
    p = plan_video(engine.preset, 33, fps, schedule=PromptSchedule.build("a", parse_prompt_at(pairs)))
    return p.with_features(features).text(engine.text_kv)


@pytest.mark.parametrize("step", [1, 2, 3])
def test_a_switch_between_steps_equals_its_k_v_by_hand(engine, step):
    bf = engine.preset.block_frames
    fa, fb = features(engine, 0), features(engine, 1)
    at = bf  # the second block (not the last: its clean pass runs)
    seconds = engine.geometry.first_frame_of(at) / engine.preset.fps
    p = plan_video(engine.preset, 33, schedule=PromptSchedule.build("a", parse_prompt_at([(f"{seconds}@{step}", "b")])))
    p = p.with_features({"a": fa, "b": fb})
    text = p.text(engine.text_kv)
    assert text.by_step and p.starts == (0, at)
    got = latents(engine.generate(text, p.generated, seed=3, decode=False))
    ka, kb = engine.text_kv(fa), engine.text_kv(fb)
    hand = ByHand(engine.dit, ka, kb, at, step)
    engine.runner = hand
    try:
        want = latents(engine.generate(ka, p.generated, seed=3, decode=False))
    finally:
        engine.runner = engine.dit
    assert torch.equal(got, want)
    steps = len(engine.preset.steps)
    assert [k for f, r, k in hand.calls if f == at] == ["old"] * step + ["new"] * (steps - step + 1)
    cut = latents(engine.generate(TextSchedule((0, at), (ka, kb)), p.generated, seed=3, decode=False))
    assert torch.equal(got[:at], cut[:at]) and not torch.equal(got[at:], cut[at:])


def test_step_zero_positions_are_todays_schedule(engine):
    ka, kb = engine.text_kv(features(engine, 0)), engine.text_kv(features(engine, 1))
    bf = engine.preset.block_frames
    today = latents(engine.generate(TextSchedule((0, bf), (ka, kb)), 3 * bf, seed=4, decode=False))
    stepped = TextSchedule((0, bf), (ka, kb), (0, 0))
    assert stepped.by_step
    assert torch.equal(latents(engine.generate(stepped, 3 * bf, seed=4, decode=False)), today)


def test_text_schedule_step_lookup():
    kvs = tuple(torch.tensor(i) for i in range(4))
    text = TextSchedule((0, 3, 3, 6), kvs, (0, 1, 3, 0))
    assert [int(text.at(3, k)) for k in range(4)] == [0, 1, 1, 2]
    assert int(text.at(2, 3)) == 0 and int(text.at(4)) == 2 and int(text.at(6)) == 3
    with pytest.raises(ValueError):
        TextSchedule((0, 3, 3), kvs[:3], (0, 2, 1))


class CountingEvent:
    """A stand-in for `torch.cuda.Event`: says when it was recorded and waited for."""

    log: list = []

    def __init__(self):
        self.n = len([e for e in self.log if e[0] == "record"])

    def record(self):
        self.log.append(("record", self.n))

    def synchronize(self):
        self.log.append(("wait", self.n))


def test_step_sync_changes_no_latent_and_keeps_one_call_queued(engine, monkeypatch):
    bf = engine.preset.block_frames
    ka, kb = engine.text_kv(features(engine, 0)), engine.text_kv(features(engine, 1))
    text = TextSchedule((0, bf), (ka, kb), (0, 2))
    want = latents(engine.generate(text, 3 * bf, seed=5, decode=False))
    assert torch.equal(latents(engine.generate(text, 3 * bf, seed=5, decode=False, step_sync=True)), want)  # CPU

    CountingEvent.log = []
    made = []
    real = CausalSampler.__init__

    def with_sync(self, *a):
        real(self, *a[:5], StepSync(CountingEvent))
        made.append(self.sync)

    monkeypatch.setattr(CausalSampler, "__init__", with_sync)
    assert torch.equal(latents(engine.generate(text, 3 * bf, seed=5, decode=False)), want) and made
    log = CountingEvent.log
    records = [n for kind, n in log if kind == "record"]
    assert records == list(range(len(records))) and len(records) == 3 * 4 + 2  # every DiT call, clean passes too
    waits = [n for kind, n in log if kind == "wait"]
    assert waits == list(range(len(records) - 2))  # each call waited for once, in order, the last two never
    for i, (kind, n) in enumerate(log[:-1]):  # a lookup waits until only the last call recorded may be running
        if kind == "wait" and log[i + 1][0] == "record":
            assert n == sum(k == "record" for k, _ in log[:i]) - 2


# --- live -----------------------------------------------------------------------------------------------------------

class Weights:
    version, has_pending, awaiting_frames = 0, False, False

    def __init__(self, engine):
        self.text_kv = engine.text_kv

    def land(self, latent):
        pass


class TypedMidBlock:
    """A DiT runner that queues `prompt` on `live` during denoising call `call` (from 0) of the block at `at`: as the
    text thread does while the generation thread is inside a block."""

    def __init__(self, dit, live, prompt, at, call):
        self.dit, self.live, self.prompt, self.at, self.call, self.seen = dit, live, prompt, at, call, 0

    def __call__(self, x, t, text_kv, cache, frame, refresh=False):
        if frame == self.at and not refresh:
            if self.seen == self.call:
                self.live.submit(self.prompt)
            self.seen += 1
        return self.dit(x, t, text_kv, cache, frame, refresh=refresh)


@pytest.mark.parametrize("call", [0, 2])
def test_a_live_prompt_lands_between_steps_as_prompt_at(engine, call):
    """Queued during step `call` of the second block, the prompt lands before step `call` + 1 of that block; the
    recorded schedule, as `cf generate --prompt-at T@K` reads it, makes the same latents (the later blocks too)."""
    fa, fb = features(engine, 0), features(engine, 1)
    g, bf, fps = engine.geometry, engine.preset.block_frames, engine.preset.fps
    changes = []
    live = LiveSchedule(LivePrompt(0, "a", 0.0, kv=engine.text_kv(fa), features=fa), 0, g.first_frame_of,
                        on_change=changes.append, weights=Weights(engine), block_frames=bf)
    b = LivePrompt(1, "b", 0.0, kv=engine.text_kv(fb), features=fb)
    at, n = bf, 9
    engine.runner = TypedMidBlock(engine.dit, live, b, at, call)
    try:
        got = latents(engine.generate(live, n, seed=7, decode=False, step_sync=True))
    finally:
        engine.runner = engine.dit
    assert (b.state, b.latent, b.block, b.step, b.frame) == ("landed", at, 1, call + 1, g.first_frame_of(at))
    message = changes[-1].as_message(fps)
    assert (message["state"], message["step"], message["block"], message["latent"]) == ("landed", call + 1, 1, at)
    meta = live.as_metadata(fps)
    assert meta == [[0.0, "a"], [round(g.first_frame_of(at) / fps, 4), "b", {"step": call + 1}]]
    want = latents(engine.generate(remade_text(engine, meta, {"a": fa, "b": fb}, fps), n, seed=7, decode=False))
    assert torch.equal(got, want)
    at_start = latents(engine.generate(TextSchedule((0, at), (live.entries[0].kv, b.kv)), n, seed=7, decode=False))
    assert torch.equal(got[:at], at_start[:at]) and not torch.equal(got[at:at + bf], at_start[at:at + bf])
    frames = g.first_frame_of(at)
    assert live.frames_written(frames) == [] and live.frames_written(frames + 1) == [b]  # the block's first frame


def test_a_live_transition_or_a_prompt_after_the_last_step_waits_for_the_block_start():
    opening = LivePrompt(0, "a", 0.0, kv=torch.zeros(1), features=torch.zeros(1, 1, 2))
    live = LiveSchedule(opening, 0, lambda f: f, weights=None)
    live.at(0), live.at(1), live.at(1, 1)
    b = LivePrompt(1, "b", 0.0, kv=torch.ones(1), features=torch.ones(1, 1, 2), transition=Transition(0))
    c = LivePrompt(2, "c", 0.0, kv=torch.full((1,), 2.0), features=torch.ones(1, 1, 2), transition=Transition(2))
    live.submit(c)
    assert live.at(1, 2).item() == 0 and c.state == "queued"  # a transition starts at a block start
    live.submit(b)  # supersedes c; a cut lands at the next step
    assert live.at(1, 3).item() == 1 and (b.latent, b.step) == (1, 3) and c.state == "superseded"
    assert live.at(1, 3).item() == 1 and live.at(2).item() == 1


def test_a_cut_between_steps_ends_a_transition_under_way(engine):
    """B blends in over 3 blocks from block 1; C, a cut, lands before step 1 of that block: the block's step 0 used
    B's first blend, everything after it C. The recorded schedule makes the same K/V at every step offline."""
    fa, fb, fc = features(engine, 0), features(engine, 1), features(engine, 2)
    g, bf = engine.geometry, engine.preset.block_frames
    live = LiveSchedule(LivePrompt(0, "a", 0.0, kv=engine.text_kv(fa), features=fa), 0, g.first_frame_of,
                        weights=Weights(engine), block_frames=bf)
    live.at(0)
    live.submit(LivePrompt(1, "b", 0.0, kv=engine.text_kv(fb), features=fb, transition=Transition(3)))
    blend = live.at(bf)
    assert torch.equal(blend, engine.text_kv(torch.lerp(fa, fb, 1 / 4)))
    kc = engine.text_kv(fc)
    live.submit(LivePrompt(2, "c", 0.0, kv=kc, features=fc))
    assert live.at(bf, 1) is kc and live.at(bf, 2) is kc and live.at(2 * bf) is kc and live.at(3 * bf) is kc
    meta = live.as_metadata(16)
    assert meta[1][2] == {"blocks": 3, "kind": "linear"} and meta[2][2] == {"step": 1}
    text = remade_text(engine, meta, {"a": fa, "b": fb, "c": fc}, 16)
    assert torch.equal(text.at(bf), blend) and torch.equal(text.at(bf - 1, 3), engine.text_kv(fa))
    assert all(torch.equal(text.at(f, k), kc) for f in (bf, 2 * bf, 3 * bf) for k in (1, 2, 3) if (f, k) >= (bf, 1))


# --- live pacing inside a block (`CausalSampler.idle`, `LiveSchedule.reopen`) ------------------------------------------

def test_a_block_run_again_from_its_noise_is_that_block(engine):
    """`idle` answers True once (the third block): the sampler runs that block again from its noise, the random stream
    rewound; every latent is that of a run without it, and `idle` was asked once a block."""
    kv = engine.text_kv(features(engine, 0))
    answers, asked = iter([False, False, True] + [False] * 20), []
    got = latents(engine.generate(kv, 9, seed=7, decode=False, idle=lambda: asked.append(1) or next(answers)))
    assert torch.equal(got, latents(engine.generate(kv, 9, seed=7, decode=False)))
    assert len(asked) == 9 // engine.preset.block_frames


def test_a_transition_typed_during_a_blocks_first_step_lands_at_that_block(engine):
    """Queued during the first step of the third block, a transition would land at the fourth; the block's wait
    (`idle` → `reopen`) starts it again under the transition instead. The recorded schedule remakes it offline."""
    fa, fb = features(engine, 0), features(engine, 1)
    g, bf, fps = engine.geometry, engine.preset.block_frames, engine.preset.fps
    live = LiveSchedule(LivePrompt(0, "a", 0.0, kv=engine.text_kv(fa), features=fa), 0, g.first_frame_of,
                        weights=Weights(engine), block_frames=bf)
    b = LivePrompt(1, "b", 0.0, kv=engine.text_kv(fb), features=fb, transition=Transition(2))
    at, n = 2 * bf, 9
    engine.runner = TypedMidBlock(engine.dit, live, b, at, 0)
    try:
        got = latents(engine.generate(live, n, seed=7, decode=False, step_sync=True, idle=live.reopen))
    finally:
        engine.runner = engine.dit
    assert (b.state, b.latent, b.step) == ("landed", at, 0)
    meta = live.as_metadata(fps)
    assert meta[1][1:] == ["b", {"blocks": 2, "kind": "linear"}]
    want = latents(engine.generate(remade_text(engine, meta, {"a": fa, "b": fb}, fps), n, seed=7, decode=False))
    assert torch.equal(got, want)


class Flat:
    """Weights for schedule-only tests: K/V are the features' mean; `has_pending` a waiting LoRA change."""

    awaiting_frames = False

    def __init__(self):
        self.has_pending, self.version = False, 0

    def land(self, latent):
        self.version += self.has_pending
        self.has_pending = False

    def text_kv(self, features):
        return features.mean().reshape(1)


def test_only_changes_that_land_at_block_starts_reopen_a_block():
    def prompt(i, value, blocks=0):
        return LivePrompt(i, str(i), 0.0, kv=torch.full((1,), float(value)), features=torch.full((1, 1, 2), value),
                          transition=Transition(blocks))

    weights = Flat()
    live = LiveSchedule(prompt(0, 0.0), 0, lambda f: f, weights=weights)
    live.at(0), live.at(1)
    assert not live.reopen()  # nothing waits
    live.submit(prompt(1, 1.0))
    assert not live.reopen() and live.at(1, 1).item() == 1  # a cut lands at the block's next step
    live.at(2)
    c = prompt(2, 3.0, blocks=1)
    live.submit(c)
    assert live.reopen() and live.at(2).item() == 2 and c.latent == 2  # half way from 1 to 3, at block 2 itself
    live.submit(prompt(3, 5.0, blocks=1))
    assert not live.reopen()  # block 2 began with c's first step: the next change waits for block 3
    live.at(3), live.at(4)  # the second transition's blend, then its prompt: both at block starts
    weights.has_pending = True
    assert not live.reopen()
    live.at(5)  # which lands it
    weights.has_pending = True  # another, typed during block 5's first step
    assert not live.reopen()  # block 5 began with a weight change: this one waits for block 6
    live.at(6), live.at(7)  # it lands at 6; block 7 starts with nothing waiting
    weights.has_pending = True  # typed during block 7's first step
    assert live.reopen() and live.at(7).item() == 5 and not weights.has_pending  # lands at 7 itself


# --- through the CLI ------------------------------------------------------------------------------------------------

def gen(cf, tmp_path, preset, name, *extra):
    out, lat = tmp_path / f"{name}.mkv", tmp_path / f"{name}.safetensors"
    r = cf("generate", PROMPT, "--preset", preset, "--seed", 5, "--frames", 33, "--device", "cpu", "--dtype",
           "float32", "--codec", "ffv1", "--out", out, "--save-latents", lat, *extra)
    assert r.exit_code == 0, r.output
    return load_file(str(lat))["latents"], out


def test_prompt_at_a_step_is_recorded_and_remade_exactly(cf, tmp_path, chunkwise_ema):
    cut, _ = gen(cf, tmp_path, chunkwise_ema, "cut", "--prompt-at", "0.5", JUMP)  # 0.5 s → frame 8 → latent 2 → chunk 3
    lat, out = gen(cf, tmp_path, chunkwise_ema, "step", "--prompt-at", "0.5@2", JUMP)
    assert torch.equal(lat[:3], cut[:3]) and not torch.equal(lat[3:6], cut[3:6])
    clip = read_video(out)
    assert clip.metadata["prompt_schedule"] == [[0.0, PROMPT], [0.5, JUMP, {"step": 2}]]
    facts = info(cf, out)
    assert not facts["malformed"] and f"--prompt-at 0.5@2 '{JUMP}'" in facts["command"]
    assert torch.equal(remake(cf, facts["command"], tmp_path / "again.mkv"), clip.frames)


def test_a_bad_step_is_refused_before_anything_loads(cf, tmp_path):
    r = cf("generate", PROMPT, "--preset", CHUNKWISE, "--device", "cpu", "--frames", 33, "--prompt-at", "0.5@4",
           JUMP, "--out", tmp_path / "x.mkv")
    assert r.exit_code == 1 and "1 to 3" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.mkv").exists()


def test_a_live_cut_is_recorded_with_its_step_and_remade_exactly(cf, tmp_path):
    """Through the real server: a cut's receipts carry `step` (wherever it landed: between steps or at a block start),
    the recording keeps it, and `cf info`'s command makes the recording's frames again, bit for bit."""
    from live_server import Client, live_server

    with live_server(FRAMEWISE, tmp_path / "live", codec="ffv1", max_seconds=1.25) as srv, Client(srv.ws) as c:
        c.send(type="claim")
        c.send(type="start", prompt=PROMPT, seed=5, record=True)
        c.until(frames=1)
        c.send(type="prompt", prompt=JUMP)
        landed = c.kind("prompt", state="landed")
        assert c.kind("ended")["reason"] == "limit"
        rec = c.kind("recording")
    assert landed["step"] in range(4) and landed["block"] == landed["latent"]
    path = tmp_path / "live" / rec["name"]
    clip = read_video(path)
    assert clip.metadata["prompt_schedule"] == [[0.0, PROMPT], [landed["seconds"], JUMP]
                                                + ([{"step": landed["step"]}] if landed["step"] else [])]
    command = info(cf, path)["command"]
    assert ("@" in command) == bool(landed["step"])
    assert torch.equal(remake(cf, command, tmp_path / "again.mkv"), clip.frames)


def test_step_sync_changes_no_latent_of_the_rolling_sampler(monkeypatch):
    from cfcli.pipeline.rolling import RollingSampler

    engine = Engine.load(load_preset(FIXTURES / "tiny-longvideo.yaml"), "cpu", torch.float32)
    kv = engine.text_kv(features(engine, 0))
    want = latents(engine.generate(kv, 15, seed=2, decode=False))
    CountingEvent.log = []
    real = RollingSampler.__init__
    monkeypatch.setattr(RollingSampler, "__init__", lambda self, *a: real(self, *a[:5], StepSync(CountingEvent)))
    assert torch.equal(latents(engine.generate(kv, 15, seed=2, decode=False)), want)
    records = [n for kind, n in CountingEvent.log if kind == "record"]
    assert len(records) == (5 + 4 - 1) + 4  # a DiT call per window, and a clean pass per block but the last
    assert [n for kind, n in CountingEvent.log if kind == "wait"] == list(range(len(records) - 2))
