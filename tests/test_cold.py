"""What a user waits for: `cf generate --json`'s phase record and `cf bench --cold` (fresh processes, tiny preset)."""

import json
import tempfile
import time

import pytest

from cfcli.cli.cold import generate_options
from cfcli.pipeline.cold import STEPS
from cfcli.pipeline.phases import Phases
from conftest import FIXTURES, PROMPT

TINY = ["--preset", FIXTURES / "tiny-framewise.yaml", "--device", "cpu"]


def check_accounting(ph: dict, wall: float | None = None) -> None:
    """Every phase ≥ 0, the sequential ones add up to at most the total, the first frame inside the run."""
    for key in (*STEPS, "first_block_s", "first_frame_s", "total_s"):
        assert ph[key] is not None and ph[key] >= 0, key
    assert sum(ph[k] for k in STEPS) <= ph["total_s"] + 1e-6
    assert ph["startup_s"] + ph["prepare_s"] + ph["text_s"] + ph["load_s"] < ph["first_frame_s"] <= ph["total_s"]
    assert ph["first_block_s"] <= ph["generation_s"]
    if wall is not None:
        assert ph["total_s"] <= wall


# ---------------------------------------------------------------------------------------------------------------
# cfcli.pipeline.phases and `cf generate --json`

def test_generate_json_has_phases_and_keeps_its_keys(cf, tmp_path):
    out = tmp_path / "fox.mp4"
    runs = [json.loads(cf("generate", PROMPT, *TINY, "--frames", 9, "--seed", 1, "--out", out, "--overwrite",
                          "--json", "--quiet").stdout) for _ in range(2)]
    first, again = runs
    assert first["frames"] == 9 and first["path"] == str(out) and first["generation_fps"] > 0
    ph = first["phases"]
    check_accounting(ph)
    assert ph["clock"] in ("proc", "import")  # in-process: no parent handed a start time
    weights = FIXTURES / "weights"
    assert ph["loads"]["dit"]["bytes"] == (weights / "causal_forcing.pt").stat().st_size
    assert ph["loads"]["vae"]["bytes"] == (weights / "Wan2.1_VAE.pth").stat().st_size
    assert ph["loads"]["dit"]["mb_s"] > 0 and ph["load_s"] >= ph["loads"]["dit"]["s"]
    assert ph["text_cache_hit"] is False and "text_encoder" in ph["loads"]
    assert again["phases"]["text_cache_hit"] is True and "text_encoder" not in again["phases"]["loads"]


def test_process_start_comes_from_the_parent_when_given(monkeypatch):
    monkeypatch.setenv("CF_PROCESS_T0", repr(time.time() - 5))
    phases = Phases()
    assert phases.clock == "parent" and 5 <= phases.now() < 10
    monkeypatch.setenv("CF_PROCESS_T0", "soon")  # unreadable: the kernel's start time instead
    assert Phases().clock in ("proc", "import")


def test_marks_keep_the_first_time_and_spans_add_up():
    phases = Phases()
    phases.mark("x")
    first = phases.marks["x"]
    with phases.span("s"):
        time.sleep(0.01)
    phases.mark("x")
    assert phases.marks["x"] == first and phases.spans["s"] >= 0.01


# ---------------------------------------------------------------------------------------------------------------
# cf bench --cold

def test_generate_options_pass_the_bench_flags_on():
    opts = generate_options("tiny.yaml", 9, None, 80, "cpu", None, False, True, None, "wan", None, True)
    assert opts == ["--preset", "tiny.yaml", "--frames", "9", "--width", "80", "--device", "cpu",
                    "--decoder", "wan", "--no-compile", "--low-vram"]
    assert generate_options("tiny.yaml", 9, None, None, None, None, None, True, None, "wan", None, False,
                            plain=True) == ["--preset", "tiny.yaml", "--frames", "9", "--decoder", "wan", "--plain"]
    # compile asked for by name passes on; left to auto, the fresh process decides as a user's would
    assert "--compile" in generate_options("tiny.yaml", 9, None, None, None, None, True, True, None, "wan", None, False)


