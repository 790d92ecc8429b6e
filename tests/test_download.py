"""`cf download` / `cf models` against a local fake Hub: only the needed files, resumable, verified, offline-ready.

The CLI runs in a subprocess so huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE fresh, the
way a user's shell sets them. The few in-process tests patch `huggingface_hub.constants` instead.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fakehub import FakeHub
from safetensors import safe_open
from safetensors.torch import load_file

from cfcli import hub
from cfcli.errors import CfError
from cfcli.presets import load_preset

FIXTURES = Path(__file__).parent / "fixtures"
WEIGHTS = FIXTURES / "weights"
CF, WAN, SF = "zhuhz22/Causal-Forcing", "Wan-AI/Wan2.1-T2V-1.3B", "gdhe17/Self-Forcing"
GENERATORS = {CF: ["framewise/causal_forcing.pt", "chunkwise/causal_forcing.pt", "chunkwise/longvideo.pt",
                   "causal-forcing++/framewise-2step.pt", "causal-forcing++/framewise-1step.pt"],
              SF: ["checkpoints/self_forcing_dmd.pt"]}
BASE_DIT = "diffusion_pytorch_model.safetensors"
VAE, T5 = "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth"
PROMPT = "a fox running through a snowy forest at dawn"
FRAMEWISE = [(CF, "framewise/causal_forcing.pt"), (WAN, VAE), (WAN, T5)] + [
    (WAN, f"google/umt5-xxl/{p.name}") for p in sorted((WEIGHTS / "google" / "umt5-xxl").iterdir())]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_hub():
    fake = FakeHub()
    for repo, paths in GENERATORS.items():
        for p in paths:
            fake.add(repo, p, WEIGHTS / "causal_forcing.pt")
        fake.add(repo, "README.md", b"# model card\n")
    for name in (VAE, T5, "config.json"):
        fake.add(WAN, name, WEIGHTS / name)
    for p in (WEIGHTS / "google" / "umt5-xxl").iterdir():
        fake.add(WAN, f"google/umt5-xxl/{p.name}", p)
    fake.add(WAN, BASE_DIT, os.urandom(300_000))  # the base DiT a distilled checkpoint replaces: never fetched
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def env(tmp_path, fake_hub) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=fake_hub.url, HF_HOME=str(tmp_path / "hf"), CF_HOME=str(tmp_path / "cf"),
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", COLUMNS="250",
               HF_HUB_DISABLE_TELEMETRY="1")
    return env


def cf(env: dict, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cfcli", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def cache_dir(env: dict) -> Path:
    return Path(env["HF_HUB_CACHE"]) if "HF_HUB_CACHE" in env else Path(env["HF_HOME"]) / "hub"


def snapshot(env: dict, repo: str, fake: FakeHub) -> Path:
    return cache_dir(env) / f"models--{repo.replace('/', '--')}" / "snapshots" / fake.commit(repo)


def tiny_preset(tmp_path: Path, **weights: dict) -> Path:
    """tiny-framewise.yaml's architecture, with weights named on the (fake) Hub under the official ids."""
    data = yaml.safe_load((FIXTURES / "tiny-framewise.yaml").read_text())
    data["name"] = "tiny-hub"
    data["weights"] = {"generator": {"repo": CF, "file": "framewise/causal_forcing.pt"},
                       "vae": {"repo": WAN, "file": VAE}, "text_encoder": {"repo": WAN, "file": T5},
                       "tokenizer": {"repo": WAN, "folder": "google/umt5-xxl"}, **weights}
    path = tmp_path / "tiny-hub.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --- end to end through the CLI ---------------------------------------------------------------------------------------

