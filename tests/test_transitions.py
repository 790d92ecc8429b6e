"""Prompt transitions: `--prompt-at TIME~N[:slerp]` and the live `prompt` message's `transition` blend the features
from the old prompt to the new over N blocks (block k of N: (k+1)/(N+1) of the new prompt).

Guarantees tested on the tiny presets: N = 0 is today's cut bit for bit; a blended block's K/V is `Engine.text_kv` of
the hand-blended features and the block after the transition is the new prompt's own K/V; slerp matches the textbook
formula; the live schedule makes the same latents as `cf generate` given its recorded switches (a switch arriving
mid-transition included); `cf info`'s remake gives the transitions back.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from cfcli.errors import CfError
from cfcli.live.protocol import BadMessage, parse
from cfcli.live import schedule as schedule_module
from cfcli.live.schedule import Blend, LivePrompt, LiveSchedule
from cfcli.pipeline.engine import Engine
from cfcli.pipeline.plan import plan_video
from cfcli.pipeline.prompts import (CUT, PromptSchedule, Switch, Transition, blend, blended_blocks,
                                    parse_prompt_at, parse_switch_time, parse_time,
                                    read_schedule_file)
from cfcli.pipeline.video import read_video
from cfcli.presets import load_preset

from conftest import FIXTURES, PROMPT, info, remake

FRAMEWISE = FIXTURES / "tiny-framewise.yaml"
JUMP = "the fox jumps into the river"


# --- parsing --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds, transition", [
    ("2.5", 2.5, CUT), ("2.5~0", 2.5, CUT), ("2.5~3", 2.5, Transition(3, "linear")),
    ("1:05~2:slerp", 65, Transition(2, "spherical")), ("1s~1:lerp", 1, Transition(1, "linear")),
    ("1~4:spherical", 1, Transition(4, "spherical"))])
def test_switch_times_with_transitions(text, seconds, transition):
    assert parse_switch_time(text) == (seconds, transition)


@pytest.mark.parametrize("text", ["1~", "1~x", "1~-1", "1~3:cubic", "1~65", "1~2.5", "1~2~3"])
def test_bad_transitions(text):
    with pytest.raises(CfError, match="not a transition"):
        parse_switch_time(text)


def test_schedule_file_times_take_transitions(tmp_path):
    f = tmp_path / "story.tsv"
    f.write_text("0\ta fox\n1~2:slerp\tthe fox jumps\n2 a river\n")
    assert [(s.seconds, s.prompt, s.transition) for s in read_schedule_file(f)] == [
        (0, "a fox", CUT), (1, "the fox jumps", Transition(2, "spherical")), (2, "a river", CUT)]


def test_the_opening_prompt_has_no_transition():
    with pytest.raises(CfError, match="nothing comes before it"):
        PromptSchedule.build(None, [Switch(0, "a", transition=Transition(2))])
    s = PromptSchedule.build("a", [Switch(1, "b", transition=Transition(2, "spherical"))])
    assert s.as_metadata() == [[0.0, "a"], [1, "b", {"blocks": 2, "kind": "spherical"}]]


# --- the blend ------------------------------------------------------------------------------------------------------

def reference_slerp(a: list[float], b: list[float], t: float) -> list[float]:
    """Shoemake's slerp on the rows' directions, in double precision."""
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    omega = math.acos(max(-1.0, min(1.0, sum(x * y for x, y in zip(a, b)) / (na * nb))))
    return [(math.sin((1 - t) * omega) * x + math.sin(t * omega) * y) / math.sin(omega) for x, y in zip(a, b)]


def test_slerp_matches_the_reference_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 5, 16, generator=g), torch.randn(1, 5, 16, generator=g)
    a[0, 4], b[0, 3] = 0, 0  # umT5's padding rows: no direction, so linear
    for t in (0.25, 0.5, 2 / 3):
        got = blend(a, b, t, "spherical")
        for row in range(3):
            want = torch.tensor(reference_slerp(a[0, row].tolist(), b[0, row].tolist(), t))
            assert torch.allclose(got[0, row], want, atol=1e-5), (t, row)
        assert torch.equal(got[0, 3:], torch.lerp(a[0, 3:], b[0, 3:], t))
        assert not torch.allclose(got[0, :3], torch.lerp(a[0, :3], b[0, :3], t), atol=1e-3)
    assert torch.allclose(blend(a, b, 0.0, "spherical"), a, atol=1e-6)
    assert torch.allclose(blend(a, a, 0.5, "spherical"), a)  # parallel rows: no division by sin 0


def test_which_blocks_get_which_features():
    fa, fb, fc = torch.zeros(1, 1, 2), torch.ones(1, 1, 2), torch.full((1, 1, 2), 4.0)
    blocks = blended_blocks((0, 6), [fa, fb], [CUT, Transition(2)], 3)
    assert [(s, i) for s, _, i in blocks] == [(0, 0), (6, None), (9, None), (12, 1)]
    assert [f.flatten()[0].item() for _, f, _ in blocks] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert blended_blocks((0, 6), [fa, fb], [CUT, CUT], 3) == [(0, fa, 0), (6, fb, 1)]
    # C arrives at block 4 while A→B is at 1/3: it blends from what block 3 showed
    blocks = blended_blocks((0, 3, 4), [fa, fb, fc], [CUT, Transition(2), Transition(2)], 1)
    assert [(s, i) for s, _, i in blocks] == [(0, 0), (3, None), (4, None), (5, None), (6, 2)]
    assert [f.flatten()[0].item() for _, f, _ in blocks] == pytest.approx([0, 1 / 3, 1 / 3 + 11 / 9, 1 / 3 + 22 / 9, 4])


@pytest.fixture(scope="module")
def engine():
    return Engine.load(load_preset(FRAMEWISE), "cpu", torch.float32)


def features(engine, seed):
    return torch.randn(1, 8, engine.dit.cfg.text_dim, generator=torch.Generator().manual_seed(seed))


def test_blended_blocks_get_the_k_v_of_the_blended_features(engine):
    fa, fb = features(engine, 0), features(engine, 1)
    schedule = PromptSchedule.build("a", [Switch(1, "b", transition=Transition(2))])
    plan = plan_video(engine.preset, 33, schedule=schedule).with_features({"a": fa, "b": fb})
    assert plan.starts == (0, 4)
    text = plan.text(engine.text_kv)
    assert torch.equal(text.at(3), engine.text_kv(fa))
    assert torch.equal(text.at(4), engine.text_kv(torch.lerp(fa, fb, 1 / 3)))
    assert torch.equal(text.at(5), engine.text_kv(torch.lerp(fa, fb, 2 / 3)))
    assert torch.equal(text.at(6), engine.text_kv(fb)) and torch.equal(text.at(8), engine.text_kv(fb))
    assert not torch.equal(text.at(4), text.at(3)) and not torch.equal(text.at(5), text.at(6))


# --- live: the same latents as cf generate given its recorded switches ----------------------------------------------

class Weights:
    """The live session's weights, never changing: K/V from the engine."""

    version, has_pending, awaiting_frames = 0, False, False

    def __init__(self, engine):
        self.text_kv = engine.text_kv

    def land(self, latent):
        pass


