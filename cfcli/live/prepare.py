"""Prompts encoded ahead of being fired (`LiveSession.prepare`: a performer's queue, the `prepare` message).

Each goes into the prompt cache, so firing it later runs no umT5, which matters most where umT5 is streamed from host
memory for every new prompt (small cards). They are encoded one at a time on the text thread, the thread that encodes
fired prompts: after each, the next is queued behind whatever was submitted meanwhile, so a prompt fired while a
long list is being prepared waits for at most one of them.
"""

import collections
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor

from cfcli.errors import CfError

log = logging.getLogger("cfcli.live")
MAX_WAITING = 256  # prompts waiting to be encoded ahead


class Prepared:
    """`encode(text)` runs on `thread` (returns whether the prompt is now cached); `report` hears each applied ack."""

    def __init__(self, thread: Executor, encode: Callable[[str], bool], report: Callable[[dict], None]):
        self.thread, self.encode, self.report = thread, encode, report
        self._waiting: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._draining = False  # a `_next` is on the thread's queue

    def add(self, texts: list[str]) -> dict:
        """Queue `texts` (stripped, each once); the received ack, with how many were new."""
        with self._lock:
            fresh = [t for t in dict.fromkeys(t.strip() for t in texts) if t not in self._waiting]
            if len(self._waiting) + len(fresh) > MAX_WAITING:
                raise CfError(f"{len(self._waiting)} prompts are still being prepared; at most {MAX_WAITING} wait",
                              "send the rest once those are acknowledged")
            self._waiting.extend(fresh)
            if fresh and not self._draining:
                self._draining = True
                self.thread.submit(self._next)
        return {"type": "ack", "for": "prepare", "state": "received", "prompts": len(fresh)}

    def _next(self) -> None:
        with self._lock:
            text = self._waiting.popleft() if self._waiting else None
        try:
            if text is not None:
                cached = self.encode(text)
                self.report({"type": "ack", "for": "prepare", "state": "applied", "prompt": text, "cached": cached})
        except Exception as exc:  # noqa: BLE001 - the thread must outlive a failed encoding
            log.exception("preparing a prompt failed")
            self.report({"type": "error", "message": f"could not prepare the prompt: {exc}".splitlines()[0]})
        with self._lock:
            self._draining = bool(self._waiting)
            if self._draining:
                with contextlib.suppress(RuntimeError):  # the thread is shutting down
                    self.thread.submit(self._next)
