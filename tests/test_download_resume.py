"""Downloads resume across runs (a kill or Ctrl-C keeps the partial; the next run asks only for the rest), orphaned
partials are adopted or cleaned, and converted checkpoints are really verified (truncated or changed → made again)."""

from pathlib import Path

import pytest
from test_download import CF, VAE, WEIGHTS, cf, env, fake_hub, inproc, ok, plan_file, tiny_preset  # noqa: F401, F811

from cfcli import converted_check, hub
from cfcli.cli.download import _pending


class Killer(hub.Events):
    """Interrupts the download once `after` bytes have arrived, as Ctrl-C (or a kill) would."""

    def __init__(self, after: int):
        self.after, self.seen = after, 0

    def advance(self, n: int) -> None:
        self.seen += n
        if self.seen > self.after:
            raise KeyboardInterrupt


def test_interrupted_download_resumes_from_its_byte_offset(inproc, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    f = plan_file(tmp_path, "Wan-AI/Wan2.1-T2V-1.3B", VAE)
    with pytest.raises(KeyboardInterrupt):
        hub.fetch(f, Killer(300_000))
    partial = f.blob.with_name(f.blob.name + ".incomplete")
    kept = partial.stat().st_size
    assert 0 < kept < f.size and kept % (64 * 1024) == 0 and not f.blob.exists()
    assert f"resumes at {hub.human(kept)}" in _pending(f)  # what `cf download --dry-run` shows

    inproc.reset_log()
    path = hub.fetch(f, sleep=lambda s: None)
    (get,) = inproc.requests(path=VAE, method="GET")
    assert get.range == f"bytes={kept}-"  # only the rest was asked for
    assert path.read_bytes() == (WEIGHTS / VAE).read_bytes() and f.verified() and not partial.exists()


def test_orphaned_partials_are_adopted_or_cleaned(inproc, tmp_path):
    f = plan_file(tmp_path, "Wan-AI/Wan2.1-T2V-1.3B", VAE)
    data = (WEIGHTS / VAE).read_bytes()
    f.blob.parent.mkdir(parents=True)
    (f.blob.parent / f"{f.blob.name}.1a2b3c4d.incomplete").write_bytes(data[:100_000])  # huggingface_hub's orphan
    (f.blob.parent / f"{f.blob.name}.9f9f9f9f.incomplete").write_bytes(data[:50_000])  # a shorter one
    hub.fetch(f, sleep=lambda s: None)
    (get,) = inproc.requests(path=VAE, method="GET")
    assert get.range == "bytes=100000-" and f.verified()
    assert not list(f.blob.parent.glob("*.incomplete"))

    # Stale: longer than the file (another version) → deleted, the file comes whole.
    hub.discard(f)
    (f.blob.parent / f"{f.blob.name}.incomplete").write_bytes(data + b"extra")
    inproc.reset_log()
    hub.fetch(f, sleep=lambda s: None)
    (get,) = inproc.requests(path=VAE, method="GET")
    assert get.range is None and f.verified()


def test_resumed_partial_with_wrong_bytes_is_rejected_and_fetched_again(inproc, tmp_path):
    f = plan_file(tmp_path, "Wan-AI/Wan2.1-T2V-1.3B", VAE)
    f.blob.parent.mkdir(parents=True)
    (f.blob.parent / f"{f.blob.name}.incomplete").write_bytes(b"\0" * 100_000)  # not the file's first bytes
    hub.fetch(f, sleep=lambda s: None)
    first, second = inproc.requests(path=VAE, method="GET")
    assert first.range == "bytes=100000-" and second.range is None  # the hash failed, so it started clean
    assert f.pointer.read_bytes() == (WEIGHTS / VAE).read_bytes()


def test_truncated_or_changed_conversion_is_made_again(env, fake_hub, tmp_path):  # noqa: F811
    preset = str(tiny_preset(tmp_path))
    ok(cf(env, "download", "--preset", preset, "--quiet"))
    conv = next((Path(env["CF_HOME"]) / "converted").glob("*.safetensors"))
    whole = conv.read_bytes()
    assert converted_check.digest_path(conv).read_text().strip() == converted_check.file_sha256(conv)

    conv.write_bytes(whole[: len(whole) // 2])  # truncated: no longer counts as converted
    assert not converted_check.is_whole(conv)
    r = ok(cf(env, "download", "--preset", preset))
    assert "converted" in r.stderr and conv.read_bytes() == whole

    damaged = bytearray(whole)
    damaged[-10:] = b"\1" * 10  # same size and header: only --verify's hash can tell
    conv.write_bytes(bytes(damaged))
    r = ok(cf(env, "download", "--preset", preset))
    assert conv.read_bytes() == bytes(damaged)
    r = ok(cf(env, "download", "--preset", preset, "--verify"))
    assert "does not match its digest" in r.stderr and conv.read_bytes() == whole


def test_unusable_hf_cache_or_cf_home_names_the_variable(env, fake_hub, tmp_path):  # noqa: F811
    (tmp_path / "file").write_text("x")
    for var, value in (("HF_HOME", str(tmp_path / "file")), ("CF_HOME", "/proc/cf")):
        r = cf(env | {var: value}, "download", "--preset", str(tiny_preset(tmp_path)))
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"{var} points at" in r.stderr and f"set {var}" in r.stderr
    assert fake_hub.file_gets() == [] and (tmp_path / "file").read_text() == "x"
