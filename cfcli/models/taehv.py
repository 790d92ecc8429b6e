"""TAEHV: madebyollin's tiny video decoder for Wan2.1 latents (`taew2_1.pth`), a cheap stand-in for the Wan VAE.

Every layer works on single frames (2D convolutions); time enters in two places only:
- a `MemBlock` sees its input frame next to its input at the previous time step (zeros before the video);
- a `TGrow` turns each frame into `stride` frames (a 1x1 conv to `stride` times the channels, split in order).
Two TGrows of stride 2 give 4 frames per latent. The first `4 - 1 = 3` frames of the video are dropped, so latent
0 gives 1 frame and each later latent 4, the Wan VAE's `1 + 4(F - 1)`.

Latents go in exactly as the DiT produces them (normalised, no mean/std applied): TAEHV was trained on the
diffusion model's latents, and the Causal Forcing demo feeds `denoised_pred` to it as is.

Parameter names follow the official file (`decoder.<index>.…` of one `nn.Sequential`), so the checkpoint loads
strictly. Only the decoder is built: `load_taehv` drops the file's `encoder.*` tensors.

Precision: every layer runs in the module dtype (inputs are cast to it); `decode` returns float32 pixels in
[-1, 1] (the official [0, 1] output, clamped, times 2 minus 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfcli.errors import CfError


@dataclass(frozen=True)
class TAEHVConfig:
    """Sizes of a TAEHV decoder; the defaults are the released Wan2.1 one (`taew2_1.pth`, 9.8M parameters).

    `channels[i]` is the width of stage i; the last entry is the width of the final conv before RGB.
    `time_upscale[i]` / `space_upscale[i]` say whether stage i doubles time / height and width.
    """

    latent_channels: int = 16
    image_channels: int = 3
    channels: tuple[int, ...] = (256, 128, 64, 64)
    mem_blocks: int = 3
    time_upscale: tuple[bool, ...] = (False, True, True)
    space_upscale: tuple[bool, ...] = (True, True, True)

    def __post_init__(self) -> None:
        # Presets come from YAML lists; tuples keep the config hashable and immutable.
        for name in ("channels", "time_upscale", "space_upscale"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        stages = len(self.channels) - 1
        if len(self.time_upscale) != stages or len(self.space_upscale) != stages:
            raise ValueError(f"TAEHVConfig: {stages} stages need {stages} time_upscale and space_upscale flags")

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.time_upscale)

    @property
    def spatial_stride(self) -> int:
        return 2 ** sum(self.space_upscale)


def conv3x3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


def per_frame(layer: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2D layer to every frame of x [B, T, C, H, W]."""
    return layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class TanhClamp(nn.Module):
    """Soft clamp of the latents to (-3, 3): `3 tanh(x / 3)`."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual block over [frame, previous frame]: relu(convs(cat(x_t, x_{t-1})) + x_t)."""

    def __init__(self, dim: int):
        super().__init__()
        # Sequential only to keep the official names (conv.0, conv.2, conv.4). The official `skip` is an identity
        # at equal widths (the only case in the released decoders), so it has no parameters and is left out.
        self.conv = nn.Sequential(conv3x3(2 * dim, dim), nn.ReLU(), conv3x3(dim, dim), nn.ReLU(), conv3x3(dim, dim))

    def forward(self, x: Tensor, last: Tensor | None) -> Tensor:
        """x [B, T, C, H, W]; `last` [B, C, H, W] is the input frame before x[:, 0] (None: start of the video)."""
        first = torch.zeros_like(x[:, 0]) if last is None else last
        past = torch.cat([first.unsqueeze(1), x[:, :-1]], dim=1)
        return F.relu(per_frame(self.conv, torch.cat([x, past], dim=2)) + x)


