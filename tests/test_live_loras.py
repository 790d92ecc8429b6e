"""`cf live`: LoRAs loaded, unloaded and rescaled while a video plays. A change lands at a block like a prompt switch:
the latents equal a run whose blocks before it ran on an engine without the LoRA and whose blocks from it on ran on
one loaded with it (two engines, each merged once, no swap); bad files are refused and the video goes on; unloading
gives back the loaded weights bit for bit; the recording's timeline, and `cf info` saying it cannot remake it. Tiny
fixture models, CPU, float32."""

import json
import math

import httpx
import pytest
import torch

from cfcli.errors import CfError
from cfcli.live.loras import LoraChange, LoraControl
from cfcli.live.protocol import BadMessage, parse
from cfcli.live.schedule import LivePrompt, LiveSchedule
from cfcli.lora.spec import LoraSpec
from cfcli.pipeline.loras import adapters_for
from cfcli.pipeline.video import read_video
from cfcli.session import Session
from conftest import FIXTURES, PROMPT
from live_server import Client, live_server
from test_lora import base_weights, factors, shapes, targets, write

FRAMEWISE = FIXTURES / "tiny-framewise.yaml"
CHUNKWISE = FIXTURES / "tiny-chunkwise.yaml"
SCALE = 0.7


class Switching:
    """A DiT runner: the calls of the blocks from latent frame `at` on go to `after`, those before to `before`, each a
    (DiT, prompt K/V) pair — what a LoRA landing at that block means, built without any swap."""

    def __init__(self, before, after, at: int):
        self.before, self.after, self.at = before, after, at

    def __call__(self, x, t, text_kv, cache, frame, refresh=False):
        dit, kv = self.after if frame >= self.at else self.before
        return dit(x, t, kv, cache, frame, refresh=refresh)


def engine(preset, lora=()):
    s = Session(str(preset), device="cpu", dtype="float32", lora=lora)
    return s, s.engine


def reference(preset, lora: str, at: int, latent_frames: int, seed: int, decode: bool):
    """The chunks of a run whose LoRA (`lora`, a FILE:SCALE) is merged from block `at` on, from two fresh engines; and
    the two engines' prompt K/V."""
    s, plain = engine(preset)
    _, merged = engine(preset, [lora])
    features = s.encode([PROMPT])[PROMPT]
    kv_a, kv_b = plain.text_kv(features), merged.text_kv(features)
    plain.runner = Switching((plain.dit, kv_a), (merged.dit, kv_b), at)
    return list(plain.generate(kv_a, latent_frames, seed, decode=decode)), (kv_a, kv_b)


def live_latents(preset, lora: str, after_blocks: int, latent_frames: int, seed: int):
    """The latents of a live schedule on one engine, the LoRA change checked after `after_blocks` blocks were handed
    out; (latents, the change)."""
    s, eng = engine(preset)
    control = LoraControl(lambda: eng)
    control.begin(lambda latent: latent)
    features = s.encode([PROMPT])[PROMPT]
    opening = LivePrompt(0, PROMPT, 0.0, kv=eng.text_kv(features), features=features)
    schedule = LiveSchedule(opening, 0, lambda latent: latent, weights=control)
    chunks = eng.generate(schedule, latent_frames, seed, decode=False)
    out = [next(chunks) for _ in range(after_blocks)]
    file, scale = lora.rsplit(":", 1)
    change = LoraChange(1, (LoraSpec(file, float(scale)),), 0.0)
    control.check(change)
    assert change.state == "queued"
    out += list(chunks)
    return torch.cat([c.latents for c in out]), change