def count_block_start_work(live, monkeypatch) -> list[str]:
    """What `live.at` (a block start) makes itself: blends and K/V, by name."""
    made, starting = [], [False]
    real_blend, real_kv, real_at = schedule_module.blend, live.weights.text_kv, live.at

    def at(frame, step=0):
        starting[0] = not step  # a lookup between steps is not a block start
        try:
            return real_at(frame, step)
        finally:
            starting[0] = False

    def counted(name, fn):
        def call(*args):
            if starting[0]:
                made.append(name)
            return fn(*args)
        return call

    monkeypatch.setattr(schedule_module, "blend", counted("blend", real_blend))
    monkeypatch.setattr(live.weights, "text_kv", counted("text_kv", real_kv))
    monkeypatch.setattr(live, "at", at)
    return made


def test_live_transitions_equal_prompt_at(engine, monkeypatch):
    """B with a 3-block linear transition after block 2; C with a 2-block slerp one block after B lands
    (mid-transition); the recording's schedule, as `cf generate` reads it, makes the same latents. Every blend and its
    K/V was made before its block started (by `submit`, or by the jobs handed to `ahead`, run while a block is made):
    a block start makes none."""
    feats = {"a": features(engine, 0), "b": features(engine, 1), "c": features(engine, 2)}

    def prompt(i, name, transition=CUT):
        return LivePrompt(i, name, 0.0, kv=engine.text_kv(feats[name]), features=feats[name], transition=transition)

    fps, frames = 16, 41  # 11 latent frames, one per block
    jobs = []
    live = LiveSchedule(prompt(0, "a"), 0, engine.preset.geometry.first_frame_of, weights=Weights(engine),
                        ahead=jobs.append)
    made_at_block_starts = count_block_start_work(live, monkeypatch)
    later = {2: prompt(1, "b", Transition(3)), 4: prompt(2, "c", Transition(2, "spherical"))}
    got = []
    for chunk in engine.generate(live, 11, seed=7, decode=False):
        got.append(chunk.latents)
        while jobs:  # the blend thread, while the next block waits
            jobs.pop(0)()
        if len(got) in later:
            live.submit(later[len(got)])
    assert made_at_block_starts == []
    meta = live.as_metadata(fps)
    assert [e[2] if len(e) == 3 else None for e in meta] == [
        None, {"blocks": 3, "kind": "linear"}, {"blocks": 2, "kind": "spherical"}]
    assert [p.latent for p in live.entries] == [0, 2, 4]

    schedule = PromptSchedule.build(None, parse_prompt_at(
        [(f"{s}~{t[0]['blocks']}:{t[0]['kind']}" if t else str(s), p) for s, p, *t in meta]))
    plan = plan_video(engine.preset, frames, fps, schedule=schedule).with_features(feats)
    assert plan.starts == (0, 2, 4)
    want = [c.latents for c in engine.generate(plan.text(engine.text_kv), 11, seed=7, decode=False)]
    assert len(got) == len(want) == 11 and all(torch.equal(a, b) for a, b in zip(got, want))
    cut = [c.latents for c in engine.generate(
        plan_video(engine.preset, frames, fps, schedule=PromptSchedule.build(
            None, [Switch(s, p) for s, p, *_ in meta])).with_features(feats).text(engine.text_kv), 11, seed=7,
        decode=False)]
    assert all(torch.equal(a, b) for a, b in zip(got[:2], cut[:2]))
    assert all(not torch.equal(a, b) for a, b in zip(got[2:], cut[2:]))  # blocks 2… differ from the cuts


