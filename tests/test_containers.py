"""Every codec in every container it belongs in, read back as ffprobe would (through PyAV): codec, MP4 tag, colour
tags and frame count; the default container of each codec; pairs that play nowhere refused before anything runs."""

import av
import pytest

from cfcli.pipeline import containers
from cfcli.pipeline.video import read_video

from conftest import FIXTURES, PROMPT

BASE = ["--preset", FIXTURES / "tiny-framewise.yaml", "--device", "cpu", "--dtype", "float32", "--seed", 3]
PAIRS = [("h264", ".mp4", "h264", "avc1"), ("h264", ".mkv", "h264", None), ("h264", ".mov", "h264", "avc1"),
         ("h265", ".mp4", "hevc", "hvc1"), ("h265", ".mkv", "hevc", None), ("ffv1", ".mkv", "ffv1", None),
         ("vp9", ".webm", "vp9", None), ("av1", ".webm", "av1", None), ("gif", ".gif", "gif", None)]


def probe(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        cc = s.codec_context
        frames = sum(1 for _ in c.decode(s))
        return (containers.format_name(cc.name), s.codec_tag.strip("\x00") or None, frames,
                (cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range))


@pytest.mark.parametrize("codec, suffix, name, tag", PAIRS, ids=[f"{c}{s}" for c, s, _, _ in PAIRS])
def test_codec_in_container_reads_back(cf, tmp_path, codec, suffix, name, tag):
    if codec not in containers.available():
        pytest.skip(f"this PyAV build has no {codec} encoder")
    out = tmp_path / f"clip{suffix}"
    r = cf("generate", PROMPT, *BASE, "--frames", 9, "--codec", codec, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    got_name, got_tag, frames, colour = probe(out)
    assert (got_name, frames) == (name, 9)
    if tag is not None:
        assert got_tag == tag
    bt709_limited = (1, 1, 1, 1)
    assert (colour == bt709_limited) == (containers.get(codec).pix_fmt == "yuv420p")


def test_colours_survive_the_bt709_conversion(cf, tmp_path):
    """Near-lossless h264 (CRF 0) read back against the lossless FFV1 file of the same seed: the matrix the pixels
    were converted with is the one the file is tagged with."""
    for codec, out in (("ffv1", tmp_path / "a.mkv"), ("h264", tmp_path / "a.mp4")):
        assert cf("generate", PROMPT, *BASE, "--frames", 5, "--codec", codec, "--crf", 0, "--out", out,
                  "-q").exit_code == 0
    exact, coded = read_video(tmp_path / "a.mkv").frames.float(), read_video(tmp_path / "a.mp4").frames.float()
    per_channel = (exact - coded).mean(dim=(0, 2, 3)).abs()
    assert per_channel.max() < 1.5, per_channel  # BT.601 decoding of BT.709 pixels shifts channels by several levels


@pytest.mark.parametrize("args, suffix, name", [
    (["--codec", "ffv1"], ".mkv", "ffv1"), (["--codec", "vp9"], ".webm", "vp9"), ([], ".mp4", "h264"),
])
def test_default_container_follows_the_codec(cf, tmp_path, monkeypatch, args, suffix, name):
    monkeypatch.chdir(tmp_path)
    assert cf("generate", PROMPT, *BASE, "--frames", 5, *args, "-q").exit_code == 0
    (out,) = (tmp_path / "outputs").iterdir()
    assert out.name == f"a-fox-running-through-a-snowy-forest-at-dawn-3{suffix}" and probe(out)[0] == name


@pytest.mark.parametrize("suffix, name", [(".gif", "gif"), (".webm", "vp9")])
def test_out_suffix_picks_the_codec(cf, tmp_path, suffix, name):
    out = tmp_path / f"share{suffix}"
    assert cf("generate", PROMPT, *BASE, "--frames", 5, "--out", out, "-q").exit_code == 0
    assert probe(out)[:3] == (name, None, 5)


@pytest.mark.parametrize("codec, suffix, hint", [("ffv1", ".mp4", ".mkv"), ("gif", ".mp4", ".gif"),
                                                 ("h264", ".webm", ".mp4 or .mkv or .mov")])
def test_pairs_that_play_nowhere_are_refused(cf, tmp_path, codec, suffix, hint):
    out = tmp_path / f"x{suffix}"
    r = cf("generate", PROMPT, *BASE, "--codec", codec, "--out", out)
    assert r.exit_code == 1 and f"{codec} does not belong in a {suffix} file" in r.output and hint in r.output
    assert not out.exists()