# --- the latents ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset, after_blocks", [(FRAMEWISE, 2), (CHUNKWISE, 1)])
def test_a_change_lands_at_the_next_block_and_equals_an_engine_merged_from_there(tmp_path, preset, after_blocks):
    lora = f"{write(tmp_path / 'style.safetensors', factors(1))}:{SCALE}"
    bf = Session(str(preset), device="cpu").preset.block_frames
    latent_frames = (after_blocks + 2) * bf
    live, change = live_latents(preset, lora, after_blocks, latent_frames, seed=4)
    at = after_blocks * bf
    assert (change.state, change.latent) == ("landed", at)  # the first block not yet started
    ref, (kv_a, kv_b) = reference(preset, lora, at, latent_frames, 4, decode=False)
    plain, _ = reference(preset, lora, latent_frames, latent_frames, 4, decode=False)  # never switches
    ref, plain = torch.cat([c.latents for c in ref]), torch.cat([c.latents for c in plain])
    assert not torch.equal(kv_a, kv_b)  # the LoRA changes the prompt's K/V too: they must be made again
    assert torch.equal(live, ref)
    assert torch.equal(live[:at], plain[:at]) and not torch.equal(live[at:at + bf], plain[at:at + bf])


def test_unloading_gives_back_the_loaded_weights_bit_for_bit(tmp_path):
    """An engine loaded with a LoRA for live (`open_live(swap_loras=True)`) swaps it out in place, with no reload."""
    a = write(tmp_path / "a.safetensors", factors(1))
    s = Session(str(FRAMEWISE), device="cpu", dtype="float32", lora=[f"{a}:0.5"])
    eng, _ = s.open_live(1.0, swap_loras=True)
    weight = eng.dit.blocks[0].ffn[0].weight
    control = LoraControl(lambda: eng)
    control.check(LoraChange(1, (LoraSpec(str(a), -1.5),), 0.0))
    control.begin(lambda latent: latent)  # waited while idle: lands as the video starts
    assert control.timeline[0].latent == 0 and [x.spec.scale for x in control.opening] == [-1.5]
    control.check(LoraChange(2, (), 0.0))
    control.land(1)
    params = dict(eng.dit.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in base_weights().items())
    assert eng.dit.blocks[0].ffn[0].weight is weight and s.engine_loads == 1 and control.version == 2


def test_the_check_keeps_the_loaded_weights_so_the_swap_copies_none(tmp_path, monkeypatch):
    """A LoRA new to the engine: the weights it changes are copied to the host as loaded when it is checked (the check
    thread), not when it lands (the generation thread); the swap then starts from those copies."""
    from cfcli.lora import merge

    a = write(tmp_path / "a.safetensors", factors(1))
    s = Session(str(FRAMEWISE), device="cpu", dtype="float32")
    eng, _ = s.open_live(1.0, swap_loras=True)
    loaded = {k: v.clone() for k, v in eng.dit.named_parameters()}
    control = LoraControl(lambda: eng)
    control.check(LoraChange(1, (LoraSpec(str(a), SCALE),), 0.0))
    kept = dict(eng._loaded)
    assert set(kept) == {f"{name}.weight" for name in factors(1)}
    assert all(torch.equal(v, loaded[k]) for k, v in kept.items())
    copies = []
    monkeypatch.setattr(merge, "host_copy", lambda t: copies.append(t) or t.clone())
    control.land(2)
    assert copies == [] and control.timeline[-1].latent == 2 and eng._loaded.keys() == kept.keys()
    assert not torch.equal(eng.dit.blocks[0].ffn[0].weight, loaded["blocks.0.ffn.0.weight"])
    control.check(LoraChange(2, (), 0.0))
    control.land(3)
    assert copies == [] and all(torch.equal(p, loaded[k]) for k, p in eng.dit.named_parameters())


