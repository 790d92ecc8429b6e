"""Prompt -> umT5 features, with an on-disk cache so a repeated prompt never loads the 11 GB encoder.

Cache key: the text-encoder file's identity (resolved path, size, mtime), the tokenizer folder, the cleaned
prompt, the text length and the dtype. Entries hold only the real tokens' rows (the rest are zeros by definition)
and are written atomically. Where umT5 runs is the memory plan's `text` (`cfcli.pipeline.memory`): on the GPU, streamed
layer by layer from host memory, or on the CPU. It is loaded only when some prompt misses the cache and released
before the DiT runs, unless the encoder `keep`s it loaded (`cf live`, where prompts arrive while the DiT runs).
"""

import contextlib
import hashlib
import logging
import os
import threading
from pathlib import Path

import torch
from torch import Tensor

from cfcli import hub
from cfcli.models.build import build_text_encoder
from cfcli.models.checkpoint import load_strict, read_state_dict
from cfcli.models.t5 import encode_text
from cfcli.models.tokenizer import PromptTokenizer, clean_prompt
from cfcli.paths import cf_home
from cfcli.pipeline.phases import loading, maybe_load
from cfcli.presets import Preset

log = logging.getLogger(__name__)


def _file_id(path: Path) -> str:
    st = path.resolve().stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


