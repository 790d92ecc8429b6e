"""`cfcli.Session` and `cfcli.generate`, the Python API: the CLI's latents to the bit, models loaded once per session,
`close()` lets go, and `cf live` planned by the same planner as `cf generate`."""

import gc
import weakref

import pytest
import torch
from safetensors.torch import load_file

import cfcli
from cfcli.errors import CfError
from cfcli.pipeline import memory
from cfcli.presets import load_preset
from cfcli.session import Session, SpeedFlags
from conftest import FIXTURES, PROMPT

FRAMEWISE, CHUNKWISE = FIXTURES / "tiny-framewise.yaml", FIXTURES / "tiny-chunkwise.yaml"


def cli_latents(cf, tmp_path, name: str, *args) -> torch.Tensor:
    latents = tmp_path / f"cli-{name}.safetensors"
    r = cf("generate", *args, "--device", "cpu", "--dtype", "float32", "--save-latents", latents,
           "-o", tmp_path / f"cli-{name}.mkv", "--quiet")
    assert r.exit_code == 0, r.output
    return load_file(str(latents))["latents"]


def api_latents(tmp_path, name: str, result) -> torch.Tensor:
    assert result.path == tmp_path / f"api-{name}.mkv" and result.path.is_file()
    return load_file(str(tmp_path / f"api-{name}.safetensors"))["latents"]


@pytest.mark.parametrize("name, cli_args, api_args", [
    ("plain", ["--preset", FRAMEWISE, PROMPT, "--seed", "3", "--frames", "9"],
     dict(preset=str(FRAMEWISE), prompt=PROMPT, seed=3, frames=9)),
    ("chunkwise", ["--preset", CHUNKWISE, PROMPT, "--seed", "5", "--frames", "13"],
     dict(preset=str(CHUNKWISE), prompt=PROMPT, seed=5, frames=13)),
    ("switch", ["--preset", FRAMEWISE, PROMPT, "--seed", "7", "--seconds", "1", "--prompt-at", "0.5s", "a red kite"],
     dict(preset=str(FRAMEWISE), prompt=PROMPT, seed=7, seconds=1, prompt_at=[("0.5s", "a red kite")])),
    ("image", ["--preset", FRAMEWISE, PROMPT, "--seed", "1", "--frames", "9", "--image",
               FIXTURES / "framewise_4step_i2v.png"],
     dict(preset=str(FRAMEWISE), prompt=PROMPT, seed=1, frames=9, image=FIXTURES / "framewise_4step_i2v.png")),
])
def test_the_python_api_gives_the_cli_latents_to_the_bit(cf, tmp_path, name, cli_args, api_args):
    expected = cli_latents(cf, tmp_path, name, *cli_args)
    prompt = api_args.pop("prompt")
    result = cfcli.generate(prompt, device="cpu", dtype="float32", out=tmp_path / f"api-{name}.mkv",
                            save_latents=tmp_path / f"api-{name}.safetensors", **api_args)
    assert torch.equal(api_latents(tmp_path, name, result), expected)
    assert result.seed == api_args["seed"] and result.metadata["prompt"] == prompt
    assert result.frames == result.metadata["frames"] and result.elapsed > 0 and result.first_frame_s is not None


def test_two_jobs_on_one_session_load_each_model_once(tmp_path):
    with Session(str(FRAMEWISE), device="cpu", dtype="float32") as s:
        first = s.generate(PROMPT, frames=9, seed=1, out=tmp_path / "a.mkv")
        s.generate("a red kite over the sea", frames=5, seed=2, out=tmp_path / "b.mkv")
        s.extend(first.path, frames=8, seed=3, out=tmp_path / "c.mkv")
        frames = list(s.stream(PROMPT, frames=5, seed=4))
        assert s.engine_loads == 1 and s.encoder.loads == 2  # umT5: once per batch of new prompts, never kept
    assert sum(f.shape[0] for f in frames) == 5 and frames[0].dtype == torch.uint8 and frames[0].shape[-1] == 3
    assert (tmp_path / "c.mkv").is_file()


