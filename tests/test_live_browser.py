"""`cf live` in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) opens the page, starts
generation, sees frames drawn, switches the prompt, and downloads the recording, which is a valid MP4; and the page
for a performer: controls that follow the state, the status line, shortcuts, the prompt queue, receipts, the recording
played in the page, and a screenshot with the key controls on screen."""

import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

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


JUMP, FREEZE = "the fox jumps into the river", "the river freezes over"
VIEWPORT = {"width": 1280, "height": 800}
KEY_CONTROLS = ("#screen", "#status", "#keys", "#prompt", "#start", "#stop", "#record", "#queue", "#fire")


def test_the_page_for_a_performer_follows_the_state_queues_prompts_and_shows_receipts(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    with live_server(FIXTURES / "tiny-framewise.yaml", tmp_path / "live", codec="vp9", max_seconds=30.0,
                     lead=0.25) as srv, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(srv.url + "/")
        page.wait_for_function("window.cfLive.role === 'controller'", timeout=30_000)
        assert page.is_hidden("#claim")  # no "take control" while this page controls
        assert page.inner_text("#status").startswith("Stopped")
        assert page.is_disabled("#stop") and page.is_disabled("#restart")
        assert page.is_disabled("#start")  # no prompt typed yet
        assert page.is_disabled("#fire")  # nothing queued yet
        other = browser.new_page(viewport=VIEWPORT)  # a second page watches while this one controls
        other.goto(srv.url + "/")
        other.wait_for_function("window.cfLive.connection === 'open' && window.cfLive.controlled", timeout=30_000)
        assert other.inner_text("#status").startswith("Watching (another page is in control) — Stopped")
        assert other.is_visible("#claim") and other.is_disabled("#start") and other.is_disabled("#prompt")
        other.close()
        for text in (JUMP, "a prompt to take out again", FREEZE):
            page.fill("#queue-input", text)
            page.press("#queue-input", "Enter")
        page.click("#queue li:nth-child(2) button[title=Remove]")
        assert page.evaluate("window.cfLive.queue") == [JUMP, FREEZE]
        assert page.inner_text("#queue li:first-child .name") == JUMP
        page.wait_for_function("q => q.every(t => window.cfLive.prepared[t])", arg=[JUMP, FREEZE],
                               timeout=60_000)  # encoded ahead on the server, in `max_prepare`-sized messages

        page.fill("#seed", "7")
        page.type("#prompt", PROMPT)  # real key presses of n, r and s: no shortcut fires while typing
        assert page.evaluate("window.cfLive.queue.length") == 2 and page.is_checked("#record")
        assert page.is_enabled("#start")
        page.press("#prompt", "Enter")
        page.wait_for_function("window.cfLive.state === 'running' && window.cfLive.framesDrawn >= 1",
                               timeout=60_000)
        page.wait_for_function("document.getElementById('status').innerText.startsWith('Playing — ')",
                               timeout=10_000)
        assert page.is_enabled("#stop") and page.is_disabled("#start") and page.is_enabled("#fire")
        assert re.search(r"Playing — \d+\.\d s made.*recording", page.inner_text("#status"))

        page.fill("#blend-blocks", "1")
        page.press("#blend-blocks", "Escape")  # Esc leaves the text box: the shortcuts work again
        page.keyboard.press("n")  # fires the first queued prompt
        landed = "t => Object.values(window.cfLive.prompts).some(p => p.prompt === t && p.state === 'shown')"
        page.wait_for_function(landed, arg=JUMP, timeout=60_000)
        page.click("#fire")  # the next one, once the first has landed (two within one block: the later wins)
        page.wait_for_function(landed, arg=FREEZE, timeout=60_000)
        assert page.evaluate("window.cfLive.queue") == [] and page.is_disabled("#fire")

        page.keyboard.press("r")  # recording off, then on again: the checkbox and the status line follow
        page.wait_for_function("window.cfLive.lastStatus.recording === false", timeout=10_000)
        assert not page.is_checked("#record") and "recording" not in page.inner_text("#status")
        page.keyboard.press("r")
        page.wait_for_function("window.cfLive.lastStatus.recording === true", timeout=10_000)

        shot = tmp_path / "page.png"
        page.screenshot(path=shot)
        boxes = {sel: page.locator(sel).bounding_box() for sel in KEY_CONTROLS}
        hidden = [sel for sel in KEY_CONTROLS if not page.is_visible(sel)]
        prompts = {p["prompt"]: p for p in page.evaluate("Object.values(window.cfLive.prompts)")}
        receipts = {t: page.inner_text(f'#timeline li[data-id="{prompts[t]["id"]}"]') for t in (JUMP, FREEZE)}

        page.keyboard.press("s")  # stop
        page.wait_for_function("window.cfLive.state === 'idle'", timeout=60_000)
        assert page.inner_text("#status").startswith("Stopped") and page.is_disabled("#stop")
        page.click("#recordings .play", timeout=60_000)
        player = page.wait_for_function("""() => {
            const v = document.getElementById('player');
            return (v.readyState >= 1 || v.error) && {src: v.src, ready: v.readyState, error: v.error && v.error.code,
                                                      duration: v.duration, hidden: v.hidden};
        }""", timeout=30_000).json_value()
        recording, errors = page.evaluate("[window.cfLive.recordings[0], window.cfLive.errors]")
        acks = page.evaluate("window.cfLive.acks.map(a => `${a.for} ${a.state}`)")
        browser.close()
    # every control message acknowledged: received at once, and the record toggle when applied
    assert {"start received", "stop received", "record received", "record applied"} <= set(acks)

    for t in (JUMP, FREEZE):
        p = prompts[t]
        assert p["transition"] == {"blocks": 1, "kind": "linear"}  # the blend set when it was fired
        assert p["block"] == p["latent"] >= 1 and p["frame"] == 1 + 4 * (p["latent"] - 1)  # frame-wise: 1 latent
        assert "received ✓" in receipts[t] and f"landed at block {p['block']} / frame {p['frame']}" in receipts[t]
    assert prompts[FREEZE]["block"] > prompts[JUMP]["block"]

    with Image.open(shot) as img:
        rgb = img.convert("RGB")
    assert rgb.size == (VIEWPORT["width"], VIEWPORT["height"]) and hidden == []
    for sel, b in boxes.items():  # each key control is on screen, not pushed out of the first view
        assert b and b["width"] > 0 and b["height"] > 0, sel
        assert 0 <= b["x"] and b["x"] + b["width"] <= VIEWPORT["width"], sel
        assert 0 <= b["y"] and b["y"] + b["height"] <= VIEWPORT["height"], sel
    c = boxes["#screen"]
    screen = rgb.crop((int(c["x"]), int(c["y"]), int(c["x"] + c["width"]), int(c["y"] + c["height"])))
    assert len(screen.getcolors(2**16) or range(2**16)) > 64  # a picture on the canvas, not a blank one

    assert player["src"].endswith(recording["url"]) and not player["hidden"]
    assert player["error"] is None and player["ready"] >= 1  # VP9 in WebM: a codec every Chromium build plays
    assert abs(player["duration"] - recording["seconds"]) < 0.5
    assert recording["name"].endswith(".webm") and errors == []
