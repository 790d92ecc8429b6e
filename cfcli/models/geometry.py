"""How video frames, pixels, latents and tokens relate for one DiT + VAE pair: strides, patch and lengths, once.

Derived from the model configs (`Geometry.of`), never written as numbers elsewhere. A causal video VAE turns the
first video frame into one latent frame and every later `time_stride` frames into one more, so F latent frames
decode to 1 + s·(F − 1) video frames; each latent pixel covers `space_stride`² video pixels and each DiT token a
`patch` of latent pixels. The DiT's position table holds `rope_frames` latent frames.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    time_stride: int  # video frames per latent frame after the first (4 for Wan2.1)
    space_stride: int  # video pixels per latent pixel side (8 for Wan2.1)
    patch: tuple[int, int, int]  # latent (frames, rows, columns) per DiT token
    latent_channels: int
    text_len: int  # text tokens the DiT's cross-attention sees (shorter prompts are zero-padded)
    rope_frames: int  # latent frame positions of the DiT's RoPE table

    @classmethod
    def of(cls, dit, vae) -> "Geometry":
        """From a `DiTConfig` and a VAE config (any family with `temporal_stride`, `spatial_stride`, `z_dim`)."""
        return cls(vae.temporal_stride, vae.spatial_stride, tuple(dit.patch_size), vae.z_dim, dit.text_len,
                   dit.rope_frames)

    @property
    def size_multiple(self) -> int:
        """Pixels per token side: video height and width must be multiples of it (16 for Wan2.1)."""
        return self.space_stride * math.lcm(self.patch[1], self.patch[2])

    @property
    def max_latent_frames(self) -> int:
        """The longest video in latent frames (the last RoPE position is kept free, as the official code does)."""
        return self.rope_frames - 1

    @property
    def max_video_frames(self) -> int:
        return self.video_frames_for(self.max_latent_frames)

    def video_frames_for(self, latent_frames: int) -> int:
        """Video frames that `latent_frames` latent frames decode to, from the start: 1 + s·(F − 1)."""
        return 1 + self.time_stride * (latent_frames - 1) if latent_frames > 0 else 0

    def latent_frames_for(self, video_frames: int) -> int:
        """Latent frames that decode to exactly `video_frames`; ValueError when no count does."""
        if video_frames < 1 or (video_frames - 1) % self.time_stride:
            raise ValueError(f"{video_frames} video frames is not 1 + {self.time_stride}k")
        return (video_frames - 1) // self.time_stride + 1

    def latent_frames_covering(self, video_frames: int) -> int:
        """The fewest latent frames whose video has at least `video_frames` frames (video_frames ≥ 1)."""
        return -(-(video_frames - 1) // self.time_stride) + 1

    def continuation_frames(self, latent_frames: int) -> int:
        """Video frames that `latent_frames` latent frames add after earlier ones: s·F."""
        return self.time_stride * latent_frames

    def continuation_latents(self, video_frames: int) -> int:
        """The fewest latent frames that add at least `video_frames` frames after earlier ones."""
        return -(-video_frames // self.time_stride)

    def latent_at(self, frame: int) -> int:
        """The latent frame that makes video frame `frame` (latent 0 makes frame 0, latent k frames s(k−1)+1…sk)."""
        return (frame + self.time_stride - 1) // self.time_stride

    def first_frame_of(self, latent: int) -> int:
        """The first video frame latent frame `latent` makes (0, then s(k − 1) + 1)."""
        return 0 if latent == 0 else self.time_stride * (latent - 1) + 1

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent (rows, columns) of a height×width video."""
        return height // self.space_stride, width // self.space_stride

    def frame_tokens(self, rows: int, columns: int) -> int:
        """DiT tokens per latent frame of rows×columns latents (1560 at 60×104)."""
        return (rows // self.patch[1]) * (columns // self.patch[2])

    def video_size(self, rows: int, columns: int) -> tuple[int, int]:
        """Video (height, width) that rows×columns latents decode to."""
        return rows * self.space_stride, columns * self.space_stride
