"""Outputs: written beside then renamed, never lost on a failure, locked against a second run, stopped by signals
with a playable file whose metadata tells the truth."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfcli.errors import CfError
from cfcli.pipeline.outputs import reserve
from cfcli.pipeline.video import read_video

from conftest import FIXTURES, PROMPT

TINY = FIXTURES / "tiny-framewise.yaml"
BASE = ["--preset", TINY, "--device", "cpu", "--dtype", "float32"]
OLD = b"the user's own file"


def gen(cf, *args):
    return cf("generate", *BASE, PROMPT, "--seed", 1, *args)


def names(folder: Path) -> list[str]:
    """The files in `folder` (the test's cfcli home aside)."""
    return sorted(p.name for p in folder.iterdir() if p.name != "cf-home")


# -- reserve / commit / keep_partial / discard ------------------------------------------------------------------------


def test_reserve_writes_beside_and_commit_renames_into_place(tmp_path):
    final = tmp_path / "out" / "v.mp4"  # the folder is made
    target = reserve(final, overwrite=False)
    assert target.temp.parent == final.parent and target.temp.name.startswith(".v.cf-")
    assert target.temp.name.endswith(".partial.mp4") and target.temp.is_file()  # the real extension, for the muxer
    assert names(final.parent) == sorted([target.temp.name, ".v.mp4.cf-lock"])
    target.temp.write_bytes(b"video")
    assert target.commit() == final and final.read_bytes() == b"video"
    assert names(final.parent) == ["v.mp4"]  # no temp, no lock file
    assert final.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_discard_leaves_what_was_there(tmp_path):
    final = tmp_path / "v.mp4"
    final.write_bytes(OLD)
    with pytest.raises(CfError, match="already exists"):
        reserve(final, overwrite=False)
    target = reserve(final, overwrite=True)
    target.temp.write_bytes(b"half a video")
    target.discard()
    target.discard()  # idempotent
    assert final.read_bytes() == OLD and names(tmp_path) == ["v.mp4"]


def test_a_partial_takes_the_final_name_only_when_nothing_was_there(tmp_path):
    fresh = reserve(tmp_path / "a.mkv", overwrite=False)
    assert fresh.keep_partial() == tmp_path / "a.mkv"
    (tmp_path / "b.mkv").write_bytes(OLD)
    (tmp_path / "b.partial.mkv").write_bytes(b"an older partial")
    beside = reserve(tmp_path / "b.mkv", overwrite=True)
    beside.temp.write_bytes(b"new partial")
    assert beside.keep_partial() == tmp_path / "b.partial-2.mkv"
    assert (tmp_path / "b.mkv").read_bytes() == OLD and (tmp_path / "b.partial-2.mkv").read_bytes() == b"new partial"


def test_a_second_reservation_of_one_output_refuses_until_the_first_is_done(tmp_path):
    first = reserve(tmp_path / "v.mp4", overwrite=False)
    with pytest.raises(CfError, match="another cf run is writing"):
        reserve(tmp_path / "v.mp4", overwrite=True)
    first.discard()
    reserve(tmp_path / "v.mp4", overwrite=False).discard()


def test_a_killed_holder_does_not_block(tmp_path):
    """flock dies with its process: the lock file a killed run leaves behind is taken over."""
    code = ("import sys, time; from cfcli.pipeline.outputs import reserve; reserve(sys.argv[1], False); "
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "v.mp4")], stdout=subprocess.PIPE,
                              env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])})
    assert holder.stdout.readline().strip() == b"locked"
    with pytest.raises(CfError, match="another cf run"):
        reserve(tmp_path / "v.mp4", overwrite=True)
    holder.kill()
    holder.wait()
    assert (tmp_path / ".v.mp4.cf-lock").exists()  # stale
    reserve(tmp_path / "v.mp4", overwrite=True).discard()


# -- through the CLI ---------------------------------------------------------------------------------------------------


def test_a_second_run_on_the_same_output_refuses(cf, tmp_path):
    held = reserve(tmp_path / "v.mp4", overwrite=False)  # a run in progress
    r = gen(cf, "--frames", 5, "--out", tmp_path / "v.mp4", "--overwrite")
    assert r.exit_code == 1 and "another cf run is writing" in r.output and "Traceback" not in r.output
    assert names(tmp_path) == sorted([held.temp.name, ".v.mp4.cf-lock"])  # the other run's files kept
    held.discard()


FAULTS = [errno.ENOSPC, errno.EROFS, errno.EFBIG]


def _fail_on_call(monkeypatch, cls, name, n, exc):
    """Patch cls.name to raise `exc` on its n-th call (the earlier calls run)."""
    original, calls = getattr(cls, name), []

    def patched(self, *a, **k):
        calls.append(1)
        if len(calls) == n:
            raise exc
        return original(self, *a, **k)

    monkeypatch.setattr(cls, name, patched)
    return calls


