"""Stopping a run from outside: SIGINT (Ctrl-C), SIGTERM and SIGHUP all stop it the same way, once.

Inside `stop_on_signals()` the first signal raises `Stopped`, a KeyboardInterrupt, so the generation loop keeps the
frames made so far; every later signal is only noted, so a second Ctrl-C cannot cut the closing of the file short or
end in a traceback. While a file is being finalised (`finalising()`), even the first signal is only noted: the file
is completed and the caller stops afterwards (`stopped_by`). Once a signal stopped the run, signals stay ignored
until the process exits, so its exit status is the first stop's. The exit status is 128 + the signal number: 130 for
Ctrl-C, 143 for SIGTERM, 129 for SIGHUP.
"""

import os
import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """The run was stopped by a signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    active = False  # handlers installed
    signum = 0  # the first signal received, 0 for none
    shield = 0  # depth of `finalising()`


_state = _State()


def exit_code(exc: BaseException | None = None) -> int:
    """128 + the stopping signal (SIGINT when a plain KeyboardInterrupt stopped the run)."""
    return 128 + (getattr(exc, "signum", 0) or _state.signum or signal.SIGINT)


def stopped_by() -> int:
    """The signal that asked the current run to stop, 0 for none."""
    return _state.signum


def _handle(signum, frame) -> None:
    if _state.signum or _state.shield:
        _state.signum = _state.signum or signum
        os.write(2, b"\nstopping: finishing the file, one moment\n")
        return
    _state.signum = signum
    raise Stopped(signum)


@contextmanager
def stop_on_signals():
    """Handle SIGINT/SIGTERM/SIGHUP as described above (main thread only; elsewhere Python's defaults stay)."""
    if _state.active or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _handle) for s in SIGNALS}
    _state.active, _state.signum = True, 0
    try:
        yield
    finally:
        for s, handler in old.items():  # after a stop the process is ending: a late signal must not change its status
            signal.signal(s, signal.SIG_IGN if _state.signum else handler)
        _state.active, _state.signum = False, 0


@contextmanager
def finalising():
    """A stretch (closing, renaming) that a signal must not cut short: signals are noted, not raised."""
    _state.shield += 1
    try:
        yield
    finally:
        _state.shield -= 1
