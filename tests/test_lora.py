"""LoRAs (`--lora`, `Session(lora=...)`, a preset's `loras:`): each file layout read onto the DiT's own names and merged
into its weights, giving the latents of a checkpoint merged by hand; stacking, negative scales, refusals before any
weights load, the clip's metadata and `cf info`'s remake, the 8-bit low plan, a swap in place, Hub files, and the key
mapping checked against diffusers' own Wan LoRA converters. Tiny fixture DiT (`tests/fixtures`), CPU, float32."""

import hashlib
import json
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from cfcli.errors import CfError
from cfcli.lora.files import LoraFile, parameter_shapes
from cfcli.lora.spec import LoraSpec, parse
from cfcli.models.checkpoint import generator_state_dict, read_state_dict
from cfcli.presets import load_preset
from cfcli.session import Session
from conftest import FIXTURES, PROMPT, rel_err
from test_lowvram import LOW_LATENT_REL_L2, plan

TINY = FIXTURES / "tiny-framewise.yaml"
BLOCK = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k", "cross_attn.v",
         "cross_attn.o", "ffn.0", "ffn.2")
TOP = ("head.head", "time_projection.1", "text_embedding.0", "text_embedding.2", "time_embedding.0",
       "time_embedding.2", "patch_embedding")
# diffusers' names, written out here (not read from cfcli), so a wrong table in cfcli fails the test.
DIFFUSERS = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
             "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
             "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "ffn.0": "ffn.net.0.proj",
             "ffn.2": "ffn.net.2", "head.head": "proj_out", "time_projection.1": "condition_embedder.time_proj",
             "text_embedding.0": "condition_embedder.text_embedder.linear_1",
             "text_embedding.2": "condition_embedder.text_embedder.linear_2",
             "time_embedding.0": "condition_embedder.time_embedder.linear_1",
             "time_embedding.2": "condition_embedder.time_embedder.linear_2", "patch_embedding": "patch_embedding"}
RANK, ALPHA = 4, 2.0


def shapes() -> dict:
    return parameter_shapes(load_preset(TINY).configs.dit)


def targets() -> list[str]:
    return [f"blocks.{b}.{m}" for b in range(2) for m in BLOCK] + list(TOP)


