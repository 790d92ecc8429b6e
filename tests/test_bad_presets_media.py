"""Bad presets, weights, caches, images and clips: one clear message, exit 1, no traceback, nothing written, and no
model loaded for what could be checked before. Also what odd but valid media turn into (real pixel values)."""

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cfcli.pipeline.video import read_video

from conftest import FIXTURES

TINY = FIXTURES / "tiny-framewise.yaml"
WEIGHTS = FIXTURES / "weights"
RUN = ["--frames", 5, "--device", "cpu", "--dtype", "float32", "--codec", "ffv1"]


def preset_file(tmp_path: Path, name: str = "bad", raw: str | bytes | None = None, **changes) -> Path:
    """tiny-framewise.yaml with weights made absolute and `changes` applied (None removes a key)."""
    path = tmp_path / f"{name}.yaml"
    if raw is not None:
        path.write_bytes(raw if isinstance(raw, bytes) else raw.encode())
        return path
    data = yaml.safe_load(TINY.read_text())
    data["weights"] = {role: {"path": str(WEIGHTS / Path(e["path"]).relative_to("weights"))}
                       for role, e in data["weights"].items()}
    for key, value in changes.items():
        data[key] = value
    path.write_text(yaml.safe_dump(data))
    return path


def arch(**parts) -> dict:
    data = yaml.safe_load(TINY.read_text())["architecture"]
    for part, values in parts.items():
        data[part] = values if not isinstance(values, dict) else {**data.get(part, {}), **values}
    return data


def weights_with(**roles) -> dict:
    base = {role: {"path": str(WEIGHTS / Path(e["path"]).relative_to("weights"))}
            for role, e in yaml.safe_load(TINY.read_text())["weights"].items()}
    return {**base, **roles}


@pytest.fixture
def models_loaded(monkeypatch):
    """Counts text-encoder and DiT loads, to prove a refusal came before them."""
    from cfcli.pipeline.engine import Engine
    from cfcli.pipeline.text import PromptEncoder

    calls = []
    run_encoder, load = PromptEncoder._run_encoder, Engine.load.__func__

    def encoder_spy(self, prompts):
        calls.append("text encoder")
        return run_encoder(self, prompts)

    def load_spy(cls, *args, **kwargs):
        calls.append("dit")
        return load(cls, *args, **kwargs)

    monkeypatch.setattr(PromptEncoder, "_run_encoder", encoder_spy)
    monkeypatch.setattr(Engine, "load", classmethod(load_spy))
    return calls


def refused(result, phrase: str, out: Path) -> None:
    """Exit 1, exactly one `error:` line holding `phrase`, no traceback, and no output file."""
    text = result.output
    assert result.exit_code == 1, text
    assert text.count("error:") == 1 and phrase in text, text
    assert "Traceback" not in text and not out.exists()


# --- presets: every value checked before anything loads ---------------------------------------------------------------

PRESET_CASES = {
    "steps-int": (dict(steps=1000), "steps must be a list of timesteps in 1…1000"),
    "steps-empty": (dict(steps=[]), "steps must be a list"),
    "steps-out-of-range": (dict(steps=[5000, 250]), "got [5000, 250]"),
    "steps-increasing": (dict(steps=[250, 500]), "strictly decreasing"),
    "first-block-steps-bool": (dict(first_block_steps=[True]), "first_block_steps must be"),
    "shift-text": (dict(timestep_shift="abc"), "timestep_shift must be a positive number (e.g. 5.0), got 'abc'"),
    "height-40": (dict(height=40), "height must be a positive multiple of 16"),
    "height-negative": (dict(height=-48), "got -48"),
    "width-0": (dict(width=0), "width must be a positive multiple of 16"),
    "height-bool": (dict(height=True), "height must be a positive multiple of 16"),
    "height-float": (dict(height=48.0), "got 48.0"),
    "fps-0": (dict(fps=0), "fps must be a frame rate above 0"),
    "local-attn-0": (dict(local_attn_frames=0), "local_attn_frames must be -1"),
    "horizon-0": (dict(horizon_frames=0), "horizon_frames must be a whole number ≥ 1"),
    "sink-beyond-window": (dict(sink_frames=40), "sink_frames must be a whole number ≥ 0 and below the 21-frame"),
    "use-ema-int": (dict(use_ema=1), "use_ema must be true or false"),
    "mode-list": (dict(mode=["framewise"]), "mode must be framewise or chunkwise"),
    "architecture-text": (dict(architecture="oops"), "architecture must be a mapping of parts"),
    "architecture-part": (dict(architecture=arch(unet={"dim": 3})), "unknown part 'unet'"),
    "architecture-key": (dict(architecture=arch(dit={"dimm": 64})), "architecture.dit: unknown key 'dimm'"),
    "architecture-type": (dict(architecture=arch(dit={"num_layers": "two"})), "architecture.dit.num_layers must be"),
    "architecture-tuple": (dict(architecture=arch(dit={"patch_size": [1, 2]})), "a list of 3 positive whole"),
    "architecture-heads": (dict(architecture=arch(dit={"num_heads": 3})), "dim 64 is not divisible by num_heads 3"),
    "vae-family": (dict(architecture=arch(vae={"family": "wan2.2"})),
                   "architecture.vae.family: unknown VAE family 'wan2.2' (known: wan2.1)"),
    "vae-family-number": (dict(architecture=arch(vae={"family": 2.1})), "unknown VAE family 2.1 (known: wan2.1)"),
    "path-null": (dict(weights=weights_with(vae={"path": None})), "weights.vae.path must be a non-empty string"),
    "weights-extra-key": (dict(weights=weights_with(vae={"path": "x", "sha": 1})), "weights.vae: unknown keys sha"),
    "weights-list": (dict(weights=[1, 2]), "weights must be a mapping"),
    "revision-number": (dict(weights=weights_with(vae={"repo": "a/b", "file": "x", "revision": 123})),
                        "weights.vae.revision must be a non-empty string (quote numbers"),
    "unknown-key": (dict(stepz=[1000]), "unknown keys ['stepz']"),
}