@pytest.mark.parametrize("code", FAULTS, ids=[errno.errorcode[c] for c in FAULTS])
def test_a_write_failure_mid_stream_keeps_the_old_file(cf, tmp_path, monkeypatch, code):
    from cfcli.pipeline.video import VideoWriter

    out = tmp_path / "v.mkv"
    out.write_bytes(OLD)
    calls = _fail_on_call(monkeypatch, VideoWriter, "write", 2, OSError(code, os.strerror(code)))
    r = gen(cf, "--frames", 13, "--out", out, "--codec", "ffv1", "--overwrite")
    assert len(calls) == 2  # it failed mid-stream, after a block was written
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"cannot write the video {out}: {os.strerror(code)}" in r.output
    assert out.read_bytes() == OLD and names(tmp_path) == ["v.mkv"]


def test_a_pyav_error_while_closing_keeps_the_old_file(cf, tmp_path, monkeypatch):
    import av

    from cfcli.pipeline.video import VideoWriter

    out = tmp_path / "v.mp4"
    out.write_bytes(OLD)
    _fail_on_call(monkeypatch, VideoWriter, "close", 2,  # the first close is the check when the output is reserved
                  av.error.OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(out)))
    r = gen(cf, "--frames", 5, "--out", out, "--overwrite")
    assert r.exit_code == 1 and "File too large" in r.output and "file-size limit" in r.output
    assert out.read_bytes() == OLD and names(tmp_path) == ["v.mp4"]


