"""The TAEHV tiny decoder's weights (`taew2_1.pth`, ~23 MB): where they live and how `cf download` gets them.

They are published in the madebyollin/taehv GitHub repository, not on the Hugging Face Hub, so they are fetched
over plain HTTPS (`$CF_TAEHV_URL` overrides the address: a mirror, or a local server in tests) into cfcli's own
cache. The download goes to a `.part` file beside the target and only replaces it after the file has loaded
strictly as a TAEHV decoder for Wan 2.1 latents: an interrupted or wrong download never becomes the cached file.
"""

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cfcli.errors import CfError
from cfcli.paths import cf_home

TAEHV_URL = "https://raw.githubusercontent.com/madebyollin/taehv/main/taew2_1.pth"
CHUNK = 1 << 20


def taehv_url() -> str:
    return os.environ.get("CF_TAEHV_URL") or TAEHV_URL


def taehv_path() -> Path:
    return cf_home() / "taehv" / "taew2_1.pth"


def cached_taehv() -> Path:
    """The cached weights; a CfError saying how to get them when they are not there."""
    path = taehv_path()
    if not path.is_file():
        raise CfError("the TAEHV decoder's weights are not downloaded", "run `cf download --decoder taehv` first")
    return path


def fetch_taehv(progress: Callable[[int, int | None], None] = lambda done, total: None, *,
                force: bool = False) -> Path:
    """Download and check `taew2_1.pth` unless it is cached already (or `force`); returns its path."""
    from cfcli.models.taehv import load_taehv

    target = taehv_path()
    if target.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    url = taehv_url()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            while block := response.read(CHUNK):
                out.write(block)
                done += len(block)
                progress(done, total)
        if total is not None and done != total:
            raise CfError(f"the TAEHV download stopped at {done} of {total} bytes", "run the command again")
        load_taehv(part)  # raises an actionable CfError unless it is the Wan 2.1 TAEHV decoder
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise CfError(f"could not download the TAEHV weights from {url}: {exc}",
                      "check the connection (or set CF_TAEHV_URL to a mirror) and run the command again") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, target)
    return target