def test_fresh_download_then_cached_noop(env, fake_hub, tmp_path):
    r = ok(cf(env, "download", "--mode", "framewise"))
    gets = sorted((q.repo, q.path) for q in fake_hub.file_gets())
    assert gets == sorted(FRAMEWISE)  # exactly the named files, each once
    assert not fake_hub.requests(path=BASE_DIT)  # never even asked about
    assert "ready:" in r.stderr and "framewise" in r.stderr

    # Standard HF cache layout: snapshot links to blobs named by the sha256, refs/main at the commit.
    pt = snapshot(env, CF, fake_hub) / "framewise" / "causal_forcing.pt"
    assert pt.is_symlink() and Path(os.path.realpath(pt)).name == sha256(WEIGHTS / "causal_forcing.pt")
    assert (cache_dir(env) / "models--zhuhz22--Causal-Forcing" / "refs" / "main").read_text() == fake_hub.commit(CF)

    # The checkpoint was converted once: bf16, bare keys, only the EMA weights the preset uses.
    conv = Path(env["CF_HOME"]) / "converted" / f"{sha256(WEIGHTS / 'causal_forcing.pt')}-ema.safetensors"
    assert conv.is_file() and not list(conv.parent.glob(".*.tmp"))
    got = load_file(conv)
    ema = torch.load(WEIGHTS / "causal_forcing.pt", weights_only=True)["generator_ema"]
    assert set(got) == {k.removeprefix("model.") for k in ema}
    assert all(got[k.removeprefix("model.")].dtype == torch.bfloat16 for k in ema)
    assert all(torch.equal(got[k.removeprefix("model.")], v.bfloat16()) for k, v in ema.items())

    # Second run: everything cached and verified → no file is downloaded, nothing is converted again.
    mtime = conv.stat().st_mtime_ns
    fake_hub.reset_log()
    r2 = ok(cf(env, "download", "--mode", "framewise"))
    assert fake_hub.file_gets() == [] and fake_hub.requests(method="HEAD") == []
    assert "downloaded" not in r2.stderr and "cached" in r2.stderr
    assert conv.stat().st_mtime_ns == mtime


def test_dry_run_lists_files_sizes_and_cache(env, fake_hub):
    r = ok(cf(env, "download", "--dry-run"))
    assert fake_hub.file_gets() == [] and not (cache_dir(env) / "models--zhuhz22--Causal-Forcing").exists()
    assert "dry run: asking the Hub" in r.stderr and "HF_HUB_OFFLINE=1 cf download --dry-run" in r.stderr
    vae_size = hub.human((WEIGHTS / VAE).stat().st_size)
    assert f"{WAN}/{VAE}" in r.stdout and vae_size in r.stdout and "download" in r.stdout
    assert "convert after download" in r.stdout and BASE_DIT not in r.stdout
    assert "free in" in r.stdout

    ok(cf(env, "download", "--quiet"))
    r = ok(cf(env, "download", "--dry-run"))
    assert "cached, verified" in r.stdout and "to download: 0 B in 0 file(s)" in r.stdout


def test_connection_cut_mid_file_resumes(env, fake_hub):
    key = f"{WAN}/{VAE}"
    fake_hub.cut_after[key] = 1_000_000
    r = ok(cf(env, "download", "--preset", "framewise"))
    assert len(fake_hub.requests(WAN, VAE, "GET")) == 2  # the cut, then the rest within the same run
    assert "resum" in r.stderr.lower()
    assert sha256(snapshot(env, WAN, fake_hub) / VAE) == sha256(WEIGHTS / VAE)


def test_corrupted_body_is_rejected_and_fetched_again(env, fake_hub, tmp_path):
    env = {k: v for k, v in env.items() if k != "HF_HOME"} | {"HF_HUB_CACHE": str(tmp_path / "hubcache")}
    fake_hub.corrupt[f"{CF}/framewise/causal_forcing.pt"] = 1
    r = ok(cf(env, "download"))
    assert len(fake_hub.requests(CF, "framewise/causal_forcing.pt", "GET")) == 2
    assert "sha256" in r.stderr and "retrying" in r.stderr
    assert sha256(snapshot(env, CF, fake_hub) / "framewise" / "causal_forcing.pt") == sha256(
        WEIGHTS / "causal_forcing.pt")
    blobs = cache_dir(env) / "models--zhuhz22--Causal-Forcing" / "blobs"
    assert [p.name for p in blobs.iterdir()] == [sha256(WEIGHTS / "causal_forcing.pt")]


