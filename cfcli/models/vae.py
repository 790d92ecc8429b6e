"""The Wan2.1 video VAE: a 3D causal autoencoder, 4x in time and 8x in space, 16 latent channels.

Parameter names follow the official `Wan2.1_VAE.pth` (`encoder.*`, `conv1.*`, `conv2.*`, `decoder.*`), so it
loads with `strict=True`. Time is causal everywhere: every 3D convolution sees only the current and past
frames, so a video is encoded in chunks of 1, 4, 4, ... frames and decoded one latent frame at a time.
What each convolution must remember between chunks lives in a `CausalCache`, one per video and direction;
`StreamingDecoder` owns one and `WanVAE.decode` is a loop over it.

Latents are normalised per channel, `z = (mu - mean) / std`, where `/ std` is written as the reference
writes it: `* (1 / std)` on the way in and `/ (1 / std)` on the way out, with `mean` and `1 / std` rounded to
the latent dtype first (bf16 in the reference's bf16 pipeline). float32 stays float32 throughout.

The modules here are the reference, as written. Their fast forms for GPUs (channels-last, stacked time taps,
sub-pixel upsampling, fused norms) are subclasses in `cfcli.models.vae_fast`, swapped in by
`cfcli.pipeline.fast.tune_vae`.

Precision: every layer runs in the module dtype (`.to(dtype)`); inputs are cast to it. The RMS norms work in
that dtype too (as the reference does). `decode` returns float32 pixels clamped to [-1, 1], like the
reference wrapper, so downstream uint8 conversion matches it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Per-channel statistics of the latent space, from the official wrapper.
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of a Wan2.1 VAE; the defaults are the released one (`Wan2.1_VAE.pth`, 127M parameters)."""

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latent_mean: tuple[float, ...] = LATENT_MEAN
    latent_std: tuple[float, ...] = LATENT_STD

    def __post_init__(self) -> None:
        # Presets come from YAML lists; tuples keep the config hashable and immutable.
        for name in ("dim_mult", "temporal_downsample", "latent_mean", "latent_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)


class CausalCache:
    """What the causal layers of one encoder or decoder remember between the chunks of one video.

    Keyed by layer, so each layer finds its own past without index bookkeeping. Only the last few
    frames a layer needs are kept (2 for a 3-tap time kernel), as fresh tensors so that the large
    chunk they came from can be freed.
    """

    def __init__(self, store=None) -> None:
        self._past = store if store is not None else {}  # or a `cfcli.models.offload.HostStore`
        self._visited: set[nn.Module] = set()

    def extend(self, layer: nn.Module, x: Tensor, frames: int) -> Tensor:
        """`x` with the layer's previous `frames` input frames in front (zeros before the video starts)."""
        joined = torch.cat([self.recall(layer, x, frames), x], dim=2)
        self.keep(layer, joined[:, :, -frames:])
        return joined

    def keep(self, layer: nn.Module, new: Tensor) -> None:
        """Remember `new`, the last frames of a larger tensor, as the layer's past: copied, so that tensor can go."""
        kept = self._past.get(layer) if isinstance(self._past, dict) else None  # (a host store copies out anyway)
        if kept is not None and kept.shape == new.shape:
            kept.copy_(new)  # in place: no second copy of a full-resolution past alive at once
        else:
            self.remember(layer, new.clone() if isinstance(self._past, dict) else new)

    def recall(self, layer: nn.Module, like: Tensor, frames: int) -> Tensor:
        """The layer's previous input frames, or `frames` zero frames shaped and laid out like `like` before the
        video starts."""
        past = self._past.get(layer)
        if past is None:
            b, c, _, h, w = like.shape
            layout = torch.channels_last_3d if channels_last(like) else torch.contiguous_format
            past = like.new_zeros(b, c, frames, h, w).contiguous(memory_format=layout)
        return past

    def remember(self, layer: nn.Module, frames: Tensor) -> None:
        """Keep `frames` as the layer's past for its next call."""
        self._past[layer] = frames

    def swap(self, layer: nn.Module, keep: Tensor) -> Tensor | None:
        """Remember `keep` for the layer; return what it remembered before (None the first time)."""
        past = self._past.get(layer)
        self._past[layer] = keep
        return past

    def first_visit(self, layer: nn.Module) -> bool:
        """True the first time the layer asks, False afterwards."""
        first = layer not in self._visited
        self._visited.add(layer)
        return first


class CausalConv3d(nn.Conv3d):
    """A 3D convolution padded in time on the past side only; the past comes from the cache."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int | tuple[int, int, int], padding: int = 0):
        kernel = (kernel,) * 3 if isinstance(kernel, int) else kernel
        # Spatial zero padding is done by the convolution itself (no padded copy of the input).
        super().__init__(in_dim, out_dim, kernel, padding=(0, padding, padding))
        self.history = kernel[0] - 1

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        return self.convolve(x, cache, self.bias)

    def convolve(self, x: Tensor, cache: CausalCache, bias: Tensor | None) -> Tensor:
        """The convolution with `bias` (None: leave it to the next op, which adds it in the same pass)."""
        x = cache.extend(self, x, self.history)  # (rebound: the input chunk can go before the convolution runs)
        return self._conv_forward(x, self.weight, bias)

    def convolve_normed(self, x: Tensor, norm: RMSNorm, norm_bias: Tensor | None, cache: CausalCache,
                        bias: Tensor | None = None) -> Tensor:
        """`convolve(norm.then_silu(x, norm_bias), cache, bias)`: one step, so that a fast form may fuse it."""
        return self.convolve(norm.then_silu(x, norm_bias), cache, bias)


def rms_norm_silu(x: Tensor, gamma: Tensor, scale: float) -> Tensor:
    """SiLU(`RMSNorm`(x)), step by step in place on the fresh normalised tensor (the reference's rounding)."""
    return F.silu(F.normalize(x, dim=1).mul_(scale).mul_(gamma), inplace=True)


def per_channel(bias: Tensor, like: Tensor) -> Tensor:
    """bias [C] viewed to broadcast over like [B, C, *spatial]."""
    return bias.view(-1, *(1,) * (like.dim() - 2))


class RMSNorm(nn.Module):
    """Wan VAE's RMS norm over channels (dim 1): `normalize(x) * sqrt(dim) * gamma`, in the input dtype."""

    def __init__(self, dim: int, spatial_dims: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * spatial_dims))

    def forward(self, x: Tensor) -> Tensor:
        # In place on the fresh normalised tensor: same rounding as `* scale * gamma`, fewer big temporaries.
        return F.normalize(x, dim=1).mul_(self.scale).mul_(self.gamma)

    def then_silu(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """SiLU(norm(x + bias)): the decoder follows every norm with a SiLU, and `bias` is the convolution's before it
        (`CausalConv3d.convolve`), so that on GPUs all three can run as one kernel (`cfcli.models.vae_fast`)."""
        return rms_norm_silu(x if bias is None else x + per_channel(bias, x), self.gamma, self.scale)


def channels_last(x: Tensor) -> bool:
    """Whether x (4D or 5D) is stored channels-last (the layout `cfcli.models.vae_fast.channels_last_` switches the
    decoder to)."""
    fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    return not x.is_contiguous() and x.is_contiguous(memory_format=fmt)


def to_frames(x: Tensor) -> Tensor:
    """[B, C, T, H, W] -> [B*T, C, H, W], for the layers that work on each frame alone (a view in channels-last)."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def from_frames(x: Tensor, batch: int) -> Tensor:
    """[B*T, C, H, W] -> dense [B, C, T, H, W] in x's layout (free when T == 1 or channels-last)."""
    fmt = torch.channels_last_3d if channels_last(x) else torch.contiguous_format
    return x.unflatten(0, (batch, -1)).transpose(1, 2).contiguous(memory_format=fmt)


def interleave_pairs(pairs: Tensor) -> Tensor:
    """[B, 2, C, T, H, W] (even and odd frames) -> [B*2T, C, H, W], frame 2i+j from half j at time i; one copy, in the
    input's layout."""
    b, _, c, t, h, w = pairs.shape
    if pairs.stride(2) == 1:  # channels-last: keep channels innermost
        return pairs.permute(0, 3, 1, 4, 5, 2).reshape(b * t * 2, h, w, c).permute(0, 3, 1, 2)
    return pairs.permute(0, 3, 1, 2, 4, 5).reshape(b * t * 2, c, h, w)


def upsample_nearest_2x(x: Tensor) -> Tensor:
    """[N, C, H, W] -> [N, C, 2H, 2W], each pixel repeated 2x2, in x's layout: `nn.Upsample(scale_factor=2.0)`'s
    values as one broadcast copy (twice as fast as its channels-last kernel on GPUs)."""
    n, c, h, w = x.shape
    if channels_last(x):
        rows = x.permute(0, 2, 3, 1)[:, :, None, :, None].expand(n, h, 2, w, 2, c)
        return rows.reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
    return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


class ResidualBlock(nn.Module):
    """(RMS norm, SiLU, causal 3x3x3 conv) twice, plus a 1x1x1 shortcut when the width changes."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        # Sequential only to keep the official parameter names (residual.0, .2, .3, .6); each norm runs with the
        # SiLU after it (`RMSNorm.then_silu`).
        self.residual = nn.Sequential(
            RMSNorm(in_dim, 3), nn.SiLU(inplace=True), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, 3), nn.SiLU(inplace=True), nn.Dropout(0.0),
            CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = nn.Conv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        # Step by step so that each big intermediate is dropped as soon as the next one exists. Each convolution's
        # bias is added by the op after it, in the same rounding order as the reference's conv-then-bias.
        h = conv1.convolve_normed(x, norm1, None, cache)
        h = conv2.convolve_normed(h, norm2, conv1.bias, cache)  # (`dropout` is the identity at inference)
        return self.add_shortcut(h, conv2.bias, x)

    def add_shortcut(self, h: Tensor, bias: Tensor, x: Tensor) -> Tensor:
        """h + bias + shortcut(x), in place on h."""
        return h.add_(per_channel(bias, h)).add_(self.shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention within each frame (so it needs no cache)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, 2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        b, c, t, h, w = x.shape
        qkv = self.to_qkv(self.norm(to_frames(x)))  # [B*T, 3C, H, W]
        # One head: [B*T, 1, H*W, C] each, as the reference shapes them.
        # Contiguous: memory-efficient SDPA kernels need unit-stride heads (else the float32 math path runs).
        q, k, v = qkv.flatten(2).transpose(1, 2).contiguous().unsqueeze(1).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        return from_frames(self.proj(out), b).add_(x)


class Downsample(nn.Module):
    """Halve H and W (stride-2 3x3 conv, padded right/bottom); optionally halve time too.

    Time downsampling is a stride-2, 3-tap conv over [last frame of the previous chunk, this chunk]:
    the very first chunk (the video's single first frame) passes through untouched.
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if temporal:
            self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        self.temporal = temporal

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        x = from_frames(self.resample(to_frames(x)), x.shape[0])
        if not self.temporal:
            return x
        past = cache.swap(self, x[:, :, -1:].clone())
        return x if past is None else self.time_conv(torch.cat([past, x], dim=2))


class Upsample(nn.Module):
    """Double H and W (nearest, then a 3x3 conv that halves the channels); optionally double time too.

    Time upsampling: a causal 3-tap conv makes 2C channels = (even frames, odd frames), interleaved in time.
    Official quirk: it is skipped on the first chunk (latent 0 gives one frame) and that chunk is not
    part of its history, which starts as zeros on the second chunk.
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"),
                                      nn.Conv2d(dim, dim // 2, 3, padding=1))
        if temporal:
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1))
        self.temporal = temporal

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        b, c = x.shape[:2]
        if self.temporal and not cache.first_visit(self):
            frames = interleave_pairs(self.time_conv(x, cache).unflatten(1, (2, c)))
        else:
            frames = to_frames(x)
        return from_frames(self.upsample_conv(frames), b)

    def upsample_conv(self, frames: Tensor) -> Tensor:
        """Nearest 2× upsampling, then the 3×3 convolution, on frames [N, C, H, W]."""
        # Nearest upsampling is exact in any dtype, so there is no float32 round trip here.
        return self.resample[1](upsample_nearest_2x(frames))


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim, 3), nn.SiLU(inplace=True), CausalConv3d(dim, out_dim, 3, padding=1))


def _run_head(head: nn.Sequential, x: Tensor, cache: CausalCache) -> Tensor:
    norm, _, conv = head
    return conv.convolve_normed(x, norm, None, cache, conv.bias)


class Encoder3d(nn.Module):
    """One chunk of pixels [B, 3, 1 or 4, H, W] -> one frame of mean and log-variance [B, 2z, 1, H/8, W/8]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if level < len(cfg.dim_mult) - 1:
                blocks.append(Downsample(out_dim, cfg.temporal_downsample[level]))
        self.downsamples = nn.Sequential(*blocks)
        width = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(width, width), AttentionBlock(width), ResidualBlock(width, width))
        self.head = _head(width, cfg.z_dim * 2)

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        x = self.conv1(x, cache)
        for block in (*self.downsamples, *self.middle):
            x = block(x, cache)
        return _run_head(self.head, x, cache)


class Decoder3d(nn.Module):
    """One latent frame [B, z, 1, h, w] -> pixels [B, 3, n, 8h, 8w] (n = 1 for latent 0, else 4)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.dim * m for m in (mult[-1], *mult[::-1])]
        temporal = cfg.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        blocks: list[nn.Module] = []
        in_dim = dims[0]
        for level, out_dim in enumerate(dims[1:]):
            # One more residual block per level than the encoder has (official layout).
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if level < len(mult) - 1:
                blocks.append(Upsample(out_dim, temporal[level]))
                in_dim = out_dim // 2
        self.upsamples = nn.Sequential(*blocks)
        self.head = _head(dims[-1], 3)
        self.split_frames = False  # `cfcli.pipeline.memory`'s small plans: see `_run`

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        return self._run((*self.middle, *self.upsamples), self.conv1(x, cache), cache)

    def _run(self, blocks: tuple[nn.Module, ...], x: Tensor, cache: CausalCache) -> Tensor:
        """The blocks, then the head. With `split_frames`, once a time upsampling has made several frames, each goes
        through the rest alone, in order: every layer after it is causal or per-frame, so this is the same
        arithmetic as the frames together (a third of the working memory at full resolution; the convolution
        kernels may differ, so pixels may move within rounding)."""
        for i, block in enumerate(blocks):
            x = block(x, cache)
            if self.split_frames and x.shape[2] > 1 and i + 1 < len(blocks):
                return torch.cat([self._run(blocks[i + 1:], x[:, :, t:t + 1], cache) for t in range(x.shape[2])],
                                 dim=2)
        return _run_head(self.head, x, cache)


def _float32_bits(values: tuple[float, ...]) -> Tensor:
    # Kept as the float32 bit patterns in an int32 buffer so that `.to(bfloat16)` (and back) cannot round
    # them: the reference rounds the float32 constants to the latent dtype at each use. Built on the CPU
    # so that a model constructed on the meta device still has them.
    return torch.tensor(values, dtype=torch.float32, device="cpu").view(torch.int32)


class WanVAE(nn.Module):
    """The Wan2.1 VAE: `encode` video -> normalised latents, `decode` / `stream_decoder` latents -> video."""

    def __init__(self, cfg: VAEConfig = VAEConfig()):
        super().__init__()
        self.cfg = cfg
        z = cfg.z_dim
        self.encoder = Encoder3d(cfg)
        self.conv1 = nn.Conv3d(z * 2, z * 2, 1)  # -> posterior mean and log-variance
        self.conv2 = nn.Conv3d(z, z, 1)
        self.decoder = Decoder3d(cfg)
        self.register_buffer("latent_mean_bits", _float32_bits(cfg.latent_mean), persistent=False)
        self.register_buffer("latent_std_bits", _float32_bits(cfg.latent_std), persistent=False)
        self.cache_on_host = False  # decoder causal caches in host memory (`cfcli.pipeline.memory`'s smallest plan)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    def latent_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, 1 / std), [z] each, in `like`'s dtype; 1 / std is computed in that dtype, as the reference does."""
        if self.latent_mean_bits.device != like.device:
            # Still on the CPU after a meta-device build loaded by assignment: move them once, not every call.
            self.latent_mean_bits = self.latent_mean_bits.to(like.device)
            self.latent_std_bits = self.latent_std_bits.to(like.device)
        mean = self.latent_mean_bits.view(torch.float32).to(like.dtype)
        std = self.latent_std_bits.view(torch.float32).to(like.dtype)
        return mean, 1.0 / std

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """video [B, 3, T, H, W] in [-1, 1], T = 1 + 4k -> normalised latents [B, 1 + k, 16, H/8, W/8] (frame-major).

        Returns the posterior mean (no sampling), in the module dtype.
        """
        cfg = self.cfg
        _, c, t, h, w = video.shape
        step, stride = cfg.temporal_stride, cfg.spatial_stride
        if c != 3 or (t - 1) % step or h % stride or w % stride:
            raise ValueError(f"expected video [B, 3, 1 + {step}k, {stride}i, {stride}j], got {list(video.shape)}")
        video = video.to(self.dtype)
        cache = CausalCache()
        # The first frame alone, then chunks of `step` frames: each chunk gives one latent frame.
        chunks = [video[:, :, i:i + step] for i in range(1, t, step)]
        chunks.insert(0, video[:, :, :1])
        feats = torch.cat([self.encoder(chunk, cache) for chunk in chunks], dim=2)
        z = cfg.z_dim
        # Only the mean half of conv1 is computed: the log-variance is never used.
        mu = F.conv3d(feats, self.conv1.weight[:z], self.conv1.bias[:z])
        mean, inv_std = (s.view(-1, 1, 1, 1) for s in self.latent_stats(mu))  # against [B, z, T, h, w]
        return ((mu - mean) * inv_std).transpose(1, 2).contiguous()

    def stream_decoder(self) -> StreamingDecoder:
        """A decoder for one video, fed latent frames in order over successive calls."""
        return StreamingDecoder(self)

    def lean(self, split_frames: bool, host_cache: bool) -> None:
        """The `cfcli.models.decoder.Decoder` switch of small memory plans (`Decoder3d.split_frames`,
        `cache_on_host`)."""
        self.decoder.split_frames, self.cache_on_host = split_frames, host_cache

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """latents [B, F, 16, h, w] (normalised) -> float32 pixels [B, 1 + 4(F-1), 3, 8h, 8w] clamped to [-1, 1]."""
        return self.stream_decoder().decode(latents)


class StreamingDecoder:
    """Owns the causal-conv caches of one video.

    `decode(latents [B, f, 16, h, w])` returns the pixels those f latent frames produce, [B, n, 3, H, W]
    float32 in [-1, 1] (n = 1 + 4(f-1) on the very first call, 4f afterwards). Every latent frame goes
    through the same ops whatever the chunking, so concatenated outputs equal `WanVAE.decode` exactly.
    """

    def __init__(self, vae: WanVAE):
        self.vae = vae
        from cfcli.models.offload import HostStore

        self.cache = CausalCache(HostStore() if vae.cache_on_host else None)
        self.latents_seen = 0

    def carried(self) -> list[Tensor]:
        """Each causal convolution's past frames (what `WanVAE.cache_on_host` keeps in host memory)."""
        return list(self.cache._past.values()) if isinstance(self.cache._past, dict) else []

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """The next f latent frames [B, f, 16, h, w] (normalised) -> their pixels [B, n, 3, 8h, 8w]."""
        vae, cfg = self.vae, self.vae.cfg
        b, f, c, h, w = latents.shape
        if c != cfg.z_dim:
            raise ValueError(f"expected latents [B, F, {cfg.z_dim}, h, w], got {list(latents.shape)}")
        step, s = cfg.temporal_stride, cfg.spatial_stride
        # Latent 0 gives 1 frame, every later latent `step` frames.
        n = step * f - (step - 1 if self.latents_seen == 0 and f > 0 else 0)
        # Frames are written straight into the float32 result: no list to concatenate, no extra cast copy.
        out = torch.empty(b, n, 3, h * s, w * s, dtype=torch.float32, device=latents.device)
        z = latents.to(vae.dtype)
        mean, inv_std = (s.view(-1, 1, 1) for s in vae.latent_stats(z))  # against [B, F, z, h, w]
        z = z / inv_std + mean
        done = 0
        for i in range(f):
            # conv2 per latent frame too, so that any chunking runs exactly the same ops.
            frames = vae.decoder(vae.conv2(z[:, i].unsqueeze(2)), self.cache)
            out[:, done:done + frames.shape[2]].copy_(frames.transpose(1, 2))
            done += frames.shape[2]
        self.latents_seen += f
        return out.clamp_(-1.0, 1.0)