@pytest.mark.parametrize("case", PRESET_CASES)
def test_bad_preset_is_refused_before_any_model(cf, tmp_path, models_loaded, case):
    changes, phrase = PRESET_CASES[case]
    out = tmp_path / "o.mkv"
    refused(cf("generate", "a fox", "--preset", preset_file(tmp_path, **changes), *RUN, "--out", out), phrase, out)
    assert models_loaded == []


def test_the_default_vae_family_may_be_named(tmp_path):
    from cfcli.presets import load_preset

    named = load_preset(preset_file(tmp_path, architecture=arch(vae={"family": "wan2.1"})))
    assert named.configs == load_preset(TINY).configs and named.configs.vae_family == "wan2.1"


def test_several_problems_in_one_message(cf, tmp_path):
    r = cf("generate", "a fox", "--preset", preset_file(tmp_path, fps=0, width=0, use_ema="yes"), *RUN,
           "--out", tmp_path / "o.mkv")
    refused(r, "fps must be", tmp_path / "o.mkv")
    assert "width must be" in r.output and "use_ema must be" in r.output


@pytest.mark.parametrize("raw, phrase", [(b"\x00\xff\xfe binary \x80", "is not a UTF-8 text file"),
                                         ("", "is empty"), ("- just\n- a list\n", "is not a mapping of keys"),
                                         ("steps: [1000\n", "could not read preset")])
def test_unreadable_preset_files(cf, tmp_path, raw, phrase):
    out = tmp_path / "o.mkv"
    refused(cf("generate", "a fox", "--preset", preset_file(tmp_path, raw=raw), *RUN, "--out", out), phrase, out)


def test_every_shipped_and_fixture_preset_still_loads():
    from cfcli.presets import load_preset, shipped_presets

    for name in shipped_presets() + sorted(str(p) for p in FIXTURES.glob("*.yaml")):
        assert load_preset(name).steps[0] == 1000


# --- weight files and the prompt cache --------------------------------------------------------------------------------

