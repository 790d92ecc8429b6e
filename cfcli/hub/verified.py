"""The ledger of cached files whose content matched the Hub's hash: path -> (etag, size, mtime), so an unchanged file
is hashed once."""

from pathlib import Path

from cfcli.hub.jsonfiles import _read_json, _write_json
from cfcli.paths import cf_home


def _verified_db() -> Path:
    return cf_home() / "verified.json"


def is_verified(blob: Path, etag: str, size: int) -> bool:
    try:
        st = blob.stat()
    except OSError:
        return False
    return st.st_size == size and _read_json(_verified_db()).get(str(blob)) == [etag, st.st_size, st.st_mtime_ns]


def mark_verified(blob: Path, etag: str) -> None:
    st = blob.stat()
    db = _read_json(_verified_db())
    db[str(blob)] = [etag, st.st_size, st.st_mtime_ns]
    _write_json(_verified_db(), db)


def forget_verified(blob: Path) -> None:
    db = _read_json(_verified_db())
    if db.pop(str(blob), None) is not None:
        _write_json(_verified_db(), db)