def test_a_block_starting_while_the_first_blend_is_made_makes_it_again(engine):
    """`submit` makes the first blend from what the last block showed; a block starting meanwhile (here: B's last
    blend) shows something else, so the block C lands at blends from that, made there. Passed blends keep no K/V."""
    fa, fb, fc = features(engine, 0), features(engine, 1), features(engine, 2)
    weights = Weights(engine)
    live = LiveSchedule(LivePrompt(0, "a", 0.0, kv=engine.text_kv(fa), features=fa), 0, lambda f: f, weights=weights)
    live.submit(LivePrompt(1, "b", 0.0, kv=engine.text_kv(fb), features=fb, transition=Transition(3)))
    live.at(1), live.at(2)

    def start_a_block(features):
        weights.text_kv = engine.text_kv
        live.at(3)  # B's last blend: 3/4 of the way
        return engine.text_kv(features)

    weights.text_kv = start_a_block
    live.submit(LivePrompt(2, "c", 0.0, kv=engine.text_kv(fc), features=fc, transition=Transition(2)))
    kv = live.at(4)
    assert [p.latent for p in live.entries] == [0, 1, 4]
    shown = torch.lerp(fa, fb, 3 / 4)
    assert torch.equal(kv, engine.text_kv(torch.lerp(shown, fc, 1 / 3)))
    assert torch.equal(live.at(5), engine.text_kv(torch.lerp(shown, fc, 2 / 3)))
    assert [b.kv is None for b in live._blocks if isinstance(b, Blend)] == [True] * 4 + [False]