def factors(seed: int, names=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A random LoRA: official module name -> (down [r, in...], up [out, r, 1...]) for each of `names`."""
    gen, sh = torch.Generator().manual_seed(seed), shapes()
    out = {}
    for name in names or targets():
        w = sh[f"{name}.weight"]
        down = torch.randn(RANK, *w[1:], generator=gen) * 0.15
        up = torch.randn(w[0], RANK, *(1,) * (len(w) - 2), generator=gen) * 0.15
        out[name] = (down, up)
    return out


def write(path: Path, f: dict, layout: str = "wan", alpha: float | None = ALPHA) -> Path:
    """`f` saved in a layout: wan (ComfyUI), diffusers (PEFT), kohya."""
    sd = {}
    for name, (down, up) in f.items():
        if layout == "wan":
            stem, a, b = f"diffusion_model.{name}", "lora_down.weight", "lora_up.weight"
        elif layout == "diffusers":
            block, _, rest = name.partition(".") if name.startswith("blocks.") else ("", "", name)
            mod = (f"blocks.{rest.split('.', 1)[0]}.{DIFFUSERS[rest.split('.', 1)[1]]}" if block
                   else DIFFUSERS[name])
            stem, a, b = f"transformer.{mod}", "lora_A.weight", "lora_B.weight"
        else:
            stem, a, b = f"lora_unet_{name.replace('.', '_')}", "lora_down.weight", "lora_up.weight"
        sd[f"{stem}.{a}"], sd[f"{stem}.{b}"] = down.contiguous(), up.contiguous()
        if alpha is not None:
            sd[f"{stem}.alpha"] = torch.tensor(alpha)
    save_file(sd, str(path))
    return path


def base_weights() -> dict[str, torch.Tensor]:
    raw = read_state_dict(FIXTURES / "weights" / "causal_forcing.pt")
    return {k: v.float().clone() for k, v in generator_state_dict(raw, use_ema=True).items()}


def hand_merged(tmp_path: Path, *loras: tuple[dict, float, float | None]) -> Path:
    """A preset whose generator is the fixture's with each (factors, scale, alpha) merged by hand, in float64."""
    sd = {k: v.double() for k, v in base_weights().items()}
    for f, scale, alpha in loras:
        for name, (down, up) in f.items():
            w = sd[f"{name}.weight"]
            delta = up.double().flatten(1) @ down.double().flatten(1)
            sd[f"{name}.weight"] = w + scale * (alpha / RANK if alpha else 1.0) * delta.reshape(w.shape)
    path = tmp_path / "merged.safetensors"
    save_file({k: v.float().contiguous() for k, v in sd.items()}, str(path))
    return preset_with(tmp_path, generator={"path": str(path)})


def preset_with(tmp_path: Path, name: str = "merged", **changes) -> Path:
    data = yaml.safe_load(TINY.read_text())
    data["weights"] = {role: {"path": str((FIXTURES / ref["path"]).resolve())} for role, ref in data["weights"].items()}
    for key, value in changes.items():
        if key in data["weights"]:
            data["weights"][key] = value
        else:
            data[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def latents(session: Session) -> torch.Tensor:
    return latents_of(session.engine)


def run(preset=TINY, lora=(), **options) -> torch.Tensor:
    with Session(str(preset), device="cpu", dtype="float32", lora=lora, **options) as s:
        return latents(s)


# --- exact: each layout gives the hand-merged checkpoint's latents ----------------------------------------------------

@pytest.mark.parametrize("layout, alpha", [("wan", ALPHA), ("wan", None), ("diffusers", None), ("kohya", ALPHA)])
def test_each_layout_gives_the_latents_of_a_checkpoint_merged_by_hand(tmp_path, layout, alpha):
    f = factors(1)
    lora = write(tmp_path / f"{layout}.safetensors", f, layout, alpha)
    got, want = run(lora=[f"{lora}:0.75"]), run(hand_merged(tmp_path, (f, 0.75, alpha)))
    assert rel_err(got, want) < 1e-5
    assert rel_err(got, run()) > 1e-2  # the LoRA does change the video


def test_weight_and_bias_diffs_are_added_as_they_are(tmp_path):
    sh, gen = shapes(), torch.Generator().manual_seed(2)
    diff = {name: torch.randn(sh[name], generator=gen) * 0.02
            for name in ("blocks.0.ffn.2.weight", "blocks.1.modulation", "head.head.bias", "blocks.0.norm3.weight")}
    save_file({f"diffusion_model.{k.removesuffix('.weight').removesuffix('.bias')}."
               f"{'diff_b' if k.endswith('.bias') else 'diff'}": v for k, v in diff.items()},
              str(tmp_path / "diff.safetensors"))
    with Session(str(TINY), device="cpu", dtype="float32", lora=[tmp_path / "diff.safetensors"]) as s:
        params = dict(s.engine.dit.named_parameters())
        base = base_weights()
        for name, d in diff.items():
            assert torch.equal(params[name], base[name] + d)
        assert torch.equal(params["blocks.0.ffn.0.weight"], base["blocks.0.ffn.0.weight"])


def test_stacked_loras_and_negative_scales(tmp_path):
    f, g = factors(1), factors(2, [f"blocks.{b}.ffn.0" for b in range(2)])
    a, b = write(tmp_path / "a.safetensors", f), write(tmp_path / "b.safetensors", g, "kohya")
    got = run(lora=[f"{a}:0.5", f"{b}:-1.25"])
    assert rel_err(got, run(hand_merged(tmp_path, (f, 0.5, ALPHA), (g, -1.25, ALPHA)))) < 1e-5
    assert rel_err(run(lora=[f"{a}:1", f"{a}:-1"]), run()) < 1e-6  # a LoRA and its negative cancel


def test_no_lora_changes_nothing():
    with Session(str(TINY), device="cpu", dtype="float32") as s:
        loaded = dict(s.engine.dit.named_parameters())
        assert s.loras == () and all(torch.equal(loaded[k], v) for k, v in base_weights().items())


def test_merging_never_writes_into_the_loaded_checkpoint(tmp_path):
    """A float32 safetensors generator on the CPU is used as it is (memory-mapped): the merge makes new tensors."""
    generator = tmp_path / "gen.safetensors"
    save_file({k: v.contiguous() for k, v in base_weights().items()}, str(generator))
    digest = hashlib.sha256(generator.read_bytes()).hexdigest()
    preset = preset_with(tmp_path, generator={"path": str(generator)})
    lora = write(tmp_path / "l.safetensors", factors(3))
    with Session(str(preset), device="cpu", dtype="float32", lora=[lora]) as s:
        assert not torch.equal(s.engine.dit.blocks[0].ffn[0].weight, base_weights()["blocks.0.ffn.0.weight"])
    assert hashlib.sha256(generator.read_bytes()).hexdigest() == digest
    assert torch.equal(load_file(str(generator))["blocks.0.ffn.0.weight"], base_weights()["blocks.0.ffn.0.weight"])


# --- parsing ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, source, scale", [
    ("style.safetensors", "style.safetensors", 1.0), ("style.safetensors:0.8", "style.safetensors", 0.8),
    ("a:b.safetensors", "a:b.safetensors", 1.0), ("a:b.safetensors:-0.5", "a:b.safetensors", -0.5),
    ("owner/repo/x.safetensors:2", "owner/repo/x.safetensors", 2.0), ("x:1e-3", "x", 0.001)])
