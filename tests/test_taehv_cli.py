"""`--decoder taehv`: its weights fetched by `cf download` from a local server, and used by `cf generate`."""

import http.server
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cfcli.models.taehv import TAEHV, TAEHVConfig
from cfcli.pipeline.video import read_video
from cfcli.taehv_weights import taehv_path

from conftest import cases, contract, rel_err

CASE = next(c for c in cases() if c["name"] == "framewise_4step_t2v")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Random full-size TAEHV weights (float16, the decoder's official keys)."""
    torch.manual_seed(0)
    model = TAEHV(TAEHVConfig())
    path = tmp_path_factory.mktemp("taehv") / "taew2_1.pth"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    return path


@pytest.fixture
def server(monkeypatch):
    """Serves `files[name] = bytes` on 127.0.0.1; `requests` counts the GETs."""
    files, requests = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            requests.append(self.path)
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("CF_TAEHV_URL", f"http://127.0.0.1:{httpd.server_address[1]}/taew2_1.pth")
    yield files, requests
    httpd.shutdown()


def test_download_fetches_checks_and_keeps_the_weights(cf, server, weights):
    files, requests = server
    files["taew2_1.pth"] = weights.read_bytes()
    r = cf("download", "--decoder", "taehv")
    assert r.exit_code == 0, r.output
    assert taehv_path().read_bytes() == weights.read_bytes()
    r = cf("download", "--decoder", "taehv")  # cached: nothing fetched again
    assert r.exit_code == 0 and "ready" in r.output and len(requests) == 1


def test_a_file_that_is_not_taehv_never_reaches_the_cache(cf, server):
    files, _ = server
    files["taew2_1.pth"] = b"<html>rate limited</html>"
    r = cf("download", "--decoder", "taehv")
    assert r.exit_code == 1 and "run `cf download` again" in r.output
    assert not taehv_path().exists() and not list(taehv_path().parent.glob("*.part"))
    r = cf("download", "--decoder", "taehv")  # and the server is gone: a clear error too
    assert r.exit_code == 1


def test_an_unreachable_server_is_a_clear_error(cf, monkeypatch):
    monkeypatch.setenv("CF_TAEHV_URL", "http://127.0.0.1:9/taew2_1.pth")
    r = cf("download", "--decoder", "taehv")
    assert r.exit_code == 1 and "could not download the TAEHV weights" in r.output and "CF_TAEHV_URL" in r.output


def test_generate_without_the_weights_says_how_to_get_them(cf, tmp_path):
    out = tmp_path / "v.mkv"
    r = cf(*contract(CASE["preset"], CASE["prompt"], 0, 9, tmp_path / "l.safetensors", out), "--decoder", "taehv")
    assert r.exit_code == 1 and "cf download --decoder taehv" in r.output and not out.exists()


def test_generate_decodes_the_same_latents_with_taehv(cf, golden, weights, tmp_path):
    taehv_path().parent.mkdir(parents=True)
    taehv_path().write_bytes(weights.read_bytes())
    args = contract(CASE["preset"], CASE["prompt"], CASE["seed"], CASE["video_frames"], tmp_path / "l.safetensors",
                    tmp_path / "v.mkv")
    r = cf(*args, "--decoder", "taehv")
    assert r.exit_code == 0, r.output
    latents = load_file(str(tmp_path / "l.safetensors"))["latents"]
    assert rel_err(latents, golden[f"{CASE['name']}.latents"]) <= 1e-4  # the DiT's output does not depend on it
    frames = read_video(tmp_path / "v.mkv").frames
    wan = golden[f"{CASE['name']}.pixels"]
    assert frames.shape == wan.shape  # 1 + 4k frames at 8x the latent size, like the Wan VAE
    assert (frames.float() - wan.float()).abs().mean() > 1  # but another decoder's pixels
