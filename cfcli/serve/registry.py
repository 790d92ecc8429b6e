"""Where clients find a running `cf serve`: `$CF_HOME/serve.json` — its address, a token and its process id — readable
by the user alone (created 0600). Torch-free: the client reads it before deciding where a job runs."""

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from cfcli.paths import cf_home


@dataclass(frozen=True)
class Entry:
    url: str  # http://HOST:PORT
    token: str
    pid: int
    preset: str = ""  # what it has loaded, for messages

    @staticmethod
    def new(url: str, preset: str) -> "Entry":
        return Entry(url, secrets.token_urlsafe(24), os.getpid(), preset)


def entry_path() -> Path:
    return cf_home() / "serve.json"


def publish(entry: Entry) -> Path:
    """Write the entry (replacing a stale one) so that only this user can read it: the token is the key to the
    server. Written beside and renamed, so a client never reads half of it."""
    path = entry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(entry), f)
    os.replace(tmp, path)
    return path


def withdraw(entry: Entry) -> None:
    """Remove the entry if it is still this server's (a newer server may have replaced it)."""
    current = read()
    if current is not None and current.pid == entry.pid and current.token == entry.token:
        entry_path().unlink(missing_ok=True)


def read() -> Entry | None:
    """The recorded server, None when there is none (or the file is not one of ours)."""
    try:
        data = json.loads(entry_path().read_text())
        return Entry(str(data["url"]), str(data["token"]), int(data["pid"]), str(data.get("preset", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def alive(pid: int) -> bool:
    """Whether process `pid` exists (a server killed hard leaves its entry behind)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process reuses the id: not ours
        return False
    return True