def test_stream_gives_the_pixels_the_file_holds(tmp_path):
    with Session(str(FRAMEWISE), device="cpu", dtype="float32") as s:
        streamed = torch.cat(list(s.stream(PROMPT, frames=9, seed=3)))
        s.generate(PROMPT, frames=9, seed=3, out=tmp_path / "a.mkv", codec="ffv1")
    from cfcli.pipeline.video import read_video

    written = torch.as_tensor(read_video(tmp_path / "a.mkv").frames)  # ffv1: lossless RGB, [n, 3, H, W]
    assert torch.equal(streamed, written.permute(0, 2, 3, 1))


def test_close_releases_the_models():
    s = Session(str(FRAMEWISE), device="cpu", dtype="float32")
    dit = weakref.ref(s.engine.dit)
    s.close()
    gc.collect()
    assert dit() is None and s.memory is None
    assert s.engine is not None and s.engine_loads == 2  # a closed session loads again when asked


def test_refusals_come_before_anything_loads(tmp_path):
    s = Session(str(FRAMEWISE), device="cpu", dtype="float32")
    (tmp_path / "taken.mkv").write_bytes(b"x")
    with pytest.raises(CfError, match="exists"):
        s.generate(PROMPT, frames=9, out=tmp_path / "taken.mkv")
    with pytest.raises(CfError, match="both set the length"):
        s.generate(PROMPT, frames=9, seconds=1)
    with pytest.raises(CfError, match="--crf 99 is out of range"):
        s.generate(PROMPT, frames=9, crf=99)
    with pytest.raises(CfError, match="longer than the model can make"):
        s.generate(PROMPT, seconds=10**6)
    with pytest.raises(CfError, match="prompt is empty"):
        s.generate("  ", frames=9)
    assert s._engine is None and s._encoder is None
    with pytest.raises(CfError, match="--device mps is not supported"):
        Session(str(FRAMEWISE), device="mps")
    with pytest.raises(CfError, match="--max-vram must be a positive number"):
        Session(str(FRAMEWISE), device="cpu", max_vram=float("nan"))
    with pytest.raises(TypeError, match="unexpected options: colour"):
        Session(str(FRAMEWISE), colour="red")


def test_defaults_come_from_the_environment_and_config_as_in_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("CF_DTYPE", "float16")
    monkeypatch.setenv("CF_OUTPUT_DIR", str(tmp_path / "videos"))
    s = Session(str(FRAMEWISE), device="cpu")
    req = s.generate_request(PROMPT, frames=9, seed=4)
    assert s.dtype == torch.float16 and req.out == tmp_path / "videos" / f"{PROMPT.replace(' ', '-')}-4.mp4"
    assert Session(str(FRAMEWISE), device="cpu", dtype="float32").dtype == torch.float32  # an argument wins


def test_speed_flags_are_one_value():
    assert Session(str(FRAMEWISE), device="cpu", compile=False).options.compile is False
    assert SpeedFlags(plain=True).options().tuned_vae is False
    with pytest.raises(CfError, match="--plain runs the reference modules"):
        SpeedFlags(plain=True, quantize="fp8").options()


def test_compile_left_to_auto_is_off_only_for_one_short_video():
    """A fresh `cf generate` inside the cache horizon replays graphs uncompiled (compiling cost a fresh process more
    than it saved, docs/performance.md); a resident session, a long video or an explicit --compile compiles."""
    one = Session(str(FRAMEWISE), device="cpu", one_shot=True)
    horizon = one.preset.geometry.max_latent_frames
    one.plan_memory(horizon)
    assert not one.compiles() and one.options.compile  # decided when the engine loads
    assert one.engine is not None
    assert one.options.compile is False and one.options.fused_vae is False and one.options.graphs
    long = Session(str(FRAMEWISE), device="cpu", one_shot=True)
    long.plan_memory(horizon + 1)
    assert long.compiles()
    resident = Session(str(FRAMEWISE), device="cpu")
    resident.plan_memory(horizon)
    assert resident.compiles()
    asked = Session(str(FRAMEWISE), device="cpu", one_shot=True, compile=True)
    asked.plan_memory(horizon)
    assert asked.engine is not None and asked.options.compile is True


def fake_gpu(monkeypatch, free_gib: float):
    monkeypatch.setattr(memory, "gpu_memory", lambda device: memory.GpuMemory(80 * memory.GIB,
                                                                             int(free_gib * memory.GIB)))