class PromptEncoder:
    """umT5 features of prompts for a run on `device`; `placement` is the memory plan's `text` ("resident",
    "stream" or "cpu"); `keep`: umT5 stays loaded between calls (calls are then serialised by a lock)."""

    def __init__(self, preset: Preset, device: torch.device, dtype: torch.dtype, cache_dir: Path | None = None,
                 note=lambda m: None, placement: str = "resident", phases=None, keep: bool = False):
        self.preset, self.device, self.dtype, self.note = preset, device, dtype, note  # note: loading status
        self.phases = phases  # a `cfcli.pipeline.phases.Phases` that times the encoder's load
        self.placement, self.keep = placement, keep
        self.text_device = torch.device("cpu") if placement == "cpu" else device  # where umT5 computes
        self.configs = preset.configs
        self.text_len = self.configs.geometry.text_len
        self.cache_dir = cache_dir if cache_dir is not None else cf_home() / "prompts"
        self.loaded_encoder = False  # did the last call need umT5 (a `cf generate` phase fact)?
        self.loads = 0  # how many times umT5 was loaded
        self._kept = None  # (encoder, tokenize) while `keep`
        self._lock = threading.Lock()

    def _key(self, prompt: str) -> str:
        enc, tok = hub.resolve(self.preset, "text_encoder"), hub.resolve(self.preset, "tokenizer")
        ident = "\n".join([_file_id(enc), str(tok.resolve()), clean_prompt(prompt), str(self.text_len),
                           str(self.dtype)])
        return hashlib.sha256(ident.encode()).hexdigest()

    @property
    def where(self) -> str:
        """Where umT5 stays, in words: `on cuda`, `on cpu`, or `in host memory, streamed to cuda`."""
        return f"in host memory, streamed to {self.device}" if self.placement == "stream" else f"on {self.text_device}"

    def encode(self, prompts: list[str]) -> list[Tensor]:
        """umT5 features [1, text_len, dim] (padding rows zero) for each prompt, on the run's device."""
        with self._lock:
            return self._encode(prompts)

    def is_cached(self, prompt: str) -> bool:
        """Whether `prompt`'s features are in the prompt cache (its next `encode` runs no umT5)."""
        return self._entry(self._key(prompt)).is_file()

    def load(self) -> "PromptEncoder":
        """Load umT5 now when it is kept, so the first prompt does not wait for it."""
        with self._lock:
            if self.keep and self._kept is None:
                self._kept = self._load()
        return self

    def warm(self) -> None:
        """Run a kept umT5 once on a throwaway prompt, past the disk cache, on the calling thread: the first new
        prompt then does not pay for first-call set-up there (kernel choices, the thread's cuBLAS handle)."""
        with self._lock:
            if self.keep:
                self._run_encoder(["warm-up"])

    def release(self) -> None:
        """Drop a kept umT5 (and give its GPU memory back)."""
        with self._lock:
            self._kept = None
        if self.text_device.type == "cuda":
            torch.cuda.empty_cache()

    def _encode(self, prompts: list[str]) -> list[Tensor]:
        keys = [self._key(p) for p in prompts]
        out = {key: rows for key in set(keys) if (rows := self._cached(key)) is not None}
        missing = [(k, p) for k, p in zip(keys, prompts) if k not in out]
        self.loaded_encoder = bool(missing)
        if missing:
            rows = self._run_encoder([p for _, p in missing])
            for (key, _), emb in zip(missing, rows):
                out[key] = emb
            self._store({key: out[key] for key, _ in missing})
        return [self._pad(out[k]) for k in keys]

    def _entry(self, key: str) -> Path:
        return self.cache_dir / f"{key}.safetensors"

    def _cached(self, key: str) -> Tensor | None:
        """The cached rows for `key`, or None; an entry that is damaged or of the wrong shape/dtype is deleted."""
        from safetensors.torch import load_file

        f = self._entry(key)
        try:
            if not f.is_file():
                return None
            rows = load_file(str(f)).get("embeds")
        except Exception:  # noqa: BLE001 - a damaged entry is recomputed
            rows = None
        if rows is not None and self._fits(rows):
            return rows
        with contextlib.suppress(OSError):
            f.unlink(missing_ok=True)
        return None

    def _fits(self, rows: Tensor) -> bool:
        dim = self.configs.text_encoder.dim
        return (rows.ndim == 2 and 1 <= rows.shape[0] <= self.text_len and rows.shape[1] == dim
                and rows.is_floating_point() and bool(torch.isfinite(rows).all()))

    def _store(self, entries: dict[str, Tensor]) -> None:
        """Write new entries beside their final names and rename; an unwritable cache only costs a note."""
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        for key, emb in entries.items():
            tmp = self.cache_dir / f".{key}.{os.getpid()}.tmp"
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                save_file({"embeds": emb.contiguous()}, str(tmp))
                os.replace(tmp, self._entry(key))
            except (OSError, SafetensorError) as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                log.warning("note: the prompt cache %s is not writable (%s); prompts are encoded without caching "
                            "(set CF_HOME to a writable folder to keep them)", self.cache_dir,
                            getattr(exc, "strerror", None) or str(exc).splitlines()[0])
                return

    def _pad(self, rows: Tensor) -> Tensor:
        full = torch.zeros(1, self.text_len, rows.shape[-1], dtype=self.dtype, device=self.device)
        full[0, : rows.shape[0]] = rows.to(self.device, self.dtype)
        return full

    def _load(self):
        """(umT5, tokenize: prompt -> (ids, mask)) where the placement says."""
        self.loads += 1
        stream = "stream" if self.placement == "stream" else "resident"
        encoder, tokenizer = load_umt5(self.preset, self.text_device, self.dtype, stream, self.note, self.phases)
        return encoder, lambda prompt: tokenizer([prompt], self.text_len)

    def _run_encoder(self, prompts: list[str]) -> list[Tensor]:
        encoder, tokenize = self._kept or self._load()
        if self.keep:
            self._kept = (encoder, tokenize)
        rows = []
        with torch.inference_mode():
            for prompt in prompts:
                ids, mask = tokenize(prompt)
                n = int(mask.sum())
                emb = encode_text(encoder, ids.to(self.text_device), mask.to(self.text_device), self.text_len)
                rows.append(emb[0, :n].cpu())
        del encoder  # unless kept, umT5 leaves the GPU before the DiT runs
        if not self.keep and self.text_device.type == "cuda":
            torch.cuda.empty_cache()
        return rows


def load_umt5(preset: Preset, device: torch.device, dtype: torch.dtype, placement: str = "resident",
              note=lambda m: None, phases=None) -> tuple[torch.nn.Module, PromptTokenizer]:
    """The preset's cached umT5 and tokenizer: umT5 whole on `device` ("resident"), or layer by layer from host
    memory ("stream", `cfcli.models.t5_stream`). `note` hears the loading line, `phases` times the load."""
    tokenizer = PromptTokenizer.from_folder(hub.resolve(preset, "tokenizer"))
    path = hub.resolve(preset, "text_encoder")
    note(loading("text encoder (umT5)", path))
    encoder = build_text_encoder(preset.configs)
    stream = placement == "stream"
    with maybe_load(phases, "text_encoder", path):
        load_strict(encoder, read_state_dict(path), what=f"text encoder ({path.name})", dtype=dtype,
                    device="cpu" if stream else device)
    if stream:
        from cfcli.models.t5_stream import StreamedUMT5

        encoder = StreamedUMT5(encoder, device)
    return encoder, tokenizer
