"""Compiled code kept between processes (`cfcli.pipeline.compile_cache`): the key it is filed under, writes that are
atomic and only when something is new, damaged files that are only a miss, the engine's two hooks, and a real
`torch.compile` on the CPU whose artefacts a fresh process with empty PyTorch caches loads instead of compiling."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from cfcli.pipeline import compile_cache
from cfcli.pipeline.compile_cache import Artefacts

from conftest import fixture_engine


@dataclass
class Info:
    """Stands in for `torch.compiler`'s `CacheInfo`: artefact names by kind."""

    artifacts: dict = field(default_factory=dict)


def saving(monkeypatch, data: bytes, **kinds) -> None:
    """`torch.compiler.save_cache_artifacts` returns `data` listing `kinds` (kind -> names)."""
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (data, Info(kinds)))


def disk_full(*args):
    raise OSError(28, "No space left on device")


def test_the_key_names_torch_the_device_the_dtype_the_shapes_and_the_compiled_modules():
    from cfcli.models.dit import block_linear
    from cfcli.ops.weight_quant import quantize_int8_

    engine = fixture_engine("tiny-framewise.yaml")
    key = compile_cache.key(engine)
    assert key["torch"] == torch.__version__ and key["device"] == "cpu" and key["dtype"] == "float32"
    assert key["dit"]["dim"] == engine.dit.cfg.dim and key["latent"] == [1, *engine.latent_hw]
    path = compile_cache.path_for(key)
    assert path.parent == compile_cache.cf_home() / "compiled" and path == compile_cache.path_for(json.loads(
        json.dumps(key)))  # the same key, the same file
    others = [compile_cache.key(fixture_engine("tiny-chunkwise.yaml"))]
    engine.applied.add("fused_gelu")
    others.append(compile_cache.key(engine))
    quantize_int8_(engine.dit, block_linear)
    others.append(compile_cache.key(engine))
    engine.dtype = torch.bfloat16
    others.append(compile_cache.key(engine))
    paths = {path, *map(compile_cache.path_for, others)}
    assert len(paths) == 5, "every one of those changes the compiled code: a file of its own"


def test_a_missing_or_damaged_file_is_a_quiet_miss_and_is_written_over(monkeypatch, capfd):
    key = {"torch": torch.__version__, "device": "cpu"}
    missing = compile_cache.load(key)
    assert missing == Artefacts(compile_cache.path_for(key)) and not missing.path.exists()
    path = missing.path
    path.parent.mkdir(parents=True)
    for damaged in (b"", b"not a cache", b"\xff" * 4096):
        path.write_bytes(damaged)
        assert compile_cache.load(key).known == frozenset()
    assert capfd.readouterr().err == ""  # PyTorch's warning and traceback kept from the user
    saving(monkeypatch, b"artefacts", inductor=["a"])
    artefacts = compile_cache.load(key)
    assert compile_cache.save(artefacts) and path.read_bytes() == b"artefacts"
    assert artefacts.known == {"inductor:a"} and os.listdir(path.parent) == [path.name]


def test_a_save_writes_only_what_is_new_and_never_fails_the_run(monkeypatch, tmp_path):
    from cfcli.paths import write_atomic

    artefacts = Artefacts(tmp_path / "compiled" / "k.bin")
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: None)  # nothing was compiled
    assert not compile_cache.save(artefacts) and not artefacts.path.exists()
    saving(monkeypatch, b"one", inductor=["a"], aot_autograd=["b"])
    assert compile_cache.save(artefacts) and artefacts.path.read_bytes() == b"one"
    saving(monkeypatch, b"two", inductor=["a"])  # a run that used only what the file holds
    assert not compile_cache.save(artefacts) and artefacts.path.read_bytes() == b"one"
    saving(monkeypatch, b"three", inductor=["a", "c"], aot_autograd=["b"])  # a new shape compiled
    monkeypatch.setattr(compile_cache, "write_atomic", disk_full)
    assert not compile_cache.save(artefacts) and artefacts.path.read_bytes() == b"one"  # the old file stays
    monkeypatch.setattr(compile_cache, "write_atomic", write_atomic)
    assert compile_cache.save(artefacts) and artefacts.path.read_bytes() == b"three"
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", disk_full)
    assert not compile_cache.save(artefacts)


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(monkeypatch, tmp_path):
    from cfcli.paths import write_atomic

    path = tmp_path / "k.bin"
    write_atomic(path, b"old")
    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["k.bin"]


