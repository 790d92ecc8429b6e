"""TAEHV decoder against the official implementation's outputs on a tiny (widths 12/8/6/4) checkpoint.

How the fixtures were made: tests/fixtures/taehv/README.md.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cfcli.errors import CfError
from cfcli.models.taehv import TAEHV, TAEHVConfig, load_taehv

from conftest import stream_in_chunks

FIXTURES = Path(__file__).parent / "fixtures" / "taehv"
WEIGHTS = FIXTURES / "tiny_taew.pth"
TINY = TAEHVConfig(channels=(12, 8, 6, 4))


@pytest.fixture(scope="module")
def model() -> TAEHV:
    return load_taehv(WEIGHTS, dtype=torch.float32, cfg=TINY)


@pytest.fixture(scope="module")
def cases() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "cases.safetensors")


def latents(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


def test_full_size_layout_matches_official():
    """Keys and shapes of the default (Wan2.1) config equal the official module's decoder, read from its code."""
    official = json.loads((FIXTURES / "full_layout.json").read_text())
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in TAEHV().state_dict().items()}
    assert ours == {k: v for k, v in official.items() if k.startswith("decoder.")}
    assert set(official) - set(ours) == {k for k in official if k.startswith("encoder.")}


def test_tiny_checkpoint_loads_strictly_without_its_encoder(model):
    raw = torch.load(WEIGHTS, weights_only=True)
    decoder = {k: v for k, v in raw.items() if k.startswith("decoder.")}
    assert len(decoder) < len(raw)  # the file has encoder tensors too; load_taehv drops them
    fresh = TAEHV(TINY)
    assert fresh.load_state_dict(decoder, strict=True)  # no missing / unexpected keys
    for key, value in decoder.items():
        assert torch.equal(model.state_dict()[key], value)


@pytest.mark.parametrize("case", ["a", "b"])
def test_decode_matches_official(model, cases, case):
    z, expected = cases[f"{case}.latents"], cases[f"{case}.pixels01"] * 2 - 1
    pixels = model.decode(z)
    assert pixels.shape == expected.shape and pixels.dtype == torch.float32
    assert (pixels - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("chunks", [(1, 1, 1, 1), (2, 2), (1, 3), (3, 1)])
def test_streaming_equals_whole_decode(model, cases, chunks):
    """Chunks run the convolutions on other shapes than the whole clip, which the CPU's kernels may sum in another
    order: equal up to float32 rounding (pixels in [-1, 1]), not bit for bit."""
    z = cases["a.latents"]
    whole = model.decode(z)
    torch.testing.assert_close(stream_in_chunks(model, z, chunks), whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("f", [1, 2, 5])
def test_frame_count_and_range(model, f):
    pixels = model.decode(latents(2, f, 16, 2, 3))
    assert pixels.shape == (2, 1 + 4 * (f - 1), 3, 16, 24)
    assert pixels.min().item() >= -1.0 and pixels.max().item() <= 1.0


def test_empty_first_call_keeps_the_first_frame_trim(model):
    z = latents(1, 2, 16, 2, 3)
    stream = model.stream_decoder()
    assert stream.decode(z[:, :0]).shape[1] == 0
    torch.testing.assert_close(torch.cat([stream.decode(z[:, :1]), stream.decode(z[:, 1:])], 1), model.decode(z),
                               rtol=0, atol=1e-5)  # other shapes than the whole clip: float32 rounding apart


def test_wrong_latent_channels_rejected(model):
    with pytest.raises(ValueError, match="16"):
        model.decode(torch.zeros(1, 1, 48, 2, 2))


def test_wider_tgrow_weight_keeps_last_channels(model, tmp_path):
    """As the official loader does: a TGrow stored for a larger stride keeps its last time step's channels."""
    sd = torch.load(WEIGHTS, weights_only=True)
    key = "decoder.7.conv.weight"  # stage 0 TGrow, stride 1 in Wan2.1
    sd[key] = torch.cat([torch.full_like(sd[key], 9.0), sd[key]])
    torch.save(sd, tmp_path / "wide.pth")
    wide = load_taehv(tmp_path / "wide.pth", dtype=torch.float32, cfg=TINY)
    z = latents(1, 2, 16, 2, 3)
    assert torch.equal(wide.decode(z), model.decode(z))


def save(tmp_path: Path, sd: dict) -> Path:
    torch.save(sd, tmp_path / "bad.pth")
    return tmp_path / "bad.pth"


@pytest.mark.parametrize("breakage", ["not_taehv", "wan22_channels", "missing_key", "wrong_width", "garbage"])
def test_bad_file_gives_clear_error(tmp_path, breakage):
    sd = torch.load(WEIGHTS, weights_only=True)
    if breakage == "not_taehv":
        path = save(tmp_path, {"decoder.conv1.weight": torch.zeros(1)})
    elif breakage == "wan22_channels":
        path = save(tmp_path, {**sd, "decoder.1.weight": torch.zeros(12, 48, 3, 3)})
    elif breakage == "missing_key":
        path = save(tmp_path, {k: v for k, v in sd.items() if k != "decoder.22.bias"})
    elif breakage == "wrong_width":
        path = save(tmp_path, sd)  # the tiny file against the full-size config
    else:
        path = tmp_path / "bad.pth"
        path.write_bytes(b"not a checkpoint")
    cfg = TAEHVConfig() if breakage == "wrong_width" else TINY
    with pytest.raises(CfError) as err:
        load_taehv(path, dtype=torch.float32, cfg=cfg)
    assert err.value.hint  # says what to do
    if breakage != "garbage":
        assert "taew2_1.pth" in err.value.hint
