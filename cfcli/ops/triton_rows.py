"""What the row-wise Triton kernels of `cfcli.ops` share: whether they can run, and how their rows are tiled.

A channels-last activation is a [pixels, channels] matrix. Each program of such a kernel takes ROWS whole rows of
BLOCK_C lanes (the channels rounded up to a power of two), about 4096 elements.
"""

from torch import Tensor


def available(x: Tensor) -> bool:
    """True where the Triton kernels can run on x (a CUDA tensor, Triton installed)."""
    if not x.is_cuda:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def tiling(n_rows: int, channels: int) -> tuple[tuple[int], dict[str, int]]:
    """(grid, {BLOCK_C, ROWS}) for a kernel over `n_rows` rows of `channels` elements."""
    block_c = 1 << (channels - 1).bit_length()
    per_program = max(1, 4096 // block_c)
    return ((n_rows + per_program - 1) // per_program,), {"BLOCK_C": block_c, "ROWS": per_program}
