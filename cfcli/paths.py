"""cfcli's own cache folder (converted checkpoints, prompt embeddings): `$CF_HOME`, else the XDG cache dir."""

import os
from pathlib import Path


def cf_home() -> Path:
    if os.environ.get("CF_HOME"):
        return Path(os.environ["CF_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cfcli"
