"""`cf live` in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) opens the page, starts
generation, sees frames drawn, switches the prompt, and downloads the recording, which is a valid MP4."""

import shutil
from pathlib import Path

import pytest

from cfcli.pipeline.video import read_video

from conftest import FIXTURES, PROMPT
from live_server import live_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="needs Debian's chromium (apt-get install chromium)"),
]


def test_the_page_plays_switches_and_downloads_the_recording(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    with live_server(FIXTURES / "tiny-framewise.yaml", tmp_path / "live", codec="h264", max_seconds=2.0) as srv, \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(accept_downloads=True)
        page.goto(srv.url + "/")
        page.wait_for_function("window.cfLive.role === 'controller'", timeout=30_000)
        page.fill("#seed", "7")
        page.fill("#prompt", PROMPT)
        page.press("#prompt", "Enter")
        page.wait_for_function("window.cfLive.framesReceived >= 1", timeout=60_000)
        page.fill("#blend-blocks", "2")
        page.select_option("#blend-kind", "spherical")
        page.fill("#prompt", "the fox jumps into the river")  # early, so that it lands before the last block
        page.press("#prompt", "Enter")
        page.wait_for_function("window.cfLive.framesDrawn >= 2", timeout=60_000)
        spread = page.evaluate("""() => {
            const c = document.getElementById('screen');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let lo = 255, hi = 0;
            for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
            return hi - lo;
        }""")
        assert spread > 0  # a decoded frame is drawn, not a blank canvas
        page.wait_for_function("Object.values(window.cfLive.prompts).some(p => p.submittedAt && p.onScreen > 0)",
                               timeout=60_000)
        assert "frame" in page.inner_text("#timeline")
        link = page.wait_for_selector("#recordings a", timeout=90_000)
        with page.expect_download() as info:
            link.click()
        path = tmp_path / info.value.suggested_filename
        info.value.save_as(path)
        drawn, errors = page.evaluate("[window.cfLive.framesDrawn, window.cfLive.errors]")
        recording = page.evaluate("window.cfLive.recordings[0]")
        browser.close()
    clip = read_video(path)
    assert path.suffix == ".mp4" and clip.frames.shape[0] == recording["frames"] == 33
    assert clip.metadata["seed"] == 7 and clip.metadata["prompt_schedule"][1][1:] == [
        "the fox jumps into the river", {"blocks": 2, "kind": "spherical"}]  # the page's blend control
    assert drawn >= 2 and errors == []


def test_the_lora_panel_adds_rescales_and_removes_a_lora_while_playing(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    from test_lora import factors, write

    lora = write(tmp_path / "style.safetensors", factors(1))
    with live_server(FIXTURES / "tiny-framewise.yaml", tmp_path / "live", codec="ffv1", max_seconds=4.0,
                     lead=0.25) as srv, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(srv.url + "/")
        page.wait_for_function("window.cfLive.role === 'controller'", timeout=30_000)
        page.fill("#prompt", PROMPT)
        page.press("#prompt", "Enter")
        page.wait_for_function("window.cfLive.framesReceived >= 1", timeout=60_000)
        page.fill("#lora-file", str(lora))
        page.fill("#lora-scale", "0.8")
        page.click("#lora-add")
        shown = "n => Object.values(window.cfLive.loraChanges).filter(c => c.state === 'shown').length >= n"
        page.wait_for_function(shown, arg=1, timeout=60_000)
        page.wait_for_function("window.cfLive.loras.length === 1", timeout=10_000)
        assert "style.safetensors" in page.inner_text("#loras")
        page.fill("#loras input[type=number]", "-0.5")
        page.dispatch_event("#loras input[type=number]", "change")
        page.wait_for_function(shown, arg=2, timeout=60_000)
        page.wait_for_function("window.cfLive.loras[0] && window.cfLive.loras[0].scale === -0.5", timeout=10_000)
        page.click("#loras button")
        page.wait_for_function(shown, arg=3, timeout=60_000)
        page.wait_for_function("window.cfLive.loras.length === 0", timeout=10_000)
        changes, errors = page.evaluate("[Object.values(window.cfLive.loraChanges), window.cfLive.errors]")
        browser.close()
    scales = [[x["scale"] for x in c["loras"]] for c in changes if c["state"] == "shown"]
    assert scales == [[0.8], [-0.5], []] and errors == []  # one change per edit
