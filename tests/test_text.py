"""Tests for the prompt tokenizer and the umT5 encoder against the tiny reference fixtures."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cfcli.models.t5 import T5Config, UMT5Encoder, encode_text, relative_position_buckets
from cfcli.models.tokenizer import PromptTokenizer, clean_prompt

FIXTURES = Path(__file__).parent / "fixtures"
WEIGHTS = FIXTURES / "weights"
TEXT_LEN = 512
META = json.loads((FIXTURES / "cases.json").read_text())
CASES = {c["name"]: c["prompt"] for c in META["cases"]}


@pytest.fixture(scope="module")
def tensors():
    return load_file(FIXTURES / "cases.safetensors")


@pytest.fixture(scope="module")
def tokenizer():
    return PromptTokenizer.from_folder(WEIGHTS / "google" / "umt5-xxl")


def tiny_config() -> T5Config:
    t5 = META["t5"]
    return T5Config(vocab=t5["vocab"], dim=t5["dim"], dim_attn=t5["dim_attn"], dim_ffn=t5["dim_ffn"],
                    num_heads=t5["num_heads"], num_layers=t5["num_layers"], num_buckets=t5["num_buckets"])


def state_dict():
    return torch.load(WEIGHTS / "models_t5_umt5-xxl-enc-bf16.pth", weights_only=True)


@pytest.fixture(scope="module")
def encoder():
    model = UMT5Encoder(tiny_config()).eval()
    model.load_state_dict(state_dict(), strict=True)
    return model.float()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# --- cleaning / tokenisation -------------------------------------------------------------

@pytest.mark.parametrize("raw, cleaned", [
    ("a cat &amp; a dog", "a cat & a dog"),
    ("&amp;lt;tag&amp;gt;", "<tag>"),  # unescaped twice
    ("  waves   crashing,\n\t aerial\u3000shot \n", "waves crashing, aerial shot"),
    ("The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.", "The Mona Lisa doesn't have eyebrows."),
    ("schÃ¶n cafÃ©", "schön café"),
    ("", ""),
])
def test_clean_prompt(raw, cleaned):
    assert clean_prompt(raw) == cleaned


@pytest.mark.parametrize("name", sorted(CASES))
def test_tokenizer_matches_fixture(name, tokenizer, tensors):
    ids, mask = tokenizer([CASES[name]])
    assert ids.dtype == mask.dtype == torch.int64
    assert ids.shape == mask.shape == (1, TEXT_LEN)
    assert torch.equal(ids[0], tensors[f"{name}.ids"])
    assert torch.equal(mask[0], tensors[f"{name}.mask"])


def test_tokenizer_batch_and_truncation(tokenizer):
    short, long = "a fox", " ".join(["snowy forest"] * 400)
    ids, mask = tokenizer([short, long])
    n = int(mask[0].sum())
    assert ids[0, n - 1] == 1 and (ids[0, n:] == 0).all() and (mask[0, :n] == 1).all()
    # Over-long prompt: truncated to 511 text tokens, EOS (id 1) still last, no padding.
    assert mask[1].sum() == TEXT_LEN and ids[1, -1] == 1
    from tokenizers import Tokenizer

    plain = Tokenizer.from_file(str(WEIGHTS / "google" / "umt5-xxl" / "tokenizer.json"))
    untruncated = plain.encode(clean_prompt(long)).ids
    assert len(untruncated) > TEXT_LEN
    assert ids[1, :-1].tolist() == untruncated[:TEXT_LEN - 1]
    # Shorter length argument, and a bare string.
    ids16, mask16 = tokenizer(long, length=16)
    assert ids16.shape == (1, 16) and ids16[0, -1] == 1 and mask16.sum() == 16


# --- encoder ------------------------------------------------------------------------------

def test_relative_position_buckets():
    b = relative_position_buckets(300, 32)
    # distance -> bucket for keys before the query; keys after it get +16.
    expect = {0: 0, 1: 1, 7: 7, 8: 8, 15: 9, 16: 10, 31: 11, 32: 12, 63: 13, 64: 14, 127: 15,
              128: 15, 299: 15}
    for d, k in expect.items():
        assert b[d, 0] == k, d
        if d:
            assert b[0, d] == k + 16, d


@pytest.mark.parametrize("name", sorted(CASES))
def test_embeds_match_fixture(name, encoder, tensors):
    ids, mask = tensors[f"{name}.ids"][None], tensors[f"{name}.mask"][None]
    want = tensors[f"{name}.embeds"]
    with torch.no_grad():
        full = encoder(ids, mask)[0]
    n = int(mask.sum())
    full[n:] = 0.0  # the reference's zeroing of padding rows
    assert full.dtype == torch.float32
    assert rel_err(full, want) <= 1e-5
    short = encode_text(encoder, ids, mask, TEXT_LEN)[0]
    assert short.shape == (TEXT_LEN, META["t5"]["dim"])
    assert (short[n:] == 0).all()
    assert rel_err(short, full) <= 1e-6
    assert rel_err(short, want) <= 1e-5


def test_encode_text_batch(encoder, tokenizer, tensors):
    names = sorted(CASES)
    ids, mask = tokenizer([CASES[n] for n in names] + [" ".join(["fox"] * 600)])
    out = encode_text(encoder, ids, mask, TEXT_LEN)
    assert out.shape == (len(names) + 1, TEXT_LEN, META["t5"]["dim"])
    for i, name in enumerate(names):
        assert rel_err(out[i], tensors[f"{name}.embeds"]) <= 1e-5, name
    with torch.no_grad():
        full = encoder(ids[-1:], mask[-1:])  # no padding at all: both paths run 512 tokens
    assert rel_err(out[-1], full[0]) <= 1e-6  # a batch of 5 and of 1: GEMMs of other sizes, rounding apart at most


def test_bf16_assign_load():
    # Meta build + assign keeps the file's bf16 dtype without materialising random weights.
    with torch.device("meta"):
        model = UMT5Encoder(tiny_config())
    model.load_state_dict(state_dict(), strict=True, assign=True)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids, mask = PromptTokenizer.from_folder(WEIGHTS / "google" / "umt5-xxl")(
        [CASES["framewise_4step_t2v"]])
    out = encode_text(model.eval(), ids, mask, TEXT_LEN)
    want = load_file(FIXTURES / "cases.safetensors")["framewise_4step_t2v.embeds"]
    assert out.dtype == torch.bfloat16
    assert rel_err(out[0], want) <= 3e-2  # bf16 activations vs the fp32 reference


def test_real_size_keys_on_meta():
    with torch.device("meta"):
        model = UMT5Encoder(T5Config())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {"token_embedding.weight": (256384, 4096), "norm.weight": (4096,)}
    for i in range(24):
        p = f"blocks.{i}."
        want |= {p + "norm1.weight": (4096,), p + "norm2.weight": (4096,),
                 p + "ffn.gate.0.weight": (10240, 4096), p + "ffn.fc1.weight": (10240, 4096),
                 p + "ffn.fc2.weight": (4096, 10240),
                 p + "pos_embedding.embedding.weight": (32, 64)}
        want |= {p + f"attn.{x}.weight": (4096, 4096) for x in "qkvo"}
    assert shapes == want
    assert sum(p.numel() for p in model.parameters()) == 5_680_910_336