def bad_weights(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "bare-tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "list":
        torch.save([torch.zeros(3)], path)
    elif kind == "int-tensors":
        sd = torch.load(WEIGHTS / "Wan2.1_VAE.pth", weights_only=True)
        torch.save({k: v.to(torch.int32) for k, v in sd.items()}, path)
    elif kind == "truncated":
        path.write_bytes((WEIGHTS / "Wan2.1_VAE.pth").read_bytes()[:5000])
    elif kind == "empty-dict":
        torch.save({}, path)
    return path


@pytest.mark.parametrize("kind, phrase", [("bare-tensor", "holds a Tensor, not a state dict"),
                                          ("list", "holds a list, not a state dict"),
                                          ("int-tensors", "torch.int32 values where floating point weights belong"),
                                          ("truncated", "could not read weights file"),
                                          ("empty-dict", "holds an empty mapping")])
def test_bad_weight_files(cf, tmp_path, kind, phrase):
    vae = bad_weights(tmp_path, kind)
    preset = preset_file(tmp_path, weights=weights_with(vae={"path": str(vae)}))
    out = tmp_path / "o.mkv"
    refused(cf("generate", "a fox", "--preset", preset, *RUN, "--out", out), phrase, out)


def test_empty_tokenizer_folder(cf, tmp_path):
    (tmp_path / "tok").mkdir()
    preset = preset_file(tmp_path, weights=weights_with(tokenizer={"path": str(tmp_path / "tok")}))
    out = tmp_path / "o.mkv"
    refused(cf("generate", "a fox", "--preset", preset, *RUN, "--out", out), "has no tokenizer.json", out)


@pytest.mark.parametrize("damage", ["wrong-shape", "wrong-dtype", "garbage", "nan"])
def test_damaged_prompt_cache_entry_is_rebuilt(tmp_path, damage):
    from safetensors.torch import save_file

    from cfcli.pipeline.text import PromptEncoder
    from cfcli.presets import load_preset

    enc = PromptEncoder(load_preset(TINY), torch.device("cpu"), torch.float32, cache_dir=tmp_path / "prompts")
    good = enc.encode(["a fox"])[0]
    entry = next((tmp_path / "prompts").glob("*.safetensors"))
    bad = {"wrong-shape": torch.zeros(4, 7), "wrong-dtype": torch.zeros(4, 32, dtype=torch.int64),
           "nan": torch.full((4, 32), float("nan"))}.get(damage)
    if bad is None:
        entry.write_bytes(b"not a safetensors file")
    else:
        save_file({"embeds": bad}, str(entry))
    again = enc.encode(["a fox"])[0]
    assert enc.loaded_encoder and torch.equal(again, good)
    enc.encode(["a fox"])
    assert not enc.loaded_encoder  # the rebuilt entry is good again


def test_unwritable_prompt_cache_degrades_with_a_note(tmp_path, caplog):
    from cfcli.pipeline.text import PromptEncoder
    from cfcli.presets import load_preset

    (tmp_path / "file").write_text("not a folder")
    enc = PromptEncoder(load_preset(TINY), torch.device("cpu"), torch.float32, cache_dir=tmp_path / "file" / "p")
    first = enc.encode(["a fox"])[0]
    assert enc.loaded_encoder and first.shape == (1, 512, 32)
    assert "prompt cache" in caplog.text and "without caching" in caplog.text


@pytest.mark.parametrize("home", ["file", "proc"])
def test_unusable_cf_home_still_generates(cf, tmp_path, monkeypatch, home):
    """CF_HOME only holds caches for `cf generate`: a file or /proc there costs the cache, not the run."""
    target = tmp_path / "home-file" if home == "file" else Path("/proc/cf-home")
    if home == "file":
        target.write_text("x")
    monkeypatch.setenv("CF_HOME", str(target))
    out = tmp_path / "o.mkv"
    r = cf("generate", "a fox", "--preset", TINY, *RUN, "--out", out)
    assert r.exit_code == 0 and out.is_file(), r.output


@pytest.mark.parametrize("variable", ["CF_HOME", "HF_HUB_CACHE"])
def test_unusable_cache_dir_for_download_names_the_variable(tmp_path, monkeypatch, variable):
    from cfcli.errors import CfError
    from cfcli.paths import usable_dir

    (tmp_path / "f").write_text("x")
    for path in (tmp_path / "f", tmp_path / "f" / "sub", Path("/proc/nope")):
        with pytest.raises(CfError) as err:
            usable_dir(path, variable)
        assert err.value.message.startswith(f"{variable} points at {path}") and variable in err.value.hint


# --- images -----------------------------------------------------------------------------------------------------------

def model_pixels(path: Path, w: int = 8, h: int = 8) -> np.ndarray:
    from cfcli.pipeline.media import load_image

    return ((load_image(path, w, h) + 1) * 127.5).round().to(torch.int32).permute(1, 2, 0).numpy()


def test_sixteen_bit_and_float_grey_are_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((8, 8), 0x8080, np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert (model_pixels(tmp_path / "g16.png") == 128).all()  # 0x8080 / 257, not white
    Image.fromarray(np.full((8, 8), 0.25, np.float32), "F").save(tmp_path / "f.tiff")
    assert (model_pixels(tmp_path / "f.tiff") == 64).all()
    Image.fromarray(np.full((8, 8), 65535, np.int32), "I").save(tmp_path / "i.tiff")
    assert (model_pixels(tmp_path / "i.tiff") == 255).all()


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[4:, :, 3] = 255  # bottom half opaque red, top half fully transparent
    rgba[:4, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    px = model_pixels(tmp_path / "a.png")
    assert (px[:4] == 255).all() and (px[4:] == [200, 0, 0]).all()
    Image.fromarray(np.stack([np.full((8, 8), 100, np.uint8), np.full((8, 8), 128, np.uint8)], -1), "LA").save(
        tmp_path / "la.png")
    assert (model_pixels(tmp_path / "la.png") == round(100 * 128 / 255 + 255 * 127 / 255)).all()
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.save(tmp_path / "p.png", transparency=1)
    assert (model_pixels(tmp_path / "p.png") == 255).all()


def test_cmyk_one_bit_and_palette_become_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.tiff")
    assert (model_pixels(tmp_path / "c.tiff") == [255, 0, 0]).all()
    Image.new("1", (8, 8), 1).save(tmp_path / "b.png")
    assert (model_pixels(tmp_path / "b.png") == 255).all()
    pal = Image.new("P", (8, 8), 2)
    pal.putpalette([0, 0, 0, 0, 0, 0, 10, 20, 30] + [0] * 759)
    pal.save(tmp_path / "p.png")
    assert (model_pixels(tmp_path / "p.png") == [10, 20, 30]).all()


def test_exif_orientation_is_honoured(tmp_path):
    img = np.zeros((8, 16, 3), np.uint8)
    img[:, :8] = 255  # left half white, stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(img).save(tmp_path / "o.jpg", exif=exif, quality=100)
    px = model_pixels(tmp_path / "o.jpg", 8, 16)  # displayed portrait: the white half is now on top
    assert px.shape == (16, 8, 3) and px[:7].min() > 240 and px[9:].max() < 15


@pytest.fixture
def image_run(cf, tmp_path):
    out = tmp_path / "o.mkv"

    def run(image, preset=TINY):
        return cf("generate", "a fox", "--preset", preset, *RUN, "--image", image, "--out", out), out

    return run


def test_bad_images_are_refused_before_any_model(image_run, tmp_path, models_loaded, monkeypatch):
    (tmp_path / "text.png").write_text("not an image")
    png = tmp_path / "ok.png"
    Image.new("RGB", (80, 48), (10, 20, 30)).save(png)
    (tmp_path / "cut.png").write_bytes(png.read_bytes()[:60])
    cases = [(tmp_path / "missing.png", "image not found"), (tmp_path / "text.png", "could not read image"),
             (tmp_path, "is a folder, not a picture"),
             (tmp_path / "cut.png", "could not read image"),
             (png, "--image needs a frame-wise preset")]
    for image, phrase in cases:
        preset = FIXTURES / "tiny-chunkwise.yaml" if phrase.startswith("--image") else TINY
        r, out = image_run(image, preset)
        refused(r, phrase, out)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 80 × 48 is over it: a "decompression bomb"
    r, out = image_run(png)
    refused(r, "decompression-bomb limit", out)
    assert models_loaded == []


# --- clips ------------------------------------------------------------------------------------------------------------

def write_clip(path: Path, frames: np.ndarray, *, rotation: int = 0, pts: list[int] | None = None,
               audio: bool = False, codec: str = "ffv1", gop: int | None = None) -> Path:
    """uint8 frames [T, H, W, 3] into a clip; `rotation` sets the display matrix (degrees counter-clockwise), `pts`
    the frames' times in 1/16 s (uneven: a variable frame rate)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=16)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        if gop:
            s.codec_context.gop_size = gop
        if rotation:
            s.set_display_rotation(rotation)
        a = c.add_stream("pcm_s16le", rate=8000) if audio else None
        if a is not None:
            a.layout = "mono"
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.int16), format="s16", layout="mono")
            sound.sample_rate, sound.pts = 8000, 0
            for p in list(a.encode(sound)) + list(a.encode()):
                c.mux(p)
    return path


def pattern(t: int, h: int, w: int) -> np.ndarray:
    """Frames with a bright top-left block (orientation visible) and a per-frame grey level (order visible)."""
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[:, :, :, 1] = np.arange(t, dtype=np.uint8)[:, None, None] * 3
    frames[:, : h // 3, : w // 3, 0] = 255
    return frames


def test_rotated_clip_is_read_and_extended_upright(cf, tmp_path, monkeypatch):
    from cfcli.pipeline import extend

    upright = pattern(9, 48, 80)
    stored = np.ascontiguousarray(np.rot90(upright, k=-1, axes=(1, 2)))  # stored turned clockwise: 80 tall, 48 wide
    clip = write_clip(tmp_path / "rot.mkv", stored, rotation=90)  # display: turn 90° counter-clockwise back
    contexts = []
    read_tail = extend.read_tail
    monkeypatch.setattr(extend, "read_tail", lambda *a, **k: contexts.append(read_tail(*a, **k)) or contexts[-1])
    monkeypatch.setattr(extend, "read_video", lambda *a: pytest.fail("the whole clip must not be read"),
                        raising=False)
    out = tmp_path / "x.mkv"
    r = cf("extend", clip, "--preset", TINY, "--device", "cpu", "--dtype", "float32", "--prompt", "a fox", "--frames",
           4, "--context-frames", 5, "--seed", 1, "--codec", "ffv1", "--out", out)
    assert r.exit_code == 0, r.output
    assert "rotated by 90°" in r.output
    want = torch.from_numpy(upright).permute(0, 3, 1, 2)
    assert torch.equal(contexts[0], want[-5:])  # the fitted context is upright: 48 × 80, block top-left
    assert torch.equal(read_video(out).frames[:9], want)  # the original, re-encoded upright, streamed


def test_read_tail_decodes_only_from_the_last_keyframe(tmp_path, monkeypatch):
    from cfcli.pipeline import clip_reader

    frames = pattern(64, 48, 80)
    clip = write_clip(tmp_path / "long.mp4", frames, codec="libx264", gop=8)
    info = clip_reader.probe_clip(clip)
    assert (info.frames, info.width, info.height, info.has_audio, info.variable_rate) == (64, 80, 48, False, False)
    decoded = []
    real_open = av.open

    class Counting:
        def __init__(self, c):
            self._c = c

        def __getattr__(self, name):
            return getattr(self._c, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._c.__exit__(*exc)

        def decode(self, *args, **kwargs):
            for f in self._c.decode(*args, **kwargs):
                decoded.append(f.pts)
                yield f

    monkeypatch.setattr(av, "open", lambda *a, **k: Counting(real_open(*a, **k)))
    tail = clip_reader.read_tail(clip, 5, info)
    assert tail.shape == (5, 3, 48, 80)
    assert len(decoded) <= 5 + 8  # from the keyframe before frame 59, not all 64
    green = tail[:, 1, 40, 60].to(torch.int32)
    assert (green - torch.arange(59, 64) * 3).abs().max() <= 3  # the last five, in order (h264 is lossy)
    batches = list(clip_reader.iter_frames(clip, batch=16))
    assert [b.shape[0] for b in batches] == [16, 16, 16, 16]


def test_audio_and_variable_rate_are_stated(cf, tmp_path):
    from cfcli.pipeline.clip_reader import probe_clip

    frames = pattern(9, 48, 80)
    vfr = write_clip(tmp_path / "vfr.mkv", frames, pts=[0, 1, 2, 4, 5, 7, 8, 11, 13], audio=True)
    info = probe_clip(vfr)
    assert info.frames == 9 and info.has_audio and info.variable_rate
    r = cf("extend", vfr, "--preset", TINY, "--device", "cpu", "--dtype", "float32", "--prompt", "a fox",
           "--frames", 4, "--seed", 1, "--codec", "ffv1", "--out", tmp_path / "x.mkv", "--context-frames", 5)
    assert r.exit_code == 0, r.output
    assert "audio; it is not carried into the output" in r.output and "variable frame rate" in r.output
    assert torch.equal(read_video(tmp_path / "x.mkv").frames[:9], torch.from_numpy(frames).permute(0, 3, 1, 2))


def test_not_a_clip_is_refused_before_any_model(cf, tmp_path, models_loaded):
    Image.new("RGB", (80, 48)).save(tmp_path / "pic.png")
    (tmp_path / "text.mp4").write_text("hello")
    shutil.copy(FIXTURES / "weights" / "config.json", tmp_path / "config.mkv")
    for clip, phrase in [(tmp_path / "text.mp4", "cannot read"), (tmp_path / "config.mkv", "cannot read"),
                         (tmp_path / "none.mp4", "clip not found")]:
        out = tmp_path / "x.mkv"
        r = cf("extend", clip, "--preset", TINY, "--device", "cpu", "--prompt", "p", "--out", out)
        refused(r, phrase, out)
    assert models_loaded == []
    assert json.loads((FIXTURES / "weights" / "config.json").read_text())  # the fixture itself was not touched