class Swapping:
    """Weights swapped as block `swap_at` starts; K/V that say which version made them."""

    has_pending, awaiting_frames = False, False

    def __init__(self, swap_at):
        self.version, self.swap_at, self.made = 0, swap_at, 0

    def land(self, latent):
        self.version += latent == self.swap_at

    def text_kv(self, features):
        self.made += 1
        return torch.tensor([float(self.version)])


def test_blends_made_ahead_of_a_lora_swap_are_made_again():
    """A blend's K/V made ahead (version 0) is stale once a swap lands at its block: that block makes it again; the
    one made ahead after the swap is used as it is."""
    f = torch.zeros(1, 2, 4)
    weights, jobs = Swapping(swap_at=2), []
    live = LiveSchedule(LivePrompt(0, "a", 0.0, kv=weights.text_kv(f), features=f), 0, lambda x: x, weights=weights,
                        ahead=jobs.append)
    live.submit(LivePrompt(1, "b", 0.0, kv=weights.text_kv(f), features=f + 1, transition=Transition(3)))
    assert weights.made == 3  # the first blend's, with the prompt
    assert live.at(1).item() == 0 and len(jobs) == 1
    jobs.pop()()  # blend 1, before the swap
    assert live.at(2).item() == 1 and weights.made == 5  # made again at the block start: the weights changed
    jobs.pop()()  # blend 2, after it
    assert live.at(3).item() == 1 and weights.made == 6 and not jobs


def test_what_other_threads_make_is_handed_over_before_the_generation_thread_can_see_it():
    """`handover` (the side stream's wait, `cfcli.live.side`) gets a prompt's K/V and features, and each blend's,
    before a block start can pick them up."""
    f, weights, jobs, seen = torch.zeros(1, 2, 4), Swapping(swap_at=-1), [], []
    live = LiveSchedule(LivePrompt(0, "a", 0.0, kv=weights.text_kv(f), features=f), 0, lambda x: x, weights=weights,
                        ahead=jobs.append, handover=lambda *t: seen.append((live.has_pending, len(live._blocks), t)))
    b = LivePrompt(1, "b", 0.0, kv=weights.text_kv(f), features=f + 1, transition=Transition(2))
    live.submit(b)
    pending, blocks, handed = seen.pop()
    assert not pending and handed[:2] == (b.kv, b.features) and len(handed) == 4  # the first blend's two as well
    live.at(1)
    assert len(jobs) == 1 and not seen
    jobs.pop()()
    blocks_then, blend = seen.pop()[1:]
    assert blocks_then == len(live._blocks) and torch.equal(blend[0], torch.lerp(f, f + 1, 2 / 3))
    assert live.at(2) is blend[1]  # the blend handed over is the one the block uses


def test_a_live_cut_is_unchanged(engine):
    fa, fb = features(engine, 0), features(engine, 1)
    live = LiveSchedule(LivePrompt(0, "a", 0.0, kv=engine.text_kv(fa), features=fa), 0, lambda f: f,
                        weights=Weights(engine))
    kb = engine.text_kv(fb)
    live.submit(LivePrompt(1, "b", 0.0, kv=kb, features=fb, transition=Transition(0, "spherical")))
    assert live.at(0) is not kb and live.at(1) is kb and live.at(2) is kb  # the prompt's own K/V, not one made again


# --- the live message -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("transition, message", [
    ({"blocks": -1}, "blocks"), ({"blocks": 2, "kind": "cubic"}, "kind must be"), ({"blocks": True}, "blocks"),
    ({"blocks": 2.0}, "blocks"), ({"blocks": 65}, "blocks"), ({"kind": "linear"}, "blocks"),
    ({"blocks": 1, "ease": "in"}, "blocks"), ("3", "wrong type")])
def test_bad_transitions_are_refused(transition, message):
    with pytest.raises(BadMessage, match=message):
        parse(json.dumps({"type": "prompt", "prompt": "a", "transition": transition}))