def test_file_and_scale_are_split_at_the_last_colon_only_before_a_number(text, source, scale):
    assert parse(text) == LoraSpec(source, scale) and parse(parse(text).arg) == parse(text)


@pytest.mark.parametrize("text", ["x.safetensors:nan", "x.safetensors:inf", ":0.5"])
def test_no_file_or_a_scale_that_is_not_a_finite_number_is_refused(text):
    with pytest.raises(CfError):
        parse(text)


# --- refusals, before any weights load ----------------------------------------------------------------------------

def refused(tmp_path, lora, *words):
    with pytest.raises(CfError) as err:
        Session(str(TINY), device="cpu", dtype="float32", lora=[lora])
    text = str(err.value)
    assert all(w in text for w in words), text
    return text


def test_a_lora_for_another_base_model_is_refused_saying_which(tmp_path):
    big = {"diffusion_model.blocks.39.self_attn.q.lora_down.weight": torch.zeros(2, 5120),
           "diffusion_model.blocks.39.self_attn.q.lora_up.weight": torch.zeros(5120, 2)}
    save_file(big, str(tmp_path / "wan14b.safetensors"))
    refused(tmp_path, tmp_path / "wan14b.safetensors", "another base model", "5120 wide with 40 blocks",
            "Wan2.1 14B", "64 wide with 2 blocks")


def test_wrong_shapes_missing_halves_and_bad_diffs_are_refused(tmp_path):
    f = factors(1, ["blocks.0.ffn.0"])
    down, up = f["blocks.0.ffn.0"]
    save_file({"diffusion_model.blocks.0.ffn.0.lora_down.weight": down,
               "diffusion_model.blocks.0.ffn.0.lora_up.weight": up[:100].contiguous()}, str(tmp_path / "s.safetensors"))
    refused(tmp_path, tmp_path / "s.safetensors", "does not fit", "blocks.0.ffn.0", "[100, 4]", "[128, 64]")
    save_file({"diffusion_model.blocks.0.ffn.0.lora_down.weight": down}, str(tmp_path / "half.safetensors"))
    refused(tmp_path, tmp_path / "half.safetensors", "has no up weight")
    save_file({"diffusion_model.head.head.diff_b": torch.zeros(3)}, str(tmp_path / "b.safetensors"))
    refused(tmp_path, tmp_path / "b.safetensors", "head.head.diff_b is [3], expected [64]")


def test_a_file_that_changes_nothing_and_unknown_keys_are_refused_by_name(tmp_path):
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 8)},
              str(tmp_path / "sdxl.safetensors"))
    refused(tmp_path, tmp_path / "sdxl.safetensors", "changes nothing in the DiT", "lora_te_text_model", "expected")
    sd = {f"diffusion_model.blocks.0.cross_attn.q.{p}.weight": t
          for p, t in zip(("lora_down", "lora_up"), factors(1, ["blocks.0.cross_attn.q"])["blocks.0.cross_attn.q"])}
    sd["diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight"] = torch.zeros(4, 64)
    save_file(sd, str(tmp_path / "i2v.safetensors"))
    refused(tmp_path, tmp_path / "i2v.safetensors", "has 1 of 3 keys that match no part of the DiT", "k_img")