def test_a_swap_that_fails_halfway_puts_the_previous_loras_back(tmp_path, monkeypatch):
    """A swap that breaks after rewriting some weights is refused, and every weight it touched goes back to the
    previous LoRAs' value: the video goes on as it was."""
    from cfcli.lora import merge

    names = targets()
    a = write(tmp_path / "a.safetensors", factors(1, names[:2]))
    b = write(tmp_path / "b.safetensors", factors(2, names[2:]))  # weights `a` does not change: none kept yet
    s = Session(str(FRAMEWISE), device="cpu", dtype="float32", lora=[f"{a}:0.5"])
    eng, _ = s.open_live(1.0, swap_loras=True)
    before = {k: v.clone() for k, v in eng.dit.named_parameters()}
    control = LoraControl(lambda: eng)
    control.check(change := LoraChange(1, (LoraSpec(str(b), 2.0),), 0.0))
    real, calls = merge.merged, []

    def breaks(base, name, adapters):
        calls.append(name)
        if len(calls) == 5 and any(lora.path.name == "b.safetensors" for lora, _ in adapters):  # 2 of b's written
            raise RuntimeError("out of memory")
        return real(base, name, adapters)

    monkeypatch.setattr(merge, "merged", breaks)
    control.land(2)
    assert change.state == "refused" and "out of memory" in change.message and len(calls) > 5
    assert all(torch.equal(p, before[k]) for k, p in eng.dit.named_parameters())
    assert [x.spec.scale for x in eng.loras] == [0.5]


def test_a_bad_file_is_refused_before_anything_changes(tmp_path):
    a = write(tmp_path / "a.safetensors", factors(1))
    torch.save({}, tmp_path / "bad.ckpt")
    write(tmp_path / "none.safetensors", {})
    _, eng = engine(FRAMEWISE, [f"{a}:0.5"])
    before = {k: v.clone() for k, v in eng.dit.named_parameters()}
    control = LoraControl(lambda: eng)
    for file, why in [(tmp_path / "bad.ckpt", "pickle"), (tmp_path / "none.safetensors", "no tensors"),
                      (tmp_path / "gone.safetensors", "not found")]:
        change = LoraChange(1, (LoraSpec(str(file)),), 0.0)
        control.check(change)
        assert change.state == "refused" and why in change.message and change.hint
        assert change.as_message(16)["message"] == change.message
    control.land(1)
    assert not control.has_pending and control.version == 0
    assert all(torch.equal(p, before[k]) for k, p in eng.dit.named_parameters())


def test_int8_weights_swap_in_place_as_loading_with_the_lora_would_quantise_them(tmp_path):
    """An int8 memory plan (`--low-vram`) opened for live keeps each block linear's weight as loaded before quantising
    it: a swap requantises the merged weight in place, the same bits as an engine loaded with the LoRA under the same
    plan; unloading gives the plan's own int8 weights back."""
    from cfcli.ops.weight_quant import Int8Linear

    lora = write(tmp_path / "a.safetensors", factors(1))
    s = Session(str(FRAMEWISE), device="cpu", dtype="float32", low_vram=True)
    eng, _ = s.open_live(1.0, swap_loras=True)
    ffn = eng.dit.blocks[0].ffn[0]
    assert isinstance(ffn, Int8Linear) and eng.can_remerge
    plain = {k: v.clone() for k, v in eng.dit.state_dict().items()}
    weight = ffn.weight
    eng.remerge(adapters_for(s.preset, [f"{lora}:{SCALE}"]))
    with Session(str(FRAMEWISE), device="cpu", dtype="float32", low_vram=True, lora=[f"{lora}:{SCALE}"]) as ref:
        want = ref.engine.dit.state_dict()
        assert all(torch.equal(v, want[k]) for k, v in eng.dit.state_dict().items())  # int8 weights and scales too
    assert ffn.weight is weight and set(eng.rewritten) == {f"{n}.weight" for n in factors(1)}
    eng.remerge(())
    assert all(torch.equal(v, plain[k]) for k, v in eng.dit.state_dict().items())