def test_transition_defaults():
    assert parse('{"type": "prompt", "prompt": "a"}')["transition"] == CUT
    assert parse('{"type": "prompt", "prompt": "a", "transition": {"blocks": 3}}')["transition"] == Transition(3)
    assert parse('{"type": "prompt", "prompt": "a", "transition": {"blocks": 2, "kind": "spherical"}}')[
        "transition"] == Transition(2, "spherical")


# --- through the CLI ------------------------------------------------------------------------------------------------

def gen(cf, tmp_path, name, *extra):
    out, lat = tmp_path / f"{name}.mkv", tmp_path / f"{name}.safetensors"
    r = cf("generate", PROMPT, "--preset", FRAMEWISE, "--seed", 5, "--frames", 33, "--device", "cpu", "--dtype",
           "float32", "--codec", "ffv1", "--out", out, "--save-latents", lat, *extra)
    assert r.exit_code == 0, r.output
    return load_file(str(lat))["latents"], out


def test_prompt_at_transitions_and_their_remake(cf, tmp_path):
    cut, cut_out = gen(cf, tmp_path, "cut", "--prompt-at", "1s", JUMP)
    zero, _ = gen(cf, tmp_path, "zero", "--prompt-at", "1s~0", JUMP)
    assert torch.equal(zero, cut)  # N = 0 is the cut, bit for bit
    assert read_video(cut_out).metadata["prompt_schedule"] == [[0.0, PROMPT], [1.0, JUMP]]
    lat, out = gen(cf, tmp_path, "blend", "--prompt-at", "1s~2:slerp", JUMP)
    # 1 s → latent 4: blocks 4 and 5 are blends, 6… the new prompt (its K/V, but later noise-free context differs)
    assert torch.equal(lat[:4], cut[:4]) and all(not torch.equal(lat[i], cut[i]) for i in (4, 5))
    clip = read_video(out)
    assert clip.metadata["prompt_schedule"] == [[0.0, PROMPT], [1.0, JUMP, {"blocks": 2, "kind": "spherical"}]]
    facts = info(cf, out)
    assert not facts["malformed"] and f"--prompt-at '1~2:slerp' '{JUMP}'" in facts["command"]
    assert torch.equal(remake(cf, facts["command"], tmp_path / "again.mkv"), clip.frames)


def test_a_bad_transition_is_refused_before_anything_loads(cf, tmp_path):
    r = cf("generate", PROMPT, "--preset", FRAMEWISE, "--device", "cpu", "--frames", 33, "--prompt-at", "1s~2:cubic",
           JUMP, "--out", tmp_path / "x.mkv")
    assert r.exit_code == 1 and "is not a transition" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.mkv").exists()
    assert parse_time("1s") == 1


def test_a_live_transition_is_recorded_and_remade_exactly(cf, tmp_path):
    """Through the real server: a `prompt` message with a transition lands, its receipts say so, the recording keeps
    it, and `cf info`'s command makes the recording's frames again, bit for bit."""
    from live_server import Client, live_server

    with live_server(FRAMEWISE, tmp_path / "live", codec="ffv1", max_seconds=1.25) as srv, Client(srv.ws) as c:
        c.send(type="claim")
        c.send(type="start", prompt=PROMPT, seed=5, record=True)
        c.until(frames=1)
        c.send(type="prompt", prompt=JUMP, transition={"blocks": 2, "kind": "spherical"})
        landed = c.kind("prompt", state="landed")
        assert c.kind("ended")["reason"] == "limit"
        rec = c.kind("recording")
    assert landed["transition"] == {"blocks": 2, "kind": "spherical"}
    path = tmp_path / "live" / rec["name"]
    clip = read_video(path)
    assert clip.metadata["prompt_schedule"] == [[0.0, PROMPT],
                                                [landed["seconds"], JUMP, {"blocks": 2, "kind": "spherical"}]]
    command = info(cf, path)["command"]
    assert "~2:slerp" in command
    assert torch.equal(remake(cf, command, tmp_path / "again.mkv"), clip.frames)
