"""Downloading one Hub file into the standard cache (resuming a partial kept by an interrupted run:
`cfcli.resume`), retrying with backoff, and verifying it before anything may use it."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from pathlib import Path

from cfcli.errors import CfError
from cfcli.hub.cache import COMMIT, hub_cache, repo_dir
from cfcli.hub.hubfile import HubFile
from cfcli.hub.network import network_errors, _status
from cfcli.hub.verify import check_content, discard
from cfcli.paths import write_atomic as _write_text


RETRIES = 4  # extra attempts per file after the first; backoff 1, 2, 4, 8 s


class Events:
    """What `fetch` reports while it works; the CLI draws it, this default draws nothing."""

    def start(self, f: HubFile, attempt: int) -> None:
        """A (re)start of `f`: from byte 0, or from a kept partial (then `advance` first reports its bytes)."""

    def advance(self, n: int) -> None:
        """`n` more bytes of the current file arrived (negative when the client rewinds)."""

    def verifying(self, f: HubFile) -> None:
        """Hashing starts; `advance` then counts hashed bytes."""

    def retry(self, f: HubFile, reason: str, wait: float) -> None:
        """An attempt failed for `reason`; the next starts in `wait` seconds."""


def fetch(f: HubFile, events: Events | None = None, *, retries: int = RETRIES, recheck: bool = False,
          sleep: Callable[[float], None] = time.sleep) -> Path:
    """Make `f` present and verified in the HF cache (downloading only if needed) and return its snapshot path."""
    from cfcli.resume import download

    events = events or Events()
    if not recheck and f.verified():
        _write_ref(f)
        return f.pointer
    bar = _bar_class(events)
    reason = ""
    for attempt in range(retries + 1):
        if attempt:
            wait = float(2 ** (attempt - 1))
            events.retry(f, reason, wait)
            sleep(wait)
        events.start(f, attempt)
        try:
            path = download(f.repo, f.path, f.commit, f.blob, f.size, bar)
        except Exception as exc:  # noqa: BLE001 - sorted into "try again" and "tell the user" below
            reason = _transient(exc, f)
            continue
        events.verifying(f)
        if check_content(path, f, events.advance, recheck=recheck and attempt == 0):
            _write_ref(f)
            return path
        discard(f)
        reason = "its content does not match the Hub's sha256 (rejected and deleted)"
    raise CfError(f"could not download {f.label}: {reason}",
                  "check your connection and run the same command again; finished files are kept")


def _transient(exc: Exception, f: HubFile) -> str:
    """The reason to show when `exc` is worth another attempt; raises CfError when it is not."""
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    if isinstance(exc, OfflineModeIsEnabled):
        raise CfError("HF_HUB_OFFLINE is set, so nothing can be downloaded", "unset HF_HUB_OFFLINE") from exc
    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError)):
        raise CfError(f"{f.label} is no longer on the Hub at {f.commit[:12]}: {type(exc).__name__}",
                      "run the command again to pick up the repo's current files") from exc
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
        raise CfError(f"cannot write {f.label} into {hub_cache()}: {exc.strerror}",
                      "free some space or point HF_HUB_CACHE at a writable disk with room") from exc
    if isinstance(exc, HfHubHTTPError) and not isinstance(exc, LocalEntryNotFoundError):
        status = _status(exc)
        if status not in (408, 429) and status < 500:
            raise CfError(f"the Hub refused {f.label} ({status})", "for a private or gated repo set HF_TOKEN") from exc
    if isinstance(exc, (OSError, HfHubHTTPError, LocalEntryNotFoundError) + network_errors()):
        return str(exc).splitlines()[0] or type(exc).__name__
    raise exc


def _bar_class(events: Events) -> type:
    """A tqdm stand-in for huggingface_hub's `tqdm_class` that forwards byte counts to `events`."""

    class Bar:
        def __init__(self, *args, **kwargs):
            self.n = kwargs.get("initial") or 0
            self.total = kwargs.get("total")
            self.format_dict: dict = {}
            events.advance(self.n)  # bytes a resumed partial already holds

        def update(self, n: int = 1) -> None:
            self.n += n
            events.advance(n)

        def update_transfer(self, n: int = 1) -> None:  # network bytes (Xet); disk bytes are what we count
            pass

        def set_postfix_str(self, *args, **kwargs) -> None:
            pass

        set_transfer_postfix_str = set_postfix_str

        def refresh(self) -> None:
            pass

        def close(self) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> bool:
            return False

    return Bar


def _write_ref(f: HubFile) -> None:
    """Point the cache's branch ref at the commit we downloaded from (huggingface_hub only does so for branch
    names), so offline look-ups of `main` find these files."""
    rev = f.revision or "main"
    if COMMIT.fullmatch(rev):
        return
    ref = repo_dir(f.repo) / "refs" / rev
    if not (ref.is_file() and ref.read_text().strip() == f.commit):
        _write_text(ref, f.commit)
