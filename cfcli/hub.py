"""Where a preset's weights live on this machine, and how they get there.

Local look-ups (`resolve`, `cached_path`, `converted_path`, `local_status`) read only the Hugging Face cache and
cfcli's own cache, never the network, so `cf generate` works with HF_HUB_OFFLINE=1. `plan` asks the Hub which files a
preset names (size, sha256, commit) and `fetch` downloads one of them into the standard cache (resuming a partial
kept by an interrupted run: `cfcli.resume`), retrying with backoff, and checks its content against the Hub's hash
before anything may use it: a file that does not match is deleted and fetched again, never left in the cache.

huggingface_hub reads HF_HOME / HF_HUB_CACHE / HF_ENDPOINT / HF_HUB_OFFLINE at import time, so everything here reads
`huggingface_hub.constants` at call time rather than copying the values.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cfcli.converted_check import is_whole
from cfcli.errors import CfError
from cfcli.paths import cf_home
from cfcli.paths import write_atomic as _write_text
from cfcli.presets import WEIGHT_ROLES, Preset, WeightRef, presets_dir

CONVERTIBLE = (".pt", ".pth", ".bin")  # pickled checkpoints that are converted to safetensors once
COMMIT = re.compile(r"[0-9a-f]{40}")
HEX_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
RETRIES = 4  # extra attempts per file after the first; backoff 1, 2, 4, 8 s
HASH_CHUNK = 8 << 20


# --- naming -----------------------------------------------------------------------------------------------------------

def download_command(preset: Preset) -> str:
    """The exact `cf download` command that fetches `preset`."""
    src = preset.source
    if src is None or _is_shipped(preset):
        return f"cf download --preset {preset.name}"
    return f"cf download --preset {shlex.quote(str(src))}"


def download_hint(preset: Preset) -> str:
    return f"run `{download_command(preset)}` first"


def _is_shipped(preset: Preset) -> bool:
    src = preset.source
    return src is not None and src.stem == preset.name and src.parent.resolve() == presets_dir().resolve()


def human(n: float) -> str:
    """Bytes as people read them (decimal units, like the Hub's pages)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# --- local look-ups (never the network) -------------------------------------------------------------------------------

def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def repo_dir(repo: str) -> Path:
    return hub_cache() / ("models--" + repo.replace("/", "--"))


def _commit_for(repo: str, revision: str | None) -> str | None:
    """The commit a branch/tag last resolved to in the cache (the cache's `refs/`), or the commit itself."""
    rev = revision or "main"
    if COMMIT.fullmatch(rev):
        return rev
    ref = repo_dir(repo) / "refs" / rev
    return ref.read_text().strip() if ref.is_file() else None


def cached_path(ref: WeightRef) -> Path | None:
    """The file or folder of `ref` in the local Hugging Face cache, or None."""
    commit = _commit_for(ref.repo, ref.revision)
    if commit is None:
        return None
    path = repo_dir(ref.repo) / "snapshots" / commit / (ref.file or ref.folder)
    if ref.file is not None:
        return path if path.is_file() else None  # is_file() follows the link: a deleted blob is not cached
    return path if path.is_dir() and any(path.iterdir()) else None


def needs_conversion(ref: WeightRef) -> bool:
    return ref.path is None and ref.file is not None and Path(ref.file).suffix in CONVERTIBLE


def converted_dir() -> Path:
    return cf_home() / "converted"


def converted_name(etag: str, use_ema: bool) -> str:
    """Named by the source blob's identity, so a different checkpoint (or the other weight set) never reuses it."""
    return f"{etag}-{'ema' if use_ema else 'noema'}.safetensors"


def blob_etag(path: Path) -> str | None:
    """The Hub etag (sha256 for LFS files) of a cached file: the cache names each blob by it."""
    name = Path(os.path.realpath(path)).name
    return name if HEX_ETAG.fullmatch(name) else None


def _record_path(ref: WeightRef, use_ema: bool) -> Path:
    key = json.dumps([ref.repo, ref.revision or "main", ref.file, use_ema])
    return converted_dir() / "refs" / f"{hashlib.sha1(key.encode()).hexdigest()[:24]}.json"


def record_conversion(ref: WeightRef, use_ema: bool, etag: str, commit: str) -> None:
    """Remember which converted file `ref` means, for when its `.pt` is not (or no longer) in the HF cache."""
    rec = {"repo": ref.repo, "revision": ref.revision or "main", "file": ref.file, "use_ema": use_ema,
           "etag": etag, "commit": commit, "converted": converted_name(etag, use_ema)}
    _write_json(_record_path(ref, use_ema), rec)


def converted_path(preset: Preset, whole: bool = True) -> Path | None:
    """The bf16 safetensors made from the preset's generator checkpoint, if it has been converted (and, with `whole`,
    is complete: a damaged file counts as not converted, so it is converted again)."""
    ref = preset.weights["generator"]
    if not needs_conversion(ref):
        return None
    source = cached_path(ref)
    if source is not None:  # the cached checkpoint decides; a conversion of another version must not stand in
        etag = blob_etag(source)
        found = converted_dir() / converted_name(etag, preset.use_ema) if etag else None
        return found if found is not None and (not whole or is_whole(found)) else None
    rec = _read_json(_record_path(ref, preset.use_ema))
    found = converted_dir() / str(rec["converted"]) if rec.get("converted") else None
    return found if found is not None and (not whole or is_whole(found)) else None


def resolve(preset: Preset, role: str) -> Path:
    """Local path of the preset's `role` weights (a file, or the tokenizer folder); the converted generator if any."""
    ref = preset.weights[role]
    if ref.path is not None:
        if not ref.path.exists():
            raise CfError(f"{role} weights not found at {ref.path}", "fix the path in the preset")
        return ref.path
    if role == "generator":
        converted = converted_path(preset)
        if converted is not None:
            return converted
    path = cached_path(ref)
    if path is None:
        raise CfError(f"{role} weights {ref.label} are not downloaded", download_hint(preset))
    return path


@dataclass
class LocalStatus:
    """What `cf models` shows for one preset: each role's local file (None = missing) and whether it is converted."""

    preset: Preset
    paths: dict[str, Path | None]
    converted: bool

    @property
    def ready(self) -> bool:
        return all(p is not None for p in self.paths.values())

    @property
    def missing(self) -> list[str]:
        return [role for role, p in self.paths.items() if p is None]

    @property
    def size(self) -> int:
        return sum(disk_size(p) for p in self.paths.values() if p is not None)


def local_status(preset: Preset) -> LocalStatus:
    paths: dict[str, Path | None] = {}
    for role in WEIGHT_ROLES:
        try:
            paths[role] = resolve(preset, role)
        except CfError:
            paths[role] = None
    return LocalStatus(preset, paths, converted_path(preset) is not None)


def disk_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (following the cache's links to blobs)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- what the Hub has -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HubFile:
    """One file of a repo at a resolved commit, as the Hub lists it."""

    repo: str
    revision: str | None  # as the preset asks (None = main)
    commit: str
    path: str
    size: int
    sha256: str | None  # LFS files
    blob_id: str | None  # the git blob sha1 (regular files are checked against it)

    @property
    def etag(self) -> str:
        """What the Hub's ETag says and the cache names the blob by: the sha256 for LFS files, else the git sha1."""
        return self.sha256 or self.blob_id or ""

    @property
    def label(self) -> str:
        return f"{self.repo}/{self.path}"

    @property
    def pointer(self) -> Path:
        return repo_dir(self.repo) / "snapshots" / self.commit / self.path

    @property
    def blob(self) -> Path:
        return repo_dir(self.repo) / "blobs" / self.etag

    def cached(self) -> bool:
        """Already here at the right size (as a snapshot link or a blob another revision shares)."""
        return any(p.is_file() and p.stat().st_size == self.size for p in (self.pointer, self.blob))

    def verified(self) -> bool:
        """Cached, and its content was hashed against the Hub's before (and has not changed since)."""
        return self.pointer.is_file() and _is_verified(Path(os.path.realpath(self.pointer)), self.etag, self.size)


@dataclass
class Need:
    """One role of one preset: the Hub files it names and, for a `.pt` generator, where its conversion goes."""

    preset: Preset
    role: str
    files: list[HubFile]
    converted: Path | None = None

    @property
    def ref(self) -> WeightRef:
        return self.preset.weights[self.role]

    def satisfied_by_conversion(self) -> bool:
        """A converted generator replaces its checkpoint: the `.pt` need not be fetched again."""
        return self.converted is not None and is_whole(self.converted)


def plan(presets: Iterable[Preset]) -> list[Need]:
    """The Hub files each preset's weights name (exactly those), with sizes, hashes and the commit they resolve to."""
    listings: dict[tuple[str, str | None], dict[str, HubFile]] = {}
    needs = []
    for preset in presets:
        for role in WEIGHT_ROLES:
            ref = preset.weights[role]
            if ref.path is not None:
                continue
            key = (ref.repo, ref.revision)
            if key not in listings:
                listings[key] = _with_retries(lambda: _listing(*key), what=f"list {ref.repo}")
            files = _select(listings[key], ref)
            target = None
            if role == "generator" and needs_conversion(ref):
                target = converted_dir() / converted_name(files[0].etag, preset.use_ema)
            needs.append(Need(preset, role, files, target))
    return needs


def _listing(repo: str, revision: str | None) -> dict[str, HubFile]:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = constants.ENDPOINT
    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except GatedRepoError as exc:
        raise CfError(f"{repo} is gated on {where}: accept its terms on the model page",
                      "then set HF_TOKEN to a token of that account") from exc
    except RepositoryNotFoundError as exc:
        raise CfError(f"repository {repo} was not found on {where}",
                      "check the repo id in the preset; for a private repo set HF_TOKEN") from exc
    except RevisionNotFoundError as exc:
        raise CfError(f"revision {revision!r} of {repo} was not found on {where}",
                      "check the revision in the preset") from exc
    except OfflineModeIsEnabled as exc:
        raise CfError("HF_HUB_OFFLINE is set, so the Hub cannot be asked",
                      "unset HF_HUB_OFFLINE to download") from exc
    except HfHubHTTPError as exc:
        status = _status(exc)
        if status in (408, 429) or status >= 500:
            raise
        raise CfError(f"the Hub at {where} refused {repo}: {str(exc).splitlines()[0]}",
                      "check HF_TOKEN" if status in (401, 403) else "") from exc
    return {s.rfilename: HubFile(repo, revision, info.sha, s.rfilename, (s.lfs.size if s.lfs else s.size) or 0,
                                 s.lfs.sha256 if s.lfs else None, s.blob_id)
            for s in info.siblings or []}


def _select(listing: dict[str, HubFile], ref: WeightRef) -> list[HubFile]:
    where = f"{ref.repo}" + (f" at {ref.revision}" if ref.revision else "")
    if ref.file is not None:
        if ref.file not in listing:
            raise CfError(f"{ref.file} is not in {where}", "check the file name in the preset")
        return [listing[ref.file]]
    prefix = ref.folder.strip("/") + "/"
    files = [f for path, f in sorted(listing.items()) if path.startswith(prefix)]
    if not files:
        raise CfError(f"folder {ref.folder} is not in {where}", "check the folder name in the preset")
    return files


# --- downloading ------------------------------------------------------------------------------------------------------

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
    if isinstance(exc, (OSError, HfHubHTTPError, LocalEntryNotFoundError) + _network_errors()):
        return str(exc).splitlines()[0] or type(exc).__name__
    raise exc


def _status(exc: Exception) -> int:
    response = getattr(exc, "response", None)
    return int(getattr(response, "status_code", 0) or 0)


def _network_errors() -> tuple[type[BaseException], ...]:
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
        except (HfHubHTTPError, *_network_errors()) as exc:
            if attempt == retries:
                raise CfError(f"could not {what} on {constants.ENDPOINT}: {str(exc).splitlines()[0]}",
                              "check your connection, proxy settings or HF_ENDPOINT, then try again") from exc
            sleep(float(2 ** attempt))
    raise AssertionError("unreachable")


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


# --- verification -----------------------------------------------------------------------------------------------------

def content_hash(path: Path, etag: str, on_bytes: Callable[[int], None] | None = None) -> str:
    """The file's sha256 (for a 64-hex etag: LFS files) or git blob sha1 (40-hex etag: regular files)."""
    size = path.stat().st_size
    digest = hashlib.sha256() if len(etag) == 64 else hashlib.sha1(b"blob %d\0" % size)
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
            if on_bytes:
                on_bytes(n)
    return digest.hexdigest()


def check_content(path: Path, f: HubFile, on_bytes: Callable[[int], None] | None = None, *,
                  recheck: bool = False) -> bool:
    """True when the cached file has the Hub's size and hash; remembered so unchanged files are hashed once
    (`recheck` hashes it again anyway)."""
    blob = Path(os.path.realpath(path))
    if not f.etag or blob.stat().st_size != f.size:
        return False
    if not recheck and _is_verified(blob, f.etag, f.size):
        return True
    if content_hash(blob, f.etag, on_bytes) != f.etag:
        return False
    _mark_verified(blob, f.etag)
    return True


def discard(f: HubFile) -> None:
    """Delete a file that failed its check: the snapshot link and the blob, so nothing can ever load it."""
    pointer = f.pointer
    targets = {pointer, f.blob}
    if pointer.is_symlink() or pointer.exists():
        targets.add(Path(os.path.realpath(pointer)))
    for p in targets:
        _forget_verified(p)
        p.unlink(missing_ok=True)


def _verified_db() -> Path:
    return cf_home() / "verified.json"


def _is_verified(blob: Path, etag: str, size: int) -> bool:
    try:
        st = blob.stat()
    except OSError:
        return False
    return st.st_size == size and _read_json(_verified_db()).get(str(blob)) == [etag, st.st_size, st.st_mtime_ns]


def _mark_verified(blob: Path, etag: str) -> None:
    st = blob.stat()
    db = _read_json(_verified_db())
    db[str(blob)] = [etag, st.st_size, st.st_mtime_ns]
    _write_json(_verified_db(), db)


def _forget_verified(blob: Path) -> None:
    db = _read_json(_verified_db())
    if db.pop(str(blob), None) is not None:
        _write_json(_verified_db(), db)


# --- disk space -------------------------------------------------------------------------------------------------------

def check_space(wants: dict[Path, int]) -> None:
    """Raise unless every disk has room for the bytes about to be written to folders on it."""
    per_disk: dict[int, list] = {}
    for folder, n in wants.items():
        anchor = _existing_ancestor(folder)
        per_disk.setdefault(os.stat(anchor).st_dev, [anchor, 0])[1] += n
    for anchor, n in per_disk.values():
        free = shutil.disk_usage(anchor).free
        if n > free:
            raise CfError(f"not enough disk space: {human(n)} to write under {anchor}, {human(free)} free",
                          "free some space, or point HF_HUB_CACHE / CF_HOME at a disk with room")


def free_space(folder: Path) -> int:
    return shutil.disk_usage(_existing_ancestor(folder)).free


def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --- small atomic files -----------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    _write_text(path, json.dumps(data, indent=1, sort_keys=True))
