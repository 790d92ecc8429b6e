"""The CUDA stream of the live threads that encode prompts and make blends.

On the default stream, an encode asked for mid-block queues behind the DiT calls the generation thread has already
enqueued there (up to two: `StepSync`), and a umT5 streamed from host memory (a small card's plan) holds up every DiT
call behind it. On a stream of its own, at high priority, it runs beside them.

Two rules keep that safe. What the side stream makes is handed to the generation thread finished (`handover` waits
for it, on the calling thread only), and its memory is kept from the side stream's next allocations until the default
stream's reads of it are done (`record_stream`). Work that reads what the generation thread made moments ago (a blend
of the features the last block showed) first waits for the default stream (`on(follow=True)`). Weights swapped on the
default stream are waited for where K/V are made (`LoraControl.text_kv`). Off the GPU all of this is nothing.
"""

import contextlib

import torch

HIGH = -1  # CUDA stream priorities: lower is sooner


class SideStream:
    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device, priority=HIGH) if device.type == "cuda" else None

    @contextlib.contextmanager
    def on(self, follow: bool = False):
        """The calling thread's CUDA work goes to the side stream (after what the default stream has queued, with
        `follow`)."""
        if self.stream is None:
            yield
            return
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            if follow:
                self.stream.wait_stream(torch.cuda.default_stream(self.device))
            yield

    def handover(self, *tensors: torch.Tensor | None) -> None:
        """Before the generation thread may read `tensors`: the side stream's work is finished, and their memory is
        not reused before the default stream's reads queued when they are freed."""
        if self.stream is None:
            return
        self.stream.synchronize()
        main = torch.cuda.default_stream(self.device)
        for t in tensors:
            if t is not None and t.is_cuda:
                t.record_stream(main)