def test_cold_bench_runs_fresh_processes(cf, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    r = cf("bench", "--cold", "--repeat", 2, *TINY, "--frames", 5, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    runs = report["runs"]
    assert [(x["run"], x["compile_cache"], x["text_cache_hit"]) for x in runs] == [(1, "empty", False),
                                                                                    (2, "warm", True)]
    for run in runs:
        check_accounting(run, run["wall_s"])
        assert run["clock"] == "parent" and run["frames"] == 5
        assert run["fps_seen"] == pytest.approx(5 / run["wall_s"])
    assert report["summary"]["warm_median"]["wall_s"] == runs[1]["wall_s"]  # the median of one warm run
    assert report["command"][:3] == ["cf", "generate", report["command"][2]] and "--json" in report["command"]
    assert list(scratch.iterdir()) == []  # the videos and compile caches went with the temp folder


def test_cold_bench_needs_real_weights(cf):
    r = cf("bench", "--cold", "--random-weights", *TINY)
    assert r.exit_code == 1 and "needs the preset's weights" in r.output


# ---------------------------------------------------------------------------------------------------------------
# cf bench --served

def test_served_bench_starts_a_server_times_fresh_clients_and_stops_it(cf, tmp_path, monkeypatch):
    from cfcli.serve import registry

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    r = cf("bench", "--served", "--repeat", 2, *TINY, "--dtype", "float32", "--frames", 5, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["server_start_s"] > 0 and [x["run"] for x in report["runs"]] == [1, 2]
    for run in report["runs"]:
        assert run["frames"] == 5 and 0 < run["first_frame_s"] < run["wall_s"]
        assert 0 < run["server_total_s"] < run["wall_s"] and run["generation_fps"] > 0
        ph = run["server_phases"]
        assert ph["total_s"] == run["server_total_s"] and 0 < ph["generation_s"] < ph["total_s"]
        assert ph["tail_s"] >= 0 and ph["first_block_s"] <= ph["generation_s"]
    assert report["summary"]["wall_s"] == pytest.approx((report["runs"][0]["wall_s"] + report["runs"][1]["wall_s"]) / 2)
    assert "--frames" in report["command"] and registry.read() is None  # the server it started is gone
    assert [p.name for p in scratch.iterdir()] == []


def test_served_bench_refuses_with_cold(cf):
    r = cf("bench", "--served", "--cold", *TINY)
    assert r.exit_code == 1 and "two benches" in r.output


NO_DYNAMO = """
import os, sys
class Watch:  # notes the first import of torch._dynamo (a fresh process's seconds)
    def find_spec(self, name, path=None, target=None):
        if name == "torch._dynamo":
            open(os.environ["MARK"], "w").close()
        return None
sys.meta_path.insert(0, Watch())
sys.argv = ["cf", *sys.argv[1:]]
from cfcli.cli import main
main()
"""


def test_a_run_that_compiles_nothing_never_imports_the_compiler(tmp_path):
    """Importing torch._dynamo costs seconds (4.3 s measured on a GPU machine); only a compiling engine pays it. The
    first run on a machine traces the memory plan's decoder figures (which imports it), the next reads them."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CF_HOME": str(tmp_path / "home"), "MARK": str(tmp_path / "mark"), "CF_NO_SERVER": "1"}
    args = ["generate", PROMPT, *map(str, TINY), "--frames", "9", "--seed", "1", "--out", str(tmp_path / "a.mp4"),
            "--overwrite", "--quiet"]
    for run in (1, 2):
        (tmp_path / "mark").unlink(missing_ok=True)
        subprocess.run([sys.executable, "-c", NO_DYNAMO, *args], env=env, check=True, timeout=120)
        assert (tmp_path / "mark").exists() == (run == 1), run