def test_extend_in_place_on_a_full_disk_keeps_the_clip(cf, tmp_path, monkeypatch):
    from cfcli.pipeline.video import VideoWriter

    clip = tmp_path / "x.mkv"
    assert gen(cf, "--frames", 9, "--out", clip, "--codec", "ffv1").exit_code == 0
    before = clip.read_bytes()
    _fail_on_call(monkeypatch, VideoWriter, "write", 2, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    r = cf("extend", clip, *BASE, "--frames", 8, "--seed", 2, "--out", clip, "--overwrite", "--codec", "ffv1")
    assert r.exit_code == 1 and "No space left on device" in r.output and "free some disk space" in r.output
    assert clip.read_bytes() == before and names(tmp_path) == ["x.mkv"]


def test_a_late_error_keeps_the_old_file(cf, tmp_path, monkeypatch):
    from cfcli.pipeline.engine import Engine

    def late(*a, **k):
        raise CfError("something found wrong after the models loaded")

    out = tmp_path / "v.mp4"
    out.write_bytes(OLD)
    monkeypatch.setattr(Engine, "generate", late)
    r = gen(cf, "--frames", 5, "--out", out, "--overwrite")
    assert r.exit_code == 1 and "found wrong" in r.output
    assert out.read_bytes() == OLD and names(tmp_path) == ["v.mp4"]


def _interrupt_at_block(monkeypatch, n):
    from cfcli.pipeline.sampler import CausalSampler

    denoise = CausalSampler.denoise_block

    def interrupt(self, *a, **k):
        if self.blocks_done == n:
            raise KeyboardInterrupt
        return denoise(self, *a, **k)

    monkeypatch.setattr(CausalSampler, "denoise_block", interrupt)


@pytest.mark.parametrize("suffix, codec", [(".mkv", "ffv1"), (".mp4", "h264")])
def test_an_interrupted_file_says_how_many_frames_it_holds(cf, tmp_path, monkeypatch, suffix, codec):
    _interrupt_at_block(monkeypatch, 3)
    out = tmp_path / f"v{suffix}"
    r = gen(cf, "--frames", 33, "--out", out, "--codec", codec)
    assert r.exit_code == 130 and f"9 frames kept in {out}" in r.output
    clip = read_video(out)
    assert clip.frames.shape[0] == 9 and clip.metadata["frames"] == 9 and clip.metadata["prompt"] == PROMPT
    assert names(tmp_path) == [out.name]


def test_an_interrupted_overwrite_keeps_the_partial_beside(cf, tmp_path, monkeypatch):
    _interrupt_at_block(monkeypatch, 3)
    out = tmp_path / "v.mkv"
    out.write_bytes(OLD)
    r = gen(cf, "--frames", 33, "--out", out, "--codec", "ffv1", "--overwrite", "--save-latents", tmp_path / "l.st")
    partial = tmp_path / "v.partial.mkv"
    assert r.exit_code == 130 and f"kept in {partial}" in r.output and f"{out} was left as it was" in r.output
    assert out.read_bytes() == OLD and read_video(partial).frames.shape[0] == 9
    assert names(tmp_path) == ["v.mkv", "v.partial.mkv"]  # no latents for a stopped run


def test_save_latents_honours_overwrite_and_is_never_the_video(cf, tmp_path):
    out, latents = tmp_path / "v.mp4", tmp_path / "l.st"
    latents.write_bytes(OLD)
    r = gen(cf, "--frames", 5, "--out", out, "--save-latents", latents)
    assert r.exit_code == 1 and f"{latents} already exists" in r.output and not out.exists()
    r = gen(cf, "--frames", 5, "--out", out, "--save-latents", tmp_path / "." / "v.mp4", "--overwrite")
    assert r.exit_code == 1 and "is also a video of this run" in r.output and not out.exists()
    assert gen(cf, "--frames", 5, "--out", out, "--save-latents", latents, "--overwrite").exit_code == 0
    assert latents.read_bytes() != OLD and read_video(out).frames.shape[0] == 5


def test_extend_refuses_latents_over_its_clip(cf, tmp_path):
    clip = tmp_path / "x.mkv"
    assert gen(cf, "--frames", 9, "--out", clip, "--codec", "ffv1").exit_code == 0
    before = clip.read_bytes()
    r = cf("extend", clip, *BASE, "--frames", 4, "--out", tmp_path / "y.mkv", "--save-latents", clip, "--overwrite")
    assert r.exit_code == 1 and "is an input of the run" in r.output
    assert clip.read_bytes() == before and names(tmp_path) == ["x.mkv"]


def test_prompts_that_slug_alike_get_their_own_files(cf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("a fox!\na fox?\n")
    r = cf("generate", *BASE, "--prompt-file", "p.txt", "--seed", 3, "--frames", 5, "--save-latents", "l.st")
    assert r.exit_code == 0, r.output
    assert names(tmp_path / "outputs") == ["a-fox-3-2.mp4", "a-fox-3.mp4"]
    assert read_video(Path("outputs/a-fox-3.mp4")).metadata["prompt"] == "a fox!"
    assert read_video(Path("outputs/a-fox-3-2.mp4")).metadata["prompt"] == "a fox?"
    assert (tmp_path / "l-000.st").is_file() and (tmp_path / "l-001.st").is_file()


# -- signals -----------------------------------------------------------------------------------------------------------


def test_the_first_signal_stops_and_later_ones_are_only_noted():
    from cfcli.pipeline.signals import SIGNALS, Stopped, exit_code, stop_on_signals

    with stop_on_signals():
        with pytest.raises(Stopped) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGINT)  # while the file closes: ignored
        assert exit_code(stop.value) == 143
    try:
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in SIGNALS)  # the process is ending
    finally:
        for s, handler in zip(SIGNALS, (signal.default_int_handler, signal.SIG_DFL, signal.SIG_DFL)):
            signal.signal(s, handler)
    with stop_on_signals():  # without a stop, the handlers that were there come back
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_keeps_a_playable_file_with_true_metadata(tmp_path, signum, code):
    out = tmp_path / "v.mkv"
    cmd = [sys.executable, "-m", "cfcli", "generate", *map(str, BASE), PROMPT, "--seed", "1", "--frames", "801",
           "--out", str(out), "--codec", "ffv1", "--no-compile"]
    run = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                           env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(p.stat().st_size > 20000 for p in tmp_path.glob(".v.cf-*")):
        time.sleep(0.05)  # until the temp file holds a frame or more
    run.send_signal(signum)
    time.sleep(0.2)  # (two pending signals are handled lowest number first)
    run.send_signal(signal.SIGINT)  # a second stop while it closes the file: no traceback
    _, err = run.communicate(timeout=60)
    err = err.decode()
    assert run.returncode == code, err
    assert "Traceback" not in err and f"frames kept in {out}" in err
    clip = read_video(out)
    assert 0 < clip.frames.shape[0] < 801 and clip.metadata["frames"] == clip.frames.shape[0]
    assert f"{clip.frames.shape[0]} frames kept" in err
    assert names(tmp_path) == ["v.mkv"]


def test_a_killed_run_leaves_a_partial_that_the_next_run_puts_in_sight(cf, tmp_path):
    """SIGKILL gives no chance to close the file: what the streamed (fragmented) MP4 holds stays playable, and the
    next run beside it puts it in place as `NAME.partial.mp4` and says so."""
    out = tmp_path / "v.mp4"
    cmd = [sys.executable, "-m", "cfcli", "generate", *map(str, BASE), PROMPT, "--seed", "1", "--frames", "801",
           "--out", str(out), "--no-compile"]
    run = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                           env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not any(p.stat().st_size > 80000 for p in tmp_path.glob(".v.cf-*")):
        time.sleep(0.05)  # past the encoder's lookahead and a few fragments
    run.kill()
    run.communicate(timeout=60)
    assert not out.exists() and any(p.name.startswith(".v.cf-") for p in tmp_path.iterdir())
    r = gen(cf, "--frames", 5, "--out", tmp_path / "w.mp4")
    kept = tmp_path / "v.partial.mp4"
    assert r.exit_code == 0 and f"kept the partial video of a run that was killed: {kept}" in r.stderr
    assert read_video(kept).frames.shape[0] > 0 and (tmp_path / "w.mp4").is_file()
    assert not any(p.name.startswith(".v.") for p in tmp_path.iterdir())  # the dead run's lock file gone too