def test_unknown_repo_and_file_give_clear_messages(env, fake_hub, tmp_path):
    r = cf(env, "download", "--preset", str(tiny_preset(tmp_path, vae={"repo": "nobody/no-such-model",
                                                                      "file": VAE})))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"repository nobody/no-such-model was not found on {fake_hub.url}" in r.stderr
    assert "HF_TOKEN" in r.stderr and fake_hub.file_gets() == []

    r = cf(env, "download", "--preset", str(tiny_preset(tmp_path, vae={"repo": WAN, "file": "no_such.pth"})))
    assert r.returncode == 1 and f"no_such.pth is not in {WAN}" in r.stderr


def test_private_repo_uses_hf_token(env, fake_hub, tmp_path):
    fake_hub.private[CF] = "hf_secret"
    preset = str(tiny_preset(tmp_path))
    r = cf(env, "download", "--preset", preset)
    assert r.returncode == 1 and "HF_TOKEN" in r.stderr
    ok(cf(env | {"HF_TOKEN": "hf_secret"}, "download", "--preset", preset, "--quiet"))
    assert all(q.authorization == "Bearer hf_secret" for q in fake_hub.requests(CF, "framewise/causal_forcing.pt"))


def test_offline_generate_from_cache_matches_fixture(env, fake_hub, tmp_path):
    preset = tiny_preset(tmp_path)
    ok(cf(env, "download", "--preset", str(preset), "--quiet"))
    fake_hub.stop()  # no network from here on
    # Only the converted generator is needed: drop the .pt from the cache to prove the converted file is what loads.
    pt = snapshot(env, CF, fake_hub) / "framewise" / "causal_forcing.pt"
    Path(os.path.realpath(pt)).unlink()
    pt.unlink()

    offline = env | {"HF_HUB_OFFLINE": "1"}
    r = ok(cf(offline, "generate", PROMPT, "--preset", str(preset), "--seed", "0", "--frames", "81", "--device",
              "cpu", "--dtype", "float32", "--save-latents", str(tmp_path / "lat.safetensors"), "--out",
              str(tmp_path / "y.mkv"), "--codec", "ffv1", "--quiet"))
    got = load_file(tmp_path / "lat.safetensors")["latents"].double()
    ref = load_file(FIXTURES / "cases.safetensors")["framewise_4step_t2v.latents"].double()
    assert got.shape == ref.shape
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-4, r.stderr

    # `cf download` offline with everything here: fine, and says it did not check the Hub.
    r = ok(cf(offline, "download", "--preset", str(preset)))
    assert "HF_HUB_OFFLINE" in r.stderr


def test_missing_file_names_the_download_command(env, fake_hub, tmp_path):
    preset = tiny_preset(tmp_path)
    ok(cf(env, "download", "--preset", str(preset), "--quiet"))
    (snapshot(env, WAN, fake_hub) / VAE).unlink()
    offline = env | {"HF_HUB_OFFLINE": "1"}
    r = cf(offline, "generate", PROMPT, "--preset", str(preset), "--frames", "5", "--device", "cpu",
           "--out", str(tmp_path / "y.mkv"), "--quiet")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"vae weights {WAN}/{VAE} are not downloaded" in r.stderr
    assert f"cf download --preset {preset}" in r.stderr
    r = cf(offline, "download", "--preset", str(preset))
    assert r.returncode == 1 and "HF_HUB_OFFLINE" in r.stderr and f"cf download --preset {preset}" in r.stderr


def test_models_lists_every_shipped_preset(env, fake_hub):
    ok(cf(env, "download", "--mode", "chunkwise", "--quiet"))
    listing = {m["name"]: m for m in json.loads(ok(cf(env, "models", "--json")).stdout)}
    assert set(listing) == {"framewise", "chunkwise", "framewise-2step", "framewise-1step", "longvideo",
                            "self-forcing"}
    assert listing["chunkwise"]["ready"] and listing["chunkwise"]["converted"] and listing["chunkwise"]["bytes"] > 0
    assert not listing["framewise"]["ready"] and listing["framewise"]["missing"] == ["generator"]
    table = ok(cf(env, "download", "--list")).stdout
    assert "chunkwise" in table and "ready" in table and "cf download --preset framewise" in table

    ok(cf(env, "download", "--all", "--quiet"))
    assert all(m["ready"] for m in json.loads(ok(cf(env, "models", "--json")).stdout))
    assert not fake_hub.requests(path=BASE_DIT)


