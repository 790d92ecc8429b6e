"""umT5 run layer by layer: the encoder stays in host memory and never sits on the GPU whole.

`StreamedUMT5(encoder, device)` is called like `UMT5Encoder` (`(ids, mask) -> hidden states`, so `encode_text` takes
it). The token embedding (a 256k-row table: a fifth of the model) is looked up on the CPU and only the prompt's rows go
to the GPU; each encoder block is copied to the GPU just before it runs, the next one prefetched on a side stream
(`cfcli.models.offload.LayerStream`). The blocks run the same modules and kernels as the resident encoder, so the
features are the same bits. GPU memory: two blocks (2 × 386 MB for umT5-XXL in bf16) plus activations.
"""

import torch
from torch import Tensor

from cfcli.models.offload import LayerStream
from cfcli.models.t5 import UMT5Encoder, relative_position_buckets


class StreamedUMT5:
    def __init__(self, encoder: UMT5Encoder, device: torch.device):
        self.cfg, self.device = encoder.cfg, torch.device(device)
        self.embedding = encoder.token_embedding.cpu()
        self.blocks = LayerStream(list(encoder.blocks), self.device)
        self.norm = encoder.norm.to(self.device)

    def __call__(self, ids: Tensor, mask: Tensor) -> Tensor:
        x = self.embedding(ids.cpu()).to(self.device)  # a row gather: the same values wherever it runs
        buckets = relative_position_buckets(ids.shape[1], self.cfg.num_buckets, self.device)
        key_pad = (mask.to(self.device) == 0)[:, None, None, :]
        for block in self.blocks:
            x = block(x, buckets, key_pad)
        return self.norm(x)
