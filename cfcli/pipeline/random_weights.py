"""Random weights of a preset's full size, for timing and planning without downloads (`--random-weights`).

Modules are built on the meta device, materialised on the target device and initialised in place, so no CPU copy of
1.3B/5.7B parameters is ever made. `cf bench`, `cf live` and the session build them here, so every front end gets the
same weights for the same seed: DiT `seed`, VAE `seed + 1`, umT5 and TAEHV `seed + 2`.
"""

import hashlib

import torch
from torch import Tensor, nn

from cfcli import hub
from cfcli.errors import CfError
from cfcli.models.build import build_models
from cfcli.models.t5 import T5Config, UMT5Encoder
from cfcli.models.taehv import TAEHV, TAEHVConfig
from cfcli.pipeline.engine import Engine
from cfcli.pipeline.text import PromptEncoder
from cfcli.presets import Preset
from cfcli.taehv_weights import taehv_path

INIT_STD = 0.02
RANDOM_PROMPT_TOKENS = 64  # umT5 runs only the real tokens: a typical detailed prompt's length


def weights_cached(preset: Preset) -> bool:
    """True when every weight file of the preset is on this machine (never touches the network)."""
    try:
        hub.resolve_all(preset)
    except CfError:
        return False
    return True


def random_init_(module: nn.Module, seed: int, std: float = INIT_STD) -> nn.Module:
    """Seeded in-place init on the module's device: norms to 1 / 0, biases 0, everything else N(0, std²).

    A small std keeps the residual stream and the gated (modulated) branches finite through 30 layers in bf16.
    """
    gen = None
    with torch.no_grad():
        for mod in module.modules():
            is_norm = "norm" in type(mod).__name__.lower()
            for name, p in mod.named_parameters(recurse=False):
                if gen is None:
                    gen = torch.Generator(p.device).manual_seed(seed)
                if name == "bias":
                    p.zero_()
                elif is_norm:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, std, generator=gen)
    return module.eval().requires_grad_(False)


def build_random(module_cls, cfg, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """`module_cls(cfg)` built on meta, materialised in `dtype` on `device` (no CPU copy), randomly initialised."""
    with torch.device("meta"):
        module = module_cls(cfg)
    return random_init_(materialize(module, device, dtype), seed)


def materialize(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A meta-device module given uninitialised storage in `dtype` on `device`.

    Buffers that were real at construction (the VAE's latent statistics, built on the CPU) are restored after
    `to_empty`, which would otherwise leave them uninitialised.
    """
    keep = {n: b.clone() for n, b in module.named_buffers() if not b.is_meta}
    module = module.to(dtype).to_empty(device=device)
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name in keep:
                buf.copy_(keep[name])
    return module


def random_engine(preset: Preset, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Engine:
    """An engine of the preset's architecture with random weights (DiT seeded `seed`, VAE `seed + 1`)."""
    models = build_models(preset)
    dit = random_init_(materialize(models.dit, device, dtype), seed)
    vae = random_init_(materialize(models.vae, device, dtype), seed + 1)
    return Engine(preset, dit, vae, device, dtype)


def decoder_model(name: str, random: bool, device: torch.device, seed: int = 0) -> nn.Module | None:
    """For `Engine.configure`: a random full-size TAEHV, like the rest, when asked for random weights or its weights
    are not downloaded; else None (the decoder's own weights)."""
    if name == "taehv" and (random or not taehv_path().is_file()):
        return build_random(TAEHV, TAEHVConfig(), device, torch.float32, seed + 2)
    return None


def random_t5(cfg: T5Config, device: torch.device, dtype: torch.dtype, seed: int, stream: bool) -> nn.Module:
    """A random full-size umT5, initialised part by part on `device` (each part seeded on its own, so resident and
    streamed encoders get the same weights); with `stream` each part goes to host memory once initialised and the
    encoder runs layer by layer (`cfcli.models.t5_stream`), never whole on the GPU."""
    with torch.device("meta"):
        encoder = UMT5Encoder(cfg).to(dtype)
    for i, part in enumerate([encoder.token_embedding, *encoder.blocks, encoder.norm]):
        random_init_(part.to_empty(device=device), seed + i)
        if stream:
            part.cpu()
    if not stream:
        return encoder
    from cfcli.models.t5_stream import StreamedUMT5

    return StreamedUMT5(encoder, device)


def random_ids(vocab: int, text_len: int, seed: int) -> tuple[Tensor, Tensor]:
    """(ids [1, text_len], mask) of a random prompt of a typical length (`RANDOM_PROMPT_TOKENS`), for random weights."""
    n = min(RANDOM_PROMPT_TOKENS, text_len)
    ids = torch.zeros(1, text_len, dtype=torch.int64)
    ids[0, :n] = torch.randint(1, vocab, (n,), generator=torch.Generator("cpu").manual_seed(seed))
    return ids, (torch.arange(text_len) < n).long()[None]


class RandomPromptEncoder(PromptEncoder):
    """A `PromptEncoder` over a random full-size umT5 (`random_t5`, seed + 2): each prompt hashed into token ids of a
    typical prompt's length, never tokenized, and never cached on disk as a real prompt's features."""

    def __init__(self, preset: Preset, device: torch.device, dtype: torch.dtype, seed: int = 0, **kw):
        super().__init__(preset, device, dtype, **kw)
        self.seed = seed

    def _encode(self, prompts: list[str]) -> list[Tensor]:
        self.loaded_encoder = True
        return [self._pad(row) for row in self._run_encoder(prompts)]

    def _load(self):
        self.loads += 1
        encoder = random_t5(self.configs.text_encoder, self.text_device, self.dtype, self.seed + 2,
                            self.placement == "stream")

        def tokenize(prompt: str) -> tuple[Tensor, Tensor]:
            seed = int.from_bytes(hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()[:8], "little")
            return random_ids(self.configs.text_encoder.vocab, self.text_len, seed)

        return encoder, tokenize