# --- in process: fault details, conversion, disk space ----------------------------------------------------------------

@pytest.fixture
def inproc(monkeypatch, fake_hub, tmp_path):
    """huggingface_hub pointed at the fake Hub and tmp caches in this process (its constants are read at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.url)
    template = fake_hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("CF_HOME", str(tmp_path / "cf"))
    return fake_hub


def plan_file(tmp_path: Path, repo: str, path: str) -> hub.HubFile:
    needs = hub.plan([load_preset(tiny_preset(tmp_path))])
    return next(f for n in needs for f in n.files if (f.repo, f.path) == (repo, path))


def test_resume_asks_for_the_missing_range(inproc, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)  # so the cut lands after whole chunks
    monkeypatch.setattr("time.sleep", lambda s: None)
    inproc.cut_after[f"{WAN}/{VAE}"] = 1_000_000
    f = plan_file(tmp_path, WAN, VAE)
    path = hub.fetch(f, sleep=lambda s: None)
    first, second = inproc.requests(WAN, VAE, "GET")
    assert first.range is None and second.range == f"bytes={15 * 64 * 1024}-"
    assert path.read_bytes() == (WEIGHTS / VAE).read_bytes() and f.verified()


def test_persistent_corruption_gives_up_and_leaves_nothing(inproc, tmp_path):
    inproc.corrupt[f"{WAN}/{T5}"] = 99
    f = plan_file(tmp_path, WAN, T5)
    with pytest.raises(CfError, match="sha256"):
        hub.fetch(f, retries=2, sleep=lambda s: None)
    assert len(inproc.requests(WAN, T5, "GET")) == 3
    assert not f.pointer.exists() and not f.pointer.is_symlink() and not f.blob.exists()
    assert not f.cached()


def test_damaged_cached_file_is_replaced(inproc, tmp_path):
    f = plan_file(tmp_path, WAN, T5)
    hub.fetch(f)
    blob = Path(os.path.realpath(f.pointer))
    st = blob.stat()

    # Changed after it was checked (new mtime): hashed again on the next run, rejected, fetched again.
    blob.write_bytes(b"\0" * st.st_size)
    inproc.reset_log()
    hub.fetch(f, sleep=lambda s: None)
    assert len(inproc.requests(WAN, T5, "GET")) == 1 and sha256(f.pointer) == sha256(WEIGHTS / T5)

    # Silent damage (size and mtime kept) is only caught by an explicit re-check (`cf download --verify`).
    st = blob.stat()
    blob.write_bytes(b"\1" * st.st_size)
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    inproc.reset_log()
    hub.fetch(f)
    assert inproc.requests(WAN, T5, "GET") == []
    hub.fetch(f, recheck=True, sleep=lambda s: None)
    assert len(inproc.requests(WAN, T5, "GET")) == 1 and sha256(f.pointer) == sha256(WEIGHTS / T5)


def test_interrupted_conversion_leaves_no_complete_looking_file(tmp_path):
    from cfcli.convert import convert_generator

    target = tmp_path / "conv" / "x-ema.safetensors"

    def boom(done: int, total: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_generator(WEIGHTS / "causal_forcing.pt", target, True, on_tensor=boom)
    assert list(target.parent.iterdir()) == []
    convert_generator(WEIGHTS / "causal_forcing.pt", target, False)
    with safe_open(str(target), "pt") as fh:
        assert fh.metadata()["weights"] == "generator"
    raw = torch.load(WEIGHTS / "causal_forcing.pt", weights_only=True)["generator"]
    assert all(torch.equal(load_file(target)[k.removeprefix("model.")], v) for k, v in raw.items())


def test_not_enough_disk_space_is_refused_before_downloading(inproc, tmp_path, monkeypatch):
    import shutil

    class Usage:
        free = 1000

    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage())
    with pytest.raises(CfError, match="not enough disk space"):
        hub.check_space({tmp_path / "hub": 5000})
    hub.check_space({tmp_path / "hub": 999})