def test_pickles_are_refused_unread(tmp_path):
    for name in ("style.ckpt", "style.pt", "style.bin"):
        torch.save({"a": torch.zeros(1)}, tmp_path / name)
        refused(tmp_path, tmp_path / name, "pickle file", "never unpickles", ".safetensors")
    torch.save({"a": torch.zeros(1)}, tmp_path / "sneaky.safetensors")  # a pickle by its content
    refused(tmp_path, tmp_path / "sneaky.safetensors", "pickle file (by its content)")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    refused(tmp_path, tmp_path / "junk.safetensors", "not a safetensors file")
    refused(tmp_path, tmp_path / "missing.safetensors", "not found")


def test_the_cli_refuses_before_anything_loads_with_exit_1(cf, tmp_path):
    torch.save({}, tmp_path / "x.ckpt")
    r = cf("generate", PROMPT, "--preset", TINY, "--device", "cpu", "--lora", tmp_path / "x.ckpt", "--no-server",
           "--out", tmp_path / "o.mp4")
    assert r.exit_code == 1 and "Traceback" not in r.output and "pickle file" in r.output and "→" in r.output
    assert not (tmp_path / "o.mp4").exists()


# --- the clip records them; cf info remakes ------------------------------------------------------------------------

def test_metadata_records_each_lora_and_cf_info_remakes_the_clip(cf, tmp_path, monkeypatch):
    from cfcli.pipeline.video import read_video

    monkeypatch.chdir(tmp_path)
    write(tmp_path / "style.safetensors", factors(1))
    write(tmp_path / "motion.safetensors", factors(2, ["blocks.1.ffn.2"]), "diffusers")
    out = tmp_path / "fox.mkv"
    r = cf("generate", PROMPT, "--preset", TINY, "--device", "cpu", "--dtype", "float32", "--frames", 5, "--seed", 2,
           "--codec", "ffv1", "--lora", "style.safetensors:0.8", "--lora", "motion.safetensors:-0.3", "--out", out,
           "--no-server", "-q")
    assert r.exit_code == 0, r.output
    facts = json.loads(cf("info", out, "--json").stdout)
    sha = hashlib.sha256((tmp_path / "style.safetensors").read_bytes()).hexdigest()
    assert facts["metadata"]["loras"][0] == {"file": str(tmp_path / "style.safetensors"), "name": "style.safetensors",
                                             "sha256": sha, "scale": 0.8}
    assert facts["metadata"]["loras"][1]["scale"] == -0.3
    assert f"--lora {tmp_path / 'style.safetensors'}:0.8 --lora {tmp_path / 'motion.safetensors'}:-0.3" in \
        facts["command"] and not facts["notes"]
    argv = shlex.split(facts["command"])
    assert cf(*argv[1:], "--out", tmp_path / "again.mkv", "-q", "--no-server").exit_code == 0
    assert torch.equal(read_video(tmp_path / "again.mkv").frames, read_video(out).frames)
    (tmp_path / "motion.safetensors").unlink()
    assert any("motion.safetensors is gone" in n for n in json.loads(cf("info", out, "--json").stdout)["notes"])
    shown = cf("info", out)
    assert "loras" in shown.stderr and sha in shown.stderr


def test_a_presets_loras_are_merged_recorded_and_not_repeated_in_the_remake(cf, tmp_path):
    f = factors(4)
    write(tmp_path / "p.safetensors", f)
    preset = preset_with(tmp_path, "with-lora", loras=[{"path": "p.safetensors", "scale": 0.5}])
    assert rel_err(run(preset), run(hand_merged(tmp_path, (f, 0.5, ALPHA)))) < 1e-5
    out = tmp_path / "p.mkv"
    r = cf("generate", PROMPT, "--preset", preset, "--device", "cpu", "--frames", 5, "--out", out, "--no-server", "-q")
    assert r.exit_code == 0, r.output
    facts = json.loads(cf("info", out, "--json").stdout)
    assert facts["metadata"]["loras"][0]["preset"] is True and "--lora" not in facts["command"]


def test_a_bad_loras_entry_in_a_preset_is_refused(tmp_path):
    preset = preset_with(tmp_path, "bad", loras=[{"repo": "a/b"}, {"path": "x", "scale": "big"}])
    with pytest.raises(CfError) as err:
        load_preset(preset)
    assert "loras[0] must be {repo, file, scale} or {path, scale}" in str(err.value)
    assert "loras[1].scale must be a number" in str(err.value)


# --- memory plans ---------------------------------------------------------------------------------------------------