def test_fp8_weights_swap_in_place_as_quantising_the_merged_weights_would(tmp_path):
    """FP8 block linears (`--quantize fp8`, emulated here: the CPU has no FP8 matmul) take a swap the same way: from
    the weights kept as loaded, merged, quantised in place."""
    from cfcli.models.dit import hot_linear
    from cfcli.ops.fp8 import FP8Linear, quantize_fp8_

    lora = write(tmp_path / "a.safetensors", factors(1))

    def fp8_engine(loras=()):
        s = Session(str(FRAMEWISE), device="cpu", dtype="float32", lora=list(loras))
        eng = s.engine
        eng.keep_block_linears()  # what `configure(keep_loaded=True)` does before `--quantize fp8`
        assert quantize_fp8_(eng.dit, hot_linear, emulate=True) > 0
        return s, eng

    s, eng = fp8_engine()
    assert isinstance(eng.dit.blocks[0].ffn[0], FP8Linear) and eng.can_remerge
    plain = {k: v.clone() for k, v in eng.dit.state_dict().items()}
    eng.remerge(adapters_for(s.preset, [f"{lora}:{SCALE}"]))
    want = fp8_engine([f"{lora}:{SCALE}"])[1].dit.state_dict()
    assert all(torch.equal(v.float(), want[k].float()) for k, v in eng.dit.state_dict().items())
    eng.remerge(())
    assert all(torch.equal(v.float(), plain[k].float()) for k, v in eng.dit.state_dict().items())


def test_weights_that_cannot_swap_in_place_are_refused_with_the_reason(tmp_path):
    from cfcli.live.session import LiveConfig, LiveSession

    lora = write(tmp_path / "a.safetensors", factors(1))
    low = Session(str(FRAMEWISE), device="cpu", dtype="float32", low_vram=True)  # int8 block weights
    loaded_plainly = Session(str(FRAMEWISE), device="cpu", dtype="float32", lora=[lora])  # not kept as loaded
    for s, why in [(low, "quantised"), (loaded_plainly, "without keeping the weights")]:
        live = LiveSession(s.engine, None, LiveConfig(tmp_path), events=None)
        with pytest.raises(CfError, match=why) as err:
            live.set_loras([LoraSpec(str(lora))])
        assert "does not load the models again" in err.value.message and "--lora" in err.value.hint
    served = LiveSession(Session(str(FRAMEWISE), device="cpu").engine, None, LiveConfig(tmp_path, lora_swaps=False),
                         events=None)
    assert "cf serve" in served.lora_refusal().message


@pytest.mark.parametrize("raw, message", [
    ('{"type": "loras"}', "'loras' is required"), ('{"type": "loras", "loras": {}}', "wrong type"),
    ('{"type": "loras", "loras": [{"file": ""}]}', "file must be"),
    ('{"type": "loras", "loras": [{"file": "a", "scale": "1"}]}', "scale must be a finite number"),
    ('{"type": "loras", "loras": [{"file": "a", "scale": 1e999}]}', "scale must be a finite number"),
    ('{"type": "loras", "loras": [{"file": "a", "weight": 1}]}', "must be"),
    ('{"type": "loras", "loras": [' + ",".join(['{"file": "a"}'] * 9) + "]}", "at most 8"),
])
def test_bad_lora_messages_are_refused_at_the_edge(raw, message):
    with pytest.raises(BadMessage, match=message):
        parse(raw)
    assert parse('{"type": "loras", "loras": [{"file": "a"}, {"file": "b", "scale": -2}]}')["loras"] == [
        {"file": "a", "scale": 1.0}, {"file": "b", "scale": -2.0}]


# --- through the real server ----------------------------------------------------------------------------------------