def test_accelerate_loads_the_compiled_code_before_compiling(monkeypatch):
    """On a GPU (faked here: the levers themselves are stubbed) the file is read before the blocks are compiled, and
    not at all without --compile."""
    from cfcli.pipeline import fast
    from cfcli.pipeline.engine import EngineOptions

    calls = []
    monkeypatch.setattr(fast, "use_dit_kernels", lambda *a: ["fused_gelu"])
    monkeypatch.setattr(fast, "compile_blocks", lambda dit: calls.append("compile"))
    monkeypatch.setattr(compile_cache, "key", lambda engine: calls.append(sorted(engine.applied)) or {"k": 1})
    monkeypatch.setattr(compile_cache, "load", lambda key: calls.append(("load", key)) or Artefacts(Path("k")))
    options = EngineOptions(graphs=False, tuned_vae=False)
    engine = fixture_engine("tiny-framewise.yaml")
    engine.device = torch.device("cuda")
    engine.accelerate(options)
    assert calls == [["fused_gelu"], ("load", {"k": 1}), "compile"] and engine.artefacts == Artefacts(Path("k"))
    calls.clear()
    engine = fixture_engine("tiny-framewise.yaml")
    engine.device = torch.device("cuda")
    engine.accelerate(EngineOptions(compile=False, graphs=False, tuned_vae=False))
    assert calls == [] and engine.artefacts is None


def test_the_first_video_that_runs_to_its_end_saves_the_compiled_code_once(monkeypatch, golden):
    saved = []
    monkeypatch.setattr(compile_cache, "save", saved.append)
    engine = fixture_engine("tiny-framewise.yaml")
    text_kv = engine.text_kv(golden["framewise_4step_t2v.embeds"][None])
    list(engine.generate(text_kv, 2, seed=0, decode=False))
    assert saved == []  # nothing compiled: nothing to keep (the CPU, or --no-compile)
    engine.artefacts = artefacts = Artefacts(Path("k"))
    chunks = engine.generate(text_kv, 2, seed=0, decode=False)
    next(chunks)
    chunks.close()  # a video stopped early (its compiled code may be incomplete)
    assert saved == []
    list(engine.generate(text_kv, 2, seed=0, decode=False, run_frames=3))  # cut from a longer run, but whole
    assert saved == [artefacts] and engine.artefacts is None
    list(engine.generate(text_kv, 2, seed=0, decode=False))
    assert saved == [artefacts]  # once: the first video compiled what the later ones run


ROUND_TRIP = """
import json, sys, torch
from torch._dynamo.utils import counters
from cfcli.pipeline import compile_cache

key = {"torch": torch.__version__, "test": "round trip"}
artefacts = compile_cache.load(key)
f = torch.compile(lambda x: (x.sin() * 2 + 1).relu(), dynamic=False)
y = f(torch.linspace(-2, 2, 16))
print(json.dumps({"known": len(artefacts.known), "saved": compile_cache.save(artefacts), "y": y.tolist(),
                  "path": str(artefacts.path), "hits": counters["inductor"]["fxgraph_cache_hit"],
                  "misses": counters["inductor"]["fxgraph_cache_miss"]}))
"""


def test_a_fresh_process_loads_the_compiled_code_instead_of_compiling(tmp_path):
    """Two processes, each with empty PyTorch caches of its own: the first compiles and saves, the second finds
    the graph in what it loaded from `$CF_HOME` (a cache hit, not a compile) and has nothing new to save."""
    def run(name: str) -> dict:
        env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1]), "CF_HOME": str(tmp_path / "cf-home"),
                            "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / name / "inductor"),
                            "TRITON_CACHE_DIR": str(tmp_path / name / "triton"), "TORCHINDUCTOR_COMPILE_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", ROUND_TRIP], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    first = run("first")
    assert first["known"] == 0 and first["saved"] and first["misses"] == 1 and first["hits"] == 0
    assert Path(first["path"]).is_file() and Path(first["path"]).parent == tmp_path / "cf-home" / "compiled"
    second = run("second")
    assert second["known"] > 0 and second["hits"] == 1 and second["misses"] == 0
    assert not second["saved"] and second["y"] == first["y"]
