"""Prompt cleaning and umT5 tokenisation, equal to Wan's HuggingfaceTokenizer(clean='whitespace').

The official code goes through `transformers.AutoTokenizer` (a fast tokenizer backed by the same
`tokenizer.json`); here the `tokenizers` library is driven directly with the settings that
`padding='max_length', truncation=True, max_length=L, add_special_tokens=True` translate to:
truncation 'longest_first' from the right, right padding with `<pad>` (id 0). The Rust truncation
reserves room for the post-processor's `</s>`, so an over-long prompt keeps L-1 text tokens and
still ends in EOS.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import torch
from torch import Tensor

from cfcli.models.dit import DiTConfig

__all__ = ["clean_prompt", "PromptTokenizer"]

PAD_TOKEN, PAD_ID = "<pad>", 0


def clean_prompt(text: str) -> str:
    """ftfy.fix_text, html.unescape twice, strip, collapse whitespace runs to one space, strip."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    # The reference uses the `regex` module's \s (Unicode White_Space); stdlib \s differs only on
    # U+001C..U+001F, which ftfy removes and html.unescape never produces, so results are equal.
    return re.sub(r"\s+", " ", text).strip()


class PromptTokenizer:
    """Cleans prompts and turns them into fixed-length id / attention-mask tensors."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer  # a tokenizers.Tokenizer

    @classmethod
    def from_folder(cls, folder: Path) -> "PromptTokenizer":
        """Load `<folder>/tokenizer.json` (the `google/umt5-xxl` folder of the Wan checkpoint)."""
        from tokenizers import Tokenizer

        from cfcli.errors import CfError

        file = Path(folder) / "tokenizer.json"
        if not file.is_file():
            raise CfError(f"tokenizer folder {folder} has no tokenizer.json",
                          "re-download the tokenizer (`cf download`) or fix the preset's tokenizer path")
        try:
            return cls(Tokenizer.from_file(str(file)))
        except Exception as exc:  # noqa: BLE001 - the Rust side raises a bare Exception for a bad file
            raise CfError(f"could not read tokenizer {file}: {exc}".splitlines()[0],
                          "the file is damaged; delete the tokenizer folder and run `cf download` again") from exc

    def __call__(self, prompts: list[str], length: int = DiTConfig.text_len) -> tuple[Tensor, Tensor]:
        """-> ids [B, length] int64 (EOS appended, 0-padded), mask [B, length] int64 (1 = real token)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        tok = self._tokenizer
        # Set per call (length may change); overrides anything stored in tokenizer.json, as HF does.
        tok.enable_truncation(max_length=length, stride=0, strategy="longest_first", direction="right")
        tok.enable_padding(length=length, pad_id=PAD_ID, pad_token=PAD_TOKEN, direction="right")
        encodings = tok.encode_batch([clean_prompt(p) for p in prompts], add_special_tokens=True)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
        return ids.reshape(len(prompts), length), mask.reshape(len(prompts), length)