def test_a_change_through_the_api_lands_is_recorded_and_a_bad_file_keeps_the_video_going(cf, tmp_path):
    lora = write(tmp_path / "style.safetensors", factors(1))
    torch.save({}, tmp_path / "bad.ckpt")
    with live_server(FRAMEWISE, tmp_path / "live", codec="ffv1", max_seconds=1.25, lead=0.25) as srv, \
            Client(srv.ws) as c:
        assert c.kind("welcome")["lora_swaps"] is True
        c.send(type="claim")
        c.send(type="start", prompt=PROMPT, seed=5, record=True)
        c.until(frames=1)
        c.send(type="loras", loras=[{"file": str(tmp_path / "bad.ckpt")}])
        assert c.kind("loras")["state"] == "submitted"
        refused = c.kind("loras", state="refused")
        frames_at_refusal = len(c.frames)
        c.send(type="loras", loras=[{"file": str(lora), "scale": SCALE}])
        assert c.kind("ended")["reason"] == "limit"
        rec = c.kind("recording")
        status = c.kind("status", state="idle")
        r = httpx.get(srv.url + rec["url"], timeout=30)
        (tmp_path / "live.mkv").write_bytes(r.content)
    states = {m["state"]: m for m in c.messages if m["type"] == "loras" and m["id"] != refused["id"]}
    landed, shown = states["landed"], states["shown"]
    assert list(states) == ["submitted", "queued", "landed", "shown"]
    assert "pickle" in refused["message"] and refused["hint"]
    assert 1 <= landed["latent"] <= 5 and landed["frame"] == 4 * landed["latent"] - 3 and landed["swap_s"] >= 0
    assert landed["block"] == landed["latent"]  # frame-wise: a block per latent frame
    assert landed["loras"] == [{"file": str(lora), "scale": SCALE}] and shown["made_s"] > 0
    assert frames_at_refusal < 21 and [f["frame"] for f in c.frames] == list(range(21))  # it went on after both
    assert status["loras"] == [{"file": str(lora), "name": "style.safetensors", "scale": SCALE, "preset": False}]

    clip = read_video(tmp_path / "live.mkv")
    chunks, _ = reference(FRAMEWISE, f"{lora}:{SCALE}", landed["latent"], 6, 5, decode=True)
    assert torch.equal(clip.frames, torch.cat([ch.host_pixels() for ch in chunks])[:21])
    meta = clip.metadata
    assert "loras" not in meta  # it opened with none
    assert [(e["latent"], e["seconds"], [x["scale"] for x in e["loras"]]) for e in meta["lora_schedule"]] == [
        (0, 0.0, []), (landed["latent"], landed["seconds"], [SCALE])]
    assert meta["lora_schedule"][1]["loras"][0]["file"] == str(lora)
    facts = json.loads(cf("info", tmp_path / "live.mkv", "--json").stdout)
    assert facts["command"] is None and not facts["malformed"]
    assert any("LoRAs changed at" in n and "cf generate cannot" in n for n in facts["notes"])


def test_the_latency_measurement_times_lora_swaps(tmp_path):
    """`cf live --measure-latency N --lora FILE`: N changes alternating between none and the given LoRA, each timed."""
    from cfcli.cli.live import load
    from cfcli.live.measure import measure
    from cfcli.live.session import LiveConfig

    a = write(tmp_path / "a.safetensors", factors(1))
    engine, encoder = load(Session(str(FRAMEWISE), device="cpu", dtype="float32", lora=[f"{a}:{SCALE}"]), None, None)
    swaps = measure(engine, encoder, LiveConfig(tmp_path), switches=2, seed=1, blocks=2)["lora_swaps"]
    assert swaps["swaps"] == 2 and swaps["refused"] == [] and len(swaps["swap_s"]["all"]) == 2
    assert 0 < swaps["swap_s"]["p50"] <= swaps["swap_s"]["max"] and swaps["made_s"]["p50"] > swaps["swap_s"]["p50"]
    assert all(0 < d["queued_s"] <= d["landed_s"] <= d["made_s"] and d["swap_s"] < d["landed_s"]
               for d in swaps["detail"])
    changed = sum(math.prod(shapes()[f"{name}.weight"]) for name in factors(1))
    assert swaps["rewritten_bytes"] == changed * 4 > 0
    assert [x.spec.scale for x in engine.loras] == [SCALE]  # the last change gave the LoRA back
