"""`cf serve` and its client: a job handed to the resident server is made, shown and ended as a local one is.

One real `cf serve` (a subprocess on the tiny frame-wise preset, CPU) serves the module; the test process is its
client (`CF_HOME` pointed at the server's). The last test stops it with SIGTERM.
"""

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from cfcli.pipeline.video import read_video

from conftest import FIXTURES, PROMPT

TINY = FIXTURES / "tiny-framewise.yaml"
LOCAL = ["--preset", TINY, "--device", "cpu", "--dtype", "float32", "--no-server"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("serve")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CF_")}
    env |= {"CF_HOME": str(home / "cf-home"), "XDG_CONFIG_HOME": str(home / "config"), "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(home / "hf")}
    log = open(home / "serve.log", "w")  # noqa: SIM115 - open while the server runs
    proc = subprocess.Popen([sys.executable, "-m", "cfcli", "serve", "--preset", str(TINY), "--device", "cpu",
                             "--dtype", "float32", "--port", "0"], cwd=home, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    entry = home / "cf-home" / "serve.json"
    deadline = time.monotonic() + 180
    while not entry.exists():
        assert proc.poll() is None and time.monotonic() < deadline, (home / "serve.log").read_text()
        time.sleep(0.05)
    yield SimpleNamespace(home=home, cf_home=home / "cf-home", proc=proc, log=home / "serve.log",
                          entry=json.loads(entry.read_text()))
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)
    log.close()


@pytest.fixture
def client(server, monkeypatch):
    """This process as a client of `server`."""
    monkeypatch.setenv("CF_HOME", str(server.cf_home))
    return server


def served(cf, *args):
    return cf("generate", PROMPT, *args)


def local(cf, *args):
    return cf("generate", PROMPT, *LOCAL, *args)


def summary_of(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


class Recorder:
    """A `View` that keeps every call (and may act on them)."""

    def __init__(self, quiet=False, on_progress=lambda: None, on_start=lambda: None):
        self.quiet, self.calls, self.on_progress, self.on_start = quiet, [], on_progress, on_start

    def line(self, markup):
        self.calls.append(("line", markup))

    def progress_start(self, fps):
        self.calls.append(("progress_start", fps))
        self.on_start()

    def progress(self, made, goal, elapsed, mem_gib):
        self.calls.append(("progress", made, goal))
        self.on_progress()

    def progress_end(self):
        self.calls.append(("progress_end",))

    def summary(self, fields, phases=None):
        self.calls.append(("summary", fields))

    def stopped(self):
        return 0

    def summaries(self) -> list[dict]:
        return [c[1] for c in self.calls if c[0] == "summary"]


def submit(kind, job, view) -> int:
    from cfcli.serve import client, registry

    return client.submit(registry.read(), kind, job, view)


def test_a_served_job_equals_the_local_one_to_the_bit(cf, client, tmp_path):
    a, b = tmp_path / "a.mkv", tmp_path / "b.mkv"
    ra = served(cf, "--frames", 9, "--seed", 4, "--out", a, "--codec", "ffv1", "--save-latents", tmp_path / "a.st",
                "--json")
    rb = local(cf, "--frames", 9, "--seed", 4, "--out", b, "--codec", "ffv1", "--save-latents", tmp_path / "b.st",
               "--json")
    assert ra.exit_code == 0 and rb.exit_code == 0, ra.output + rb.output
    sa, sb = summary_of(ra), summary_of(rb)
    assert sa["server"] == client.entry["url"] and sb["server"] is None
    assert {k: v for k, v in sa.items() if k not in ("server", "phases", "path") and not k.endswith(("_s", "fps"))} \
        == {k: v for k, v in sb.items() if k not in ("server", "phases", "path") and not k.endswith(("_s", "fps"))}
    assert sa["phases"]["clock"] == "job" and sa["phases"]["client"]["first_frame_s"] > 0
    la, lb = load_file(str(tmp_path / "a.st")), load_file(str(tmp_path / "b.st"))
    assert all((la[k] == lb[k]).all() for k in lb)
    va, vb = read_video(a), read_video(b)
    assert (va.frames == vb.frames).all() and va.metadata == vb.metadata
    # what a local run shows, shown here: the header, the progress lines, the summary line
    assert f"→ {a}" in ra.output and "generating 9/9 frames" in ra.output and f"✓ {a}" in ra.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mkv", "a.st", "b.mkv", "b.st"]  # no temp or lock left


def test_extend_on_the_server_equals_extend_here(cf, client, tmp_path):
    clip = tmp_path / "clip.mkv"
    assert local(cf, "--frames", 9, "--seed", 1, "--out", clip, "--codec", "ffv1").exit_code == 0
    ra = cf("extend", clip, "--frames", 8, "--seed", 2, "--out", tmp_path / "a.mkv", "--json")
    rb = cf("extend", clip, "--frames", 8, "--seed", 2, "--out", tmp_path / "b.mkv", "--json", "--device", "cpu",
            "--dtype", "float32", "--no-server")
    assert ra.exit_code == 0 and rb.exit_code == 0, ra.output + rb.output
    assert summary_of(ra)["server"] == client.entry["url"] and summary_of(ra)["generated_frames"] == 8
    assert (read_video(tmp_path / "a.mkv").frames == read_video(tmp_path / "b.mkv").frames).all()
    assert "extending with the clip's own preset" in ra.output  # the clip's preset, chosen on the server


def test_refusals_and_errors_come_back_as_local_ones(cf, client, tmp_path):
    for args in (["--frames", 0], ["--seed", -1], ["--image", tmp_path / "missing.png"]):
        ra, rb = served(cf, *args, "--out", tmp_path / "x.mp4"), local(cf, *args, "--out", tmp_path / "x.mp4")
        assert ra.exit_code == rb.exit_code == 1
        assert ra.output.splitlines()[-2:] == rb.output.splitlines()[-2:]
    out = tmp_path / "kept.mp4"
    out.write_bytes(b"mine")
    r = served(cf, "--frames", 5, "--out", out)
    assert r.exit_code == 1 and "already exists" in r.output and out.read_bytes() == b"mine"
    r = cf("extend", tmp_path / "nothing.mp4", "--frames", 4)
    assert r.exit_code == 1 and "nothing.mp4" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.mp4"]


def test_ctrl_c_stops_the_served_job_and_keeps_a_playable_partial(client, tmp_path):
    from cfcli.jobs.generate import GenerateJob

    def interrupt():  # the first frames are in: this client gets Ctrl-C
        if not stopped:
            stopped.append(1)
            os.kill(os.getpid(), signal.SIGINT)

    stopped, view = [], Recorder(on_progress=interrupt)
    out = tmp_path / "stopped.mkv"
    code = submit("generate", GenerateJob(PROMPT, frames=81, seed=1, out=out, codec="ffv1"), view)
    assert code == 130
    (summary,) = view.summaries()
    assert summary["interrupted"] and 0 < summary["frames"] < 81
    assert read_video(out).frames.shape[0] == summary["frames"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stopped.mkv"]
    # the server goes on: the next job runs whole
    view = Recorder()
    assert submit("generate", GenerateJob(PROMPT, frames=5, seed=1, out=tmp_path / "next.mkv", codec="ffv1"),
                  view) == 0


def test_a_client_killed_outright_stops_its_job_and_the_partial_is_kept(client, tmp_path):
    out = tmp_path / "orphan.mkv"
    proc = subprocess.Popen([sys.executable, "-m", "cfcli", "generate", PROMPT, "--frames", "161", "--seed", "1",
                             "--out", str(out), "--codec", "ffv1"], stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"CF_HOME": str(client.cf_home)})
    for line in proc.stderr:  # the first progress line: frames are in the file
        if line.startswith("generating"):
            break
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 60
    while not out.exists():  # the server stops the job at its next block and keeps what it wrote
        assert time.monotonic() < deadline, client.log.read_text()[-2000:]
        time.sleep(0.05)
    frames = read_video(out).frames.shape[0]
    assert 0 < frames < 161 and read_video(out).metadata["frames"] == frames
    assert "cancelled by its client" in client.log.read_text()


def test_two_clients_at_once_are_queued(client, tmp_path):
    from cfcli.jobs.generate import GenerateJob

    first_running, results = threading.Event(), {}
    first, second = Recorder(on_start=first_running.set), Recorder()

    def run(name, view, frames):
        job = GenerateJob(PROMPT, frames=frames, seed=5, out=tmp_path / f"{name}.mkv", codec="ffv1")
        results[name] = submit("generate", job, view)

    t = threading.Thread(target=run, args=("first", first, 81))
    t.start()
    assert first_running.wait(60)
    run("second", second, 9)
    t.join(60)
    assert results == {"first": 0, "second": 0}
    assert ("line", "[dim]queued on cf serve behind 1 job(s)…[/]") in second.calls
    assert read_video(tmp_path / "first.mkv").frames.shape[0] == 81
    assert read_video(tmp_path / "second.mkv").frames.shape[0] == 9


def test_default_names_and_settings_are_the_clients(cf, client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CF_OUTPUT_DIR", "made")
    monkeypatch.setenv("CF_CODEC", "ffv1")
    r = served(cf, "--frames", 5, "--seed", 2, "--json")
    assert r.exit_code == 0, r.output
    assert Path(summary_of(r)["path"]) == tmp_path / "made" / "a-fox-running-through-a-snowy-forest-at-dawn-2.mkv"
    assert [p.name for p in (tmp_path / "made").iterdir()] == ["a-fox-running-through-a-snowy-forest-at-dawn-2.mkv"]
    assert not (client.home / "made").exists()


def test_a_job_for_another_preset_switches_the_server_and_says_so(cf, client, tmp_path):
    chunk = FIXTURES / "tiny-chunkwise.yaml"
    r = served(cf, "--preset", chunk, "--frames", 9, "--seed", 1, "--out", tmp_path / "c.mkv", "--codec", "ffv1")
    assert r.exit_code == 0, r.output
    assert "cf serve switches from tiny-framewise" in r.output and "to tiny-chunkwise" in r.output
    mine = local(cf, "--frames", 9, "--seed", 1, "--out", tmp_path / "l.mkv", "--codec", "ffv1")
    assert mine.exit_code == 0
    r = served(cf, "--frames", 9, "--seed", 1, "--out", tmp_path / "f.mkv", "--codec", "ffv1")
    assert r.exit_code == 0 and "switches from tiny-chunkwise" in r.output  # no preset given: the server's own
    assert (read_video(tmp_path / "f.mkv").frames == read_video(tmp_path / "l.mkv").frames).all()


def test_a_job_with_a_lora_switches_the_server_and_equals_the_local_one(cf, client, tmp_path, monkeypatch):
    """`--lora` is a session option: the client sends the file's absolute path (the server runs in another folder), the
    server switches to a session with it, and a job without it switches back."""
    from test_lora import factors, write

    monkeypatch.chdir(tmp_path)
    write(tmp_path / "style.safetensors", factors(1))
    args = ["--lora", "style.safetensors:0.5", "--frames", 5, "--seed", 3, "--codec", "ffv1"]
    ra = served(cf, *args, "--out", tmp_path / "a.mkv", "--save-latents", tmp_path / "a.st")
    rb = local(cf, *args, "--out", tmp_path / "b.mkv", "--save-latents", tmp_path / "b.st")
    assert ra.exit_code == 0 and rb.exit_code == 0, ra.output + rb.output
    assert "cf serve switches from tiny-framewise" in ra.output and "LoRA style.safetensors:0.5" in ra.output
    assert torch.equal(load_file(str(tmp_path / "a.st"))["latents"], load_file(str(tmp_path / "b.st"))["latents"])
    rc = served(cf, "--frames", 5, "--seed", 3, "--codec", "ffv1", "--out", tmp_path / "c.mkv")
    assert rc.exit_code == 0 and "switches from tiny-framewise" in rc.output and "LoRA" not in rc.output.split("to")[-1]
    assert not torch.equal(read_video(tmp_path / "c.mkv").frames, read_video(tmp_path / "a.mkv").frames)


def test_the_token_is_required(cf, client, tmp_path, monkeypatch):
    from urllib.parse import urlsplit

    url = urlsplit(client.entry["url"])
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.request("POST", "/api/jobs", json.dumps({"kind": "generate", "job": {}}), headers)
        assert conn.getresponse().status == 401
        conn.close()
    other = tmp_path / "home"
    other.mkdir()
    (other / "serve.json").write_text(json.dumps(client.entry | {"token": "wrong"}))
    monkeypatch.setenv("CF_HOME", str(other))
    r = served(cf, "--frames", 5, "--out", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "refused this client's token" in r.output
    assert not (tmp_path / "x.mp4").exists()


def test_the_live_page_comes_from_the_same_server(client):
    import httpx

    from live_server import Client

    url, token = client.entry["url"], client.entry["token"]
    assert httpx.get(url + "/api/info").status_code == 401
    info = httpx.get(url + f"/api/info?token={token}").json()
    assert info["serve"] is True and info["preset"] == "tiny-framewise"
    with Client(url.replace("http", "ws") + f"/ws?token={token}") as c:
        c.send(type="claim")
        c.send(type="start", prompt=PROMPT, seed=3, record=False)
        assert c.kind("started")["seed"] == 3
        c.until(frames=2)
        c.send(type="stop")
        assert c.kind("ended")


def test_the_client_never_imports_torch(client, tmp_path):
    code = ("import sys\nfrom cfcli.cli import app\n"
            "try:\n    app()\nexcept SystemExit as exc:\n    code = exc.code\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch', code)")
    args = ["generate", PROMPT, "--frames", 5, "--seed", 1, "--out", tmp_path / "t.mkv", "--codec", "ffv1", "-q"]
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=os.environ | {"CF_HOME": str(client.cf_home)}, timeout=120)
    assert done.stdout.split() == ["no", "torch", "0"], done.stderr
    assert read_video(tmp_path / "t.mkv").frames.shape[0] == 5


def test_a_stale_entry_runs_here_and_says_why(cf, tmp_path, monkeypatch):
    from cfcli.serve import registry
    from live_server import free_port

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    registry.publish(registry.Entry(f"http://127.0.0.1:{free_port()}", "t", dead.pid, "framewise"))
    r = cf("generate", PROMPT, *LOCAL[:-1], "--frames", 5, "--out", tmp_path / "a.mp4")
    assert r.exit_code == 0 and f"(process {dead.pid}) is gone; running here" in r.output
    assert registry.read() is None  # the stale entry is removed
    registry.publish(registry.Entry(f"http://127.0.0.1:{free_port()}", "t", os.getpid(), "framewise"))
    r = cf("generate", PROMPT, *LOCAL[:-1], "--frames", 5, "--out", tmp_path / "b.mp4")
    assert r.exit_code == 0 and "does not answer" in r.output and "running here" in r.output
    assert (tmp_path / "b.mp4").is_file()


def test_the_entry_is_the_users_alone(tmp_path):
    from cfcli.serve import registry

    path = registry.publish(registry.Entry("http://127.0.0.1:1", "secret", 1, "framewise"))
    assert path.stat().st_mode & 0o777 == 0o600
    assert registry.read().token == "secret"


def test_a_cancelled_job_stops_once_at_its_next_report():
    from cfcli.pipeline.signals import Stopped
    from cfcli.serve.queue import Job, ServerView

    posted = []
    job = Job("generate", None, {}, False, posted.append)
    view = ServerView(job)
    view.progress(1, 9, 0.1, None)
    job.signum = signal.SIGINT
    with pytest.raises(Stopped):
        view.progress(2, 9, 0.2, None)
    view.progress(3, 9, 0.3, None)  # the writing loop keeps the block it holds: no second stop
    assert view.stopped() == signal.SIGINT and [e["made"] for e in posted] == [1, 2, 3]


def test_sigterm_stops_the_running_job_keeps_its_frames_and_withdraws_the_entry(client, tmp_path):
    from cfcli.jobs.generate import GenerateJob

    view = Recorder(on_start=lambda: client.proc.send_signal(signal.SIGTERM))
    out = tmp_path / "last.mkv"
    code = submit("generate", GenerateJob(PROMPT, frames=81, seed=1, out=out, codec="ffv1"), view)
    assert code == 128 + signal.SIGTERM
    (summary,) = view.summaries()
    assert summary["interrupted"] and read_video(out).frames.shape[0] == summary["frames"] < 81
    assert client.proc.wait(60) == 128 + signal.SIGTERM
    assert not (client.cf_home / "serve.json").exists()