def test_the_low_vram_plan_merges_before_quantising_and_stays_within_its_bound(tmp_path):
    """int8 weights of the merged DiT: the low plan's error against the exact path with the same LoRA is the plan's
    documented error, not the LoRA's size (merged after quantising, the LoRA would be lost or refused)."""
    from cfcli.ops.weight_quant import Int8Linear

    lora = write(tmp_path / "l.safetensors", factors(5))
    exact = run(lora=[lora])
    with Session(str(TINY), device="cpu", dtype="float32", lora=[lora], low_vram=True) as s:
        low = latents(s)
        assert s.memory.weights == "int8" and isinstance(s.engine.dit.blocks[0].ffn[0], Int8Linear)
    assert 0 < rel_err(low, exact) < LOW_LATENT_REL_L2 < rel_err(run(), exact)


def test_offloaded_blocks_carry_the_merged_weights(tmp_path):
    """The low+offload plan streams merged, quantised blocks from host memory: the low plan's latents, to the bit."""
    from cfcli.pipeline.engine import Engine

    lora = write(tmp_path / "l.safetensors", factors(6))
    options = Session(str(TINY), device="cpu", dtype="float32", lora=[lora]).options
    engines = [Engine.load(load_preset(TINY), "cpu", torch.float32).configure(options, plan(name))
               for name in ("low", "low+offload")]
    assert hasattr(engines[1].dit.blocks, "distinct") and not engines[1].plain_weights
    assert torch.equal(latents_of(engines[1]), latents_of(engines[0]))


def latents_of(engine) -> torch.Tensor:
    ctx = torch.randn(1, 20, 32, generator=torch.Generator().manual_seed(0))
    return torch.cat([c.latents for c in engine.generate(engine.text_kv(ctx), 3, seed=3, decode=False)])


# --- live: swapping LoRAs on a loaded session ----------------------------------------------------------------------

def test_a_swap_in_place_gives_a_fresh_sessions_latents(tmp_path):
    a, b = write(tmp_path / "a.safetensors", factors(1)), write(tmp_path / "b.safetensors", factors(2), "kohya")
    with Session(str(TINY), device="cpu", dtype="float32") as s:
        dit = s.engine.dit
        weight = dit.blocks[0].ffn[0].weight
        s.set_loras([f"{a}:0.6"])  # no LoRA merged yet: in place
        assert s.engine.dit is dit and s.engine_loads == 1 and torch.equal(latents(s), run(lora=[f"{a}:0.6"]))
        s.set_loras([f"{b}:-0.4"])
        assert s.engine_loads == 1 and dit.blocks[0].ffn[0].weight is weight  # the same tensors: graphs stay valid
        assert torch.equal(latents(s), run(lora=[f"{b}:-0.4"]))
        s.set_loras([])
        assert all(torch.equal(dict(dit.named_parameters())[k], v) for k, v in base_weights().items())
        with pytest.raises(CfError):
            s.set_loras([tmp_path / "missing.safetensors"])
        assert s.loras == ()


def test_a_session_loaded_with_a_lora_reloads_once_then_swaps_in_place(tmp_path):
    a, b = write(tmp_path / "a.safetensors", factors(1)), write(tmp_path / "b.safetensors", factors(2))
    with Session(str(TINY), device="cpu", dtype="float32", lora=[a]) as s:
        latents(s)
        s.set_loras([b])
        assert torch.equal(latents(s), run(lora=[b])) and s.engine_loads == 2
        s.set_loras([a])
        assert torch.equal(latents(s), run(lora=[a])) and s.engine_loads == 2


# --- served: a job's LoRAs pick the session --------------------------------------------------------------------------

def test_sessions_with_other_loras_are_other_engines(tmp_path):
    from cfcli.serve.resident import same_engine

    a = write(tmp_path / "a.safetensors", factors(1))
    one = Session(str(TINY), device="cpu", lora=[f"{a}:0.5"])
    assert same_engine(one, Session(str(TINY), device="cpu", lora=[f"{a}:0.5"]))
    assert not same_engine(one, Session(str(TINY), device="cpu", lora=[f"{a}:0.6"]))
    assert not same_engine(one, Session(str(TINY), device="cpu"))


