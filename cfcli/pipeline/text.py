"""Prompt -> umT5 features, with an on-disk cache so a repeated prompt never loads the 11 GB encoder.

Cache key: the text-encoder file's identity (resolved path, size, mtime), the tokenizer folder, the cleaned
prompt, the text length and the dtype. Entries hold only the real tokens' rows (the rest are zeros by definition)
and are written atomically. The encoder is loaded on the run's device only when some prompt misses the cache and is
released before the DiT runs.
"""

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor

from cfcli import hub
from cfcli.models.checkpoint import load_strict, read_state_dict
from cfcli.models.t5 import T5Config, UMT5Encoder, encode_text
from cfcli.models.tokenizer import PromptTokenizer, clean_prompt
from cfcli.paths import cf_home
from cfcli.presets import Preset


def _file_id(path: Path) -> str:
    st = path.resolve().stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


class PromptEncoder:
    def __init__(self, preset: Preset, device: torch.device, dtype: torch.dtype, cache_dir: Path | None = None,
                 placement: str = "resident"):
        self.preset, self.device, self.dtype = preset, device, dtype
        self.placement = placement  # "stream": umT5 layer by layer from host memory (`cfcli.models.t5_stream`)
        self.text_len = int(preset.arch("dit").get("text_len", 512))
        self.cache_dir = cache_dir if cache_dir is not None else cf_home() / "prompts"
        self.loaded_encoder = False  # for tests and `cf bench`: did the last call need umT5?

    def _key(self, prompt: str) -> str:
        enc, tok = hub.resolve(self.preset, "text_encoder"), hub.resolve(self.preset, "tokenizer")
        ident = "\n".join([_file_id(enc), str(tok.resolve()), clean_prompt(prompt), str(self.text_len),
                           str(self.dtype)])
        return hashlib.sha256(ident.encode()).hexdigest()

    def encode(self, prompts: list[str]) -> list[Tensor]:
        """umT5 features [1, text_len, dim] (padding rows zero) for each prompt, on the run's device."""
        from safetensors.torch import load_file, save_file

        keys = [self._key(p) for p in prompts]
        out: dict[str, Tensor] = {}
        for key in set(keys):
            f = self.cache_dir / f"{key}.safetensors"
            if f.is_file():
                try:
                    out[key] = load_file(str(f))["embeds"]
                except Exception:  # noqa: BLE001 - a damaged entry is recomputed
                    f.unlink(missing_ok=True)
        missing = [(k, p) for k, p in zip(keys, prompts) if k not in out]
        self.loaded_encoder = bool(missing)
        if missing:
            rows = self._run_encoder([p for _, p in missing])
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            for (key, _), emb in zip(missing, rows):
                out[key] = emb
                tmp = self.cache_dir / f".{key}.{os.getpid()}.tmp"
                save_file({"embeds": emb.contiguous()}, str(tmp))
                os.replace(tmp, self.cache_dir / f"{key}.safetensors")
        return [self._pad(out[k]) for k in keys]

    def _pad(self, rows: Tensor) -> Tensor:
        full = torch.zeros(1, self.text_len, rows.shape[-1], dtype=self.dtype, device=self.device)
        full[0, : rows.shape[0]] = rows.to(self.device, self.dtype)
        return full

    def _run_encoder(self, prompts: list[str]) -> list[Tensor]:
        tokenizer = PromptTokenizer.from_folder(hub.resolve(self.preset, "tokenizer"))
        path = hub.resolve(self.preset, "text_encoder")
        with torch.device("meta"):
            encoder = UMT5Encoder(T5Config(**self.preset.arch("text_encoder")))
        stream = self.placement == "stream"
        load_strict(encoder, read_state_dict(path), what=f"text encoder ({path.name})", dtype=self.dtype,
                    device="cpu" if stream else self.device)
        if stream:
            from cfcli.models.t5_stream import StreamedUMT5

            encoder = StreamedUMT5(encoder, self.device)
        rows = []
        with torch.inference_mode():
            for prompt in prompts:
                ids, mask = tokenizer([prompt], self.text_len)
                n = int(mask.sum())
                emb = encode_text(encoder, ids.to(self.device), mask.to(self.device), self.text_len)
                rows.append(emb[0, :n].cpu())
        del encoder  # umT5 leaves the GPU before the DiT runs
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return rows