def test_live_gets_the_plan_generate_gets_under_the_same_budget(monkeypatch):
    """Budgets scaled to the tiny preset: the planner's choice under a --max-vram, for generate and for live, with
    umT5 kept beside the DiT only where it fits."""
    fake_gpu(monkeypatch, 80)
    fp = memory.footprint(load_preset(FRAMEWISE), 21, torch.float32)
    for budget_bytes in (fp.need(memory.candidates(fp, False)[0]) * 1.2, fp.need(memory.candidates(fp, False)[-1])):
        gib = budget_bytes / (1 - memory.HEADROOM) / memory.GIB * 1.01
        generate = Session(str(FRAMEWISE), device="cpu", dtype="float32", max_vram=gib, keep_text=False).plan_memory(21)
        live = Session(str(FRAMEWISE), device="cpu", dtype="float32", max_vram=gib)
        live.keep_text_loaded(21)
        assert live.memory.places_alike(generate) and live.memory.text_kept and not generate.text_kept
        assert live.memory.text in ("resident", "cpu") and live.encoder.keep and live.encoder._kept is not None
    huge = Session(str(FRAMEWISE), device="cpu", dtype="float32", max_vram=50)
    huge.keep_text_loaded(21)
    assert huge.memory.text == "resident"  # room for umT5 beside the DiT: it stays on the GPU
    generation = fp.generation(memory.candidates(fp, False)[0])
    between = (generation + (fp.text_stream + fp.text_resident) / 2) / (1 - memory.HEADROOM) / memory.GIB
    tight = Session(str(FRAMEWISE), device="cpu", dtype="float32", max_vram=between)
    tight.keep_text_loaded(21)
    assert tight.memory.text == "stream"  # no room for it whole beside the DiT: kept in host memory, streamed
    assert "umT5 kept in host memory, streamed layer by layer" in tight.memory.describe()
    assert tight.encoder.placement == "stream" and tight.encoder.keep and tight.encoder._kept is not None
    assert tight.encoder.where == "in host memory, streamed to cpu"
    with pytest.raises(CfError, match="use --text-device stream"):
        memory.with_kept_text(tight.memory, tight.preset, 21, torch.float32, "wan", "cuda")
    tighter = Session(str(FRAMEWISE), device="cpu", dtype="float32", max_vram=generation / memory.GIB * 1.05)
    tighter.keep_text_loaded(21)
    assert tighter.memory.text == "cpu"  # not even two blocks beside the DiT: umT5 stays loaded on the CPU
    with pytest.raises(CfError, match="use --text-device cpu"):
        memory.with_kept_text(tighter.memory, tighter.preset, 21, torch.float32, "wan", "stream")


def test_a_session_keeps_umt5_loaded_where_the_plan_has_room(monkeypatch, tmp_path):
    fake_gpu(monkeypatch, 80)
    with Session(str(FRAMEWISE), device="cpu", dtype="float32", max_vram=50) as s:
        s.generate(PROMPT, frames=5, seed=1, out=tmp_path / "a.mkv")
        s.generate("a red kite over the sea", frames=5, seed=2, out=tmp_path / "b.mkv")
        assert s.memory.text_kept and "umT5 kept loaded" in s.memory.describe() and s.encoder.loads == 1
    tight = memory.footprint(load_preset(FRAMEWISE), 2, torch.float32)
    budget = tight.generation(memory.candidates(tight, False)[0]) / memory.GIB * 1.1
    with Session(str(FRAMEWISE), device="cpu", dtype="float32", max_vram=budget) as s:
        assert not s.plan_memory(2).text_kept  # no room beside the DiT: encoded, then dropped, as cf generate does
    with Session(str(FRAMEWISE), device="cpu", dtype="float32", max_vram=50, keep_text=False) as s:
        assert not s.plan_memory(2).text_kept


def test_a_longer_video_plans_again_and_reloads_only_when_the_plan_changes(monkeypatch):
    fake_gpu(monkeypatch, 80)
    s = Session(str(FRAMEWISE), device="cpu", dtype="float32", max_vram=50)
    first = s.plan_memory(5)
    s.engine  # noqa: B018 - loaded
    assert s.plan_memory(3) is first  # shorter: the plan holds
    assert s.plan_memory(21).places_alike(first) and s._engine is not None  # longer, same plan: nothing reloads