def test_the_client_sends_absolute_lora_files(tmp_path, monkeypatch):
    from cfcli.cli.jobs import given_engine

    monkeypatch.chdir(tmp_path)

    class Ctx:
        params = {"lora": ["a.safetensors:0.5", "owner/repo/x.safetensors"], "seed": 1}

        @staticmethod
        def get_parameter_source(name):
            return type("Source", (), {"name": "COMMANDLINE"})

    assert given_engine(Ctx)["lora"] == [f"{tmp_path / 'a.safetensors'}:0.5", "owner/repo/x.safetensors:1.0"]


# --- Hub files ----------------------------------------------------------------------------------------------------

def test_a_hub_lora_is_downloaded_verified_then_used_offline(cf, tmp_path, monkeypatch):
    from fakehub import FakeHub
    from huggingface_hub import constants

    lora = write(tmp_path / "style.safetensors", factors(7))
    fake = FakeHub()
    fake.add("someone/wan-loras", "styles/ink.safetensors", lora)
    fake.start()
    try:
        source = "someone/wan-loras/styles/ink.safetensors"
        r = cf("generate", PROMPT, "--preset", TINY, "--device", "cpu", "--lora", source, "--no-server")
        assert r.exit_code == 1 and f"cf download --lora {source}" in r.output
        monkeypatch.setattr(constants, "ENDPOINT", fake.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_HUB_OFFLINE")
        r = cf("download", "--lora", source)
        assert r.exit_code == 0, r.output
        assert [(q.repo, q.path) for q in fake.file_gets()] == [("someone/wan-loras", "styles/ink.safetensors")]
        assert "sha256 ok" in r.output
    finally:
        fake.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert torch.equal(run(lora=[f"{source}:0.9"]), run(lora=[f"{lora}:0.9"]))


# --- the key mapping against diffusers' converters ------------------------------------------------------------------

def test_the_key_mapping_matches_diffusers_wan_lora_converters(tmp_path):
    """diffusers converts Wan/ComfyUI and musubi (kohya) LoRAs to its own names, with alpha folded into the factors;
    read back through cfcli's diffusers mapping, the deltas are those of the original files."""
    from diffusers.loaders import lora_conversion_utils as conv  # the test extra's; 0.34 converts differently

    blocks = factors(8, [f"blocks.{b}.{m}" for b in range(2) for m in BLOCK])
    # diffusers drops the alphas of the modules outside the blocks (and needs a block): no alphas here
    top = factors(9, ["blocks.1.self_attn.k", *(m for m in TOP if m != "patch_embedding")])
    cfg = load_preset(TINY).configs.dit
    cases = (("wan", blocks, ALPHA, conv._convert_non_diffusers_wan_lora_to_diffusers),
             ("wan", top, None, conv._convert_non_diffusers_wan_lora_to_diffusers),
             ("kohya", blocks, ALPHA, conv._convert_musubi_wan_lora_to_diffusers))
    for i, (layout, f, alpha, convert) in enumerate(cases):
        original = write(tmp_path / f"{i}.safetensors", f, layout, alpha)
        theirs = convert(load_file(str(original)))
        assert all(k.startswith("transformer.") and ".lora_" in k for k in theirs)
        save_file(theirs, str(tmp_path / f"{i}-diffusers.safetensors"))
        ours, back = LoraFile(original, cfg), LoraFile(tmp_path / f"{i}-diffusers.safetensors", cfg)
        assert back.grouped.layout == "diffusers" and set(back.changes) == set(ours.changes) == \
            {f"{name}.weight" for name in f}
        for name in ours.changes:
            assert torch.allclose(back.delta(name), ours.delta(name), rtol=1e-5, atol=1e-7), name


def test_an_extension_records_its_loras_and_its_remake_gives_them(cf, tmp_path):
    lora = write(tmp_path / "l.safetensors", factors(1))
    base = ["--preset", TINY, "--device", "cpu", "--dtype", "float32", "--codec", "ffv1", "--no-server", "-q"]
    assert cf("generate", PROMPT, *base, "--frames", 5, "--seed", 1, "--out", tmp_path / "a.mkv").exit_code == 0
    r = cf("extend", tmp_path / "a.mkv", *base, "--frames", 4, "--seed", 2, "--lora", f"{lora}:0.25",
           "--out", tmp_path / "b.mkv")
    assert r.exit_code == 0, r.output
    facts = json.loads(cf("info", tmp_path / "b.mkv", "--json").stdout)
    assert facts["metadata"]["loras"][0]["scale"] == 0.25
    assert facts["command"].startswith("cf extend") and f"--lora {lora}:0.25" in facts["command"]
