"""Telling transient network trouble from errors the user must act on, and retrying the former."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from cfcli.errors import CfError


def _status(exc: Exception) -> int:
    response = getattr(exc, "response", None)
    return int(getattr(response, "status_code", 0) or 0)


def network_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's transport errors, whichever client this huggingface_hub uses (only if already imported)."""
    errors: list[type[BaseException]] = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException")):
        mod = sys.modules.get(module)
        if mod is not None and isinstance(getattr(mod, name, None), type):
            errors.append(getattr(mod, name))
    return tuple(errors)


def _with_retries(call: Callable, *, what: str, retries: int = 2, sleep: Callable[[float], None] = time.sleep):
    """`call()`, tried again after transient network trouble or a busy Hub (5xx / 429)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(retries + 1):
        try:
            return call()
        except (HfHubHTTPError, *network_errors()) as exc:
            if attempt == retries:
                raise CfError(f"could not {what} on {constants.ENDPOINT}: {str(exc).splitlines()[0]}",
                              "check your connection, proxy settings or HF_ENDPOINT, then try again") from exc
            sleep(float(2 ** attempt))
    raise AssertionError("unreachable")
