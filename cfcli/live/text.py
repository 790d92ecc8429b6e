"""A prompt encoder that stays loaded: `cf live` answers a typed prompt within a block or two.

`PromptEncoder` loads umT5 for each batch that misses its on-disk cache and drops it again (right for `cf generate`,
where the DiT must have the GPU to itself). Live, a new prompt arrives while the DiT runs, so the encoder is loaded
once, on `text_device`: the GPU when it has room beside the DiT, else the CPU. The on-disk cache is shared with
`cf generate`, so features are reused both ways. With random weights (`--random-weights`, for timing) the prompt is
hashed into token ids of a typical prompt's length instead of tokenized.
"""

import hashlib
import threading

import torch
from torch import Tensor

from cfcli.models.build import build_text_encoder
from cfcli.models.t5 import UMT5Encoder, encode_text
from cfcli.pipeline.text import PromptEncoder, load_umt5
from cfcli.presets import Preset

HEADROOM_GIB = 6.0  # free GPU memory kept beyond umT5's own weights when placing it there


def pick_text_device(choice: str | None, device: torch.device, preset: Preset, dtype: torch.dtype) -> torch.device:
    """`cpu` / `cuda` as asked; automatic: the run's GPU when umT5 plus headroom fits in its free memory, else CPU."""
    if choice is not None:
        return torch.device(device if choice == "cuda" and device.type == "cuda" else choice)
    if device.type != "cuda":
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    need = encoder_bytes(preset, dtype) + HEADROOM_GIB * 2**30
    return device if free > need else torch.device("cpu")


def encoder_bytes(preset: Preset, dtype: torch.dtype) -> int:
    encoder = build_text_encoder(preset.configs)
    return sum(p.numel() for p in encoder.parameters()) * torch.finfo(dtype).bits // 8


class ResidentPromptEncoder(PromptEncoder):
    """`PromptEncoder` whose umT5 is loaded once on `text_device` and kept; calls are serialised by a lock."""

    def __init__(self, preset: Preset, device: torch.device, dtype: torch.dtype, text_device: torch.device,
                 random_weights: bool = False, seed: int = 0):
        super().__init__(preset, device, dtype)
        self.text_device, self.random_weights, self.seed = text_device, random_weights, seed
        self._encoder, self._tokenizer, self._lock = None, None, threading.Lock()

    def _key(self, prompt: str) -> str:
        if self.random_weights:  # random features must never be cached as a real prompt's
            return hashlib.sha256(f"random:{self.seed}:{prompt}:{self.dtype}".encode()).hexdigest()
        return super()._key(prompt)

    def encode(self, prompts: list[str]) -> list[Tensor]:
        with self._lock:
            if self.random_weights:
                return [self._pad(row) for row in self._run_encoder(prompts)]
            return super().encode(prompts)

    def load(self) -> "ResidentPromptEncoder":
        """Load umT5 (and the tokenizer) now, so the first prompt does not wait for it."""
        if self._encoder is not None:
            return self
        cfg = self.configs.text_encoder
        if self.random_weights:
            from cfcli.pipeline.bench import build_random

            self._encoder = build_random(UMT5Encoder, cfg, self.text_device, self.dtype, self.seed + 2)
            return self
        self._encoder, self._tokenizer = load_umt5(self.preset, self.text_device, self.dtype)
        return self

    def _ids(self, prompt: str) -> tuple[Tensor, Tensor]:
        if not self.random_weights:
            return self._tokenizer([prompt], self.text_len)
        from cfcli.pipeline.bench import random_ids

        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
        return random_ids(self._encoder.cfg.vocab, self.text_len, seed)

    def _run_encoder(self, prompts: list[str]) -> list[Tensor]:
        self.load()
        rows = []
        with torch.inference_mode():
            for prompt in prompts:
                ids, mask = self._ids(prompt)
                emb = encode_text(self._encoder, ids.to(self.text_device), mask.to(self.text_device), self.text_len)
                rows.append(emb[0, :int(mask.sum())].cpu())
        return rows
