"""Imports made ahead, on a thread, while the weights load: the compiler's modules (`torch._dynamo`, Inductor, Triton)
and the fast path's take seconds to import, and a fresh `cf generate` would otherwise pay them in `configure`, after
the load. Only the load's reads and copies outside the GIL overlap them: importing holds the GIL, so on an H100
machine the load took 5.0 s beside the imports against 0.45 s alone (docs/performance.md, #23) — what is won is that
much of the load, not the imports.

`start()` returns at once; `wait()` (before anything compiles) joins the thread. A failed import there is only
forgotten: the same import on the main thread then raises it where it would have anyway.
"""

import importlib
import threading

# What `Engine.accelerate` imports on a GPU with compile on, slowest first.
MODULES = ("torch._dynamo", "torch._inductor.compile_fx", "triton", "cfcli.pipeline.fast")


class Ahead:
    def __init__(self, modules: tuple[str, ...]):
        self.modules = modules
        self.thread = threading.Thread(target=self._run, name="cf-imports", daemon=True)

    def _run(self) -> None:
        for name in self.modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - see the module's docstring
                pass

    def wait(self) -> None:
        self.thread.join()


def start(modules: tuple[str, ...] = MODULES) -> Ahead:
    ahead = Ahead(modules)
    ahead.thread.start()
    return ahead