class TGrow(nn.Module):
    """Time upsampling: each frame [C, H, W] -> `stride` frames, from a 1x1 conv to `stride * C` channels."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(dim, dim * stride, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c, h, w = x.shape
        # Channel group j of frame t becomes frame t * stride + j.
        return per_frame(self.conv, x).reshape(b, t * self.stride, c, h, w)


def build_decoder(cfg: TAEHVConfig) -> nn.Sequential:
    """The official layer sequence, so that indices (the parameter names) match the checkpoint."""
    ch = cfg.channels
    layers: list[nn.Module] = [TanhClamp(), conv3x3(cfg.latent_channels, ch[0]), nn.ReLU()]
    for stage, (dim, out_dim) in enumerate(pairwise(ch)):
        layers += [MemBlock(dim) for _ in range(cfg.mem_blocks)]
        layers += [nn.Upsample(scale_factor=2 if cfg.space_upscale[stage] else 1, mode="nearest"),
                   TGrow(dim, 2 if cfg.time_upscale[stage] else 1), conv3x3(dim, out_dim, bias=False)]
    layers += [nn.ReLU(), conv3x3(ch[-1], cfg.image_channels)]
    return nn.Sequential(*layers)


class TAEHV(nn.Module):
    """TAEHV decoder: `stream_decoder` / `decode` normalised Wan latents -> video in [-1, 1]."""

    def __init__(self, cfg: TAEHVConfig = TAEHVConfig()):
        super().__init__()
        self.cfg = cfg
        self.decoder = build_decoder(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder[1].weight.dtype

    def forward(self, z: Tensor, memory: MemBlockMemory) -> Tensor:
        """One latent frame z [B, C, h, w] -> its raw frames [B, temporal_stride, 3, 8h, 8w] (about [0, 1])."""
        x = z.unsqueeze(1)
        for layer in self.decoder:
            if isinstance(layer, MemBlock):
                x = layer(x, memory.swap(layer, x[:, -1]))
            elif isinstance(layer, TGrow):
                x = layer(x)
            else:
                x = per_frame(layer, x)
        return x

    def stream_decoder(self) -> TAEHVStreamingDecoder:
        """A decoder for one video, fed latent frames in order over successive calls."""
        return TAEHVStreamingDecoder(self)

    def lean(self, split_frames: bool, host_cache: bool) -> None:
        """Nothing to switch: a few small frames a layer is all TAEHV keeps (`cfcli.models.decoder.Decoder`)."""

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """latents [B, F, 16, h, w] (normalised) -> float32 pixels [B, 1 + 4(F-1), 3, 8h, 8w] in [-1, 1]."""
        return self.stream_decoder().decode(latents)


class MemBlockMemory:
    """What each MemBlock of one video remembers between latent frames: its last input frame."""

    def __init__(self) -> None:
        self._last: dict[nn.Module, Tensor] = {}

    def swap(self, block: nn.Module, last: Tensor) -> Tensor | None:
        """Remember `last` [B, C, H, W] for the block; return what it remembered before (None the first time)."""
        previous = self._last.get(block)
        # A fresh copy, so that the whole chunk `last` was sliced from can be freed.
        self._last[block] = last.clone()
        return previous


class TAEHVStreamingDecoder:
    """Owns the MemBlock memory of one video.

    `decode(latents [B, f, 16, h, w])` returns the pixels those f latent frames produce, [B, n, 3, H, W] float32
    in [-1, 1] (n = 1 + 4(f-1) on the very first call, 4f afterwards). Latents go through the decoder one at a
    time whatever the chunking, so concatenated outputs equal `TAEHV.decode` exactly.
    """

    def __init__(self, model: TAEHV):
        self.model = model
        self.memory = MemBlockMemory()
        self.latents_seen = 0

    def carried(self) -> list[Tensor]:
        """[]: TAEHV's memory has no host-memory form (`cfcli.models.decoder.StreamDecoder`)."""
        return []

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """The next f latent frames [B, f, 16, h, w] (normalised) -> their pixels [B, n, 3, 8h, 8w]."""
        model, cfg = self.model, self.model.cfg
        b, f, c, h, w = latents.shape
        if c != cfg.latent_channels:
            raise ValueError(f"expected latents [B, F, {cfg.latent_channels}, h, w], got {list(latents.shape)}")
        step, s = cfg.temporal_stride, cfg.spatial_stride
        # The video's first `step - 1` frames are dropped (latent 0 gives 1 frame), as the official decoder does.
        trim = step - 1 if self.latents_seen == 0 and f > 0 else 0
        out = torch.empty(b, step * f - trim, cfg.image_channels, h * s, w * s, dtype=torch.float32,
                          device=latents.device)
        z = latents.to(model.dtype)
        done = 0
        for i in range(f):
            frames = model(z[:, i], self.memory)
            if i == 0:
                frames = frames[:, trim:]
            out[:, done:done + frames.shape[1]].copy_(frames)
            done += frames.shape[1]
        self.latents_seen += f
        # [0, 1] -> [-1, 1], like the demo's `.mul_(2).sub_(1)` after the official clamp.
        return out.clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)


def tgrow_keys(model: TAEHV) -> list[str]:
    """State-dict keys of the TGrow convolutions."""
    return [f"decoder.{i}.conv.weight" for i, layer in enumerate(model.decoder) if isinstance(layer, TGrow)]


def decoder_state_dict(raw, model: TAEHV) -> dict[str, Tensor]:
    """The decoder tensors of an official TAEHV file, fitted to `model`.

    Drops `encoder.*` (cfcli only decodes). Like the official loader, a TGrow weight stored with more output
    channels than the model's stride needs (a checkpoint trained with that time upscale on) keeps the last
    ones: the last time step's channels.
    """
    sd = {k: raw[k] for k in raw if not k.startswith("encoder.")}
    expected = model.state_dict()
    for key in tgrow_keys(model):
        want = expected[key].shape[0]
        if key in sd and sd[key].shape[0] > want and sd[key].shape[0] % want == 0:
            sd[key] = sd[key][-want:]
    return sd


def load_taehv(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float16,
               cfg: TAEHVConfig = TAEHVConfig()) -> TAEHV:
    """Build TAEHV on `device`/`dtype` and load `taew2_1.pth` (or its .safetensors twin) strictly."""
    from cfcli.models.checkpoint import load_strict, read_state_dict

    path = Path(path)
    hint = ("use taew2_1.pth from github.com/madebyollin/taehv (the Wan 2.1 decoder; taew2_2 is for Wan 2.2 5B, "
            "the *_super files are another architecture)")
    raw = read_state_dict(path)
    first = raw.get("decoder.1.weight") if hasattr(raw, "get") else None
    if first is None:
        raise CfError(f"{path} is not a TAEHV weights file (no decoder.1.weight)", hint)
    if first.ndim != 4 or first.shape[1] != cfg.latent_channels:
        raise CfError(f"{path} decodes {first.shape[1] if first.ndim == 4 else '?'}-channel latents, "
                      f"not the {cfg.latent_channels} of Wan 2.1", hint)
    with torch.device("meta"):
        model = TAEHV(cfg)
    try:
        return load_strict(model, decoder_state_dict(raw, model), what=f"TAEHV ({path.name})", dtype=dtype,
                           device=device)
    except CfError as exc:
        raise CfError(exc.message, hint) from exc
