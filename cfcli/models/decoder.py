"""What the engine and the memory planner ask of a decoder (the Wan VAE, TAEHV): the `Decoder` protocol.

A decoder turns normalised latents into pixels, whole (`decode`) or one video streamed latent frame by latent frame
(`stream_decoder`). `lean(split_frames, host_cache)` switches the forms small memory plans use, where the decoder
has them; a stream decoder names what it carries between calls (`carried`), so the planner can size it without
knowing how it is kept.
"""

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class StreamDecoder(Protocol):
    def decode(self, latents: Tensor) -> Tensor:
        """The next f latent frames [B, f, C, h, w] (normalised) -> their pixels [B, n, 3, H, W] float32 in [-1, 1]."""
        ...

    def carried(self) -> list[Tensor]:
        """The tensors kept between calls that a host-cache plan would move to host memory ([] where none can)."""
        ...


@runtime_checkable
class Decoder(Protocol):
    def decode(self, latents: Tensor) -> Tensor:
        """A whole video's latents [B, F, C, h, w] -> pixels [B, n, 3, H, W] float32 in [-1, 1]."""
        ...

    def stream_decoder(self) -> StreamDecoder:
        """A decoder for one video, fed latent frames in order over successive calls."""
        ...

    def lean(self, split_frames: bool, host_cache: bool) -> None:
        """Small plans' forms: frames one at a time after time upsampling, causal caches in host memory (a no-op for
        what a decoder does not have)."""
        ...
