"""A local fake of the Hugging Face Hub HTTP API: just what huggingface_hub's downloads use (tests only).

Each repo sits at one fixed commit. Served: model info (`/api/models/{repo}[/revision/{rev}]`, `?blobs=true` adds
sizes, blob ids and LFS sha256), the tree listing, paths-info, and `/{repo}/resolve/{rev}/{path}` (HEAD and GET, with
`Range`) carrying the headers the client checks: `X-Repo-Commit`, `ETag` (git blob sha1, or the sha256 of an LFS file),
`X-Linked-Etag` / `X-Linked-Size` for LFS files, and `X-Error-Code` on errors. No Xet headers, so the client takes the
plain HTTP path. Knobs: cut a response after N bytes, corrupt a body, keep a repo private behind a token, limit the
rate; every request is logged so tests can count them.
"""

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".model")


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def oid(self) -> str:
        """Git blob sha1 of what git stores: the content, or the LFS pointer for an LFS file."""
        stored = self.pointer if self.lfs else self.data
        return hashlib.sha1(b"blob %d\0" % len(stored) + stored).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass(frozen=True)
class Request:
    method: str
    repo: str | None
    path: str  # the file path in the repo for resolve requests, else the URL path
    range: str | None
    authorization: str | None


class FakeHub:
    """The server and its knobs; `url` is what HF_ENDPOINT should be set to once `start()` has run."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Blob]] = {}
        self.private: dict[str, str] = {}  # repo -> the token it needs
        self.cut_after: dict[str, int] = {}  # "repo/path" -> bytes sent before the connection drops (once)
        self.corrupt: dict[str, int] = {}  # "repo/path" -> how many more GETs get a damaged body
        self.rate: int | None = None  # bytes per second per response, to watch progress bars; None = as fast as can be
        self.log: list[Request] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- content ------------------------------------------------------------------------------------------------------

    def add(self, repo: str, path: str, data: bytes | Path, lfs: bool | None = None) -> Blob:
        raw = Path(data).read_bytes() if isinstance(data, Path) else data
        blob = Blob(raw, path.endswith(LFS_SUFFIXES) if lfs is None else lfs)
        self.repos.setdefault(repo, {})[path] = blob
        return blob

    def commit(self, repo: str) -> str:
        return hashlib.sha1(f"commit of {repo}".encode()).hexdigest()

    # --- observation --------------------------------------------------------------------------------------------------

    def requests(self, repo: str | None = None, path: str | None = None, method: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.log if (repo is None or r.repo == repo) and (path is None or r.path == path)
                    and (method is None or r.method == method)]

    def file_gets(self) -> list[Request]:
        """GETs of file contents (not API calls, not HEADs): what a 'download' is."""
        return [r for r in self.requests(method="GET") if r.repo is not None and not r.path.startswith("/api/")]

    def reset_log(self) -> None:
        with self.lock:
            self.log.clear()

    # --- lifecycle ----------------------------------------------------------------------------------------------------

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fakehub").start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


API_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
API_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
API_PATHS = re.compile(r"^/api/models/([^/]+/[^/]+)/paths-info/([^/]+)$")
RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; every response carries Content-Length
    fake: FakeHub

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence the default stderr access log
        pass

    # --- dispatch -----------------------------------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        for pattern, handler in ((API_TREE, self._tree), (API_PATHS, self._paths_info), (API_INFO, self._info),
                                 (RESOLVE, self._resolve)):
            m = pattern.match(path)
            if m:
                repo = m.group(1)
                file_path = m.group(3) if pattern is RESOLVE else path
                self._record(method, repo, file_path)
                if self._allowed(repo):
                    handler(method, m, query, body)
                return
        self._record(method, None, path)
        if path == "/api/agent-harnesses":  # huggingface_hub's user-agent registry, fetched once a day
            self._json({"standardEnvVars": [], "harnesses": {}})
            return
        self._error(404, "NotFound", "no such route")

    def _record(self, method: str, repo: str | None, path: str) -> None:
        with self.fake.lock:
            self.fake.log.append(Request(method, repo, path, self.headers.get("Range"),
                                         self.headers.get("Authorization")))

    def _allowed(self, repo: str) -> bool:
        """The real Hub answers 401 + RepoNotFound for a missing repo, and for a private one without a token."""
        token = self.fake.private.get(repo)
        if repo not in self.fake.repos or (token and self.headers.get("Authorization") != f"Bearer {token}"):
            self._error(401, "RepoNotFound", "Repository not found")
            return False
        return True

    def _revision(self, repo: str, rev: str | None) -> str | None:
        commit = self.fake.commit(repo)
        if rev in (None, "main", commit):
            return commit
        self._error(404, "RevisionNotFound", "Invalid rev id")
        return None

    # --- API ----------------------------------------------------------------------------------------------------------

    def _info(self, method: str, m: re.Match, query: dict, body: bytes) -> None:
        repo = m.group(1)
        commit = self._revision(repo, m.group(2))
        if commit is None:
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path, blob in sorted(self.fake.repos[repo].items()):
            entry: dict = {"rfilename": path}
            if blobs:
                entry.update(size=blob.size, blobId=blob.oid)
                if blob.lfs:
                    entry["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
            siblings.append(entry)
        self._json({"_id": commit[:24], "id": repo, "modelId": repo, "sha": commit,
                    "private": repo in self.fake.private, "lastModified": "2025-01-01T00:00:00.000Z", "tags": [],
                    "siblings": siblings})

    def _tree(self, method: str, m: re.Match, query: dict, body: bytes) -> None:
        repo, folder = m.group(1), (m.group(3) or "").strip("/")
        if self._revision(repo, m.group(2)) is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{folder}/" if folder else ""
        entries, dirs = [], set()
        for path, blob in sorted(self.fake.repos[repo].items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/" in rest and not recursive:
                dirs.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                dirs.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
            entries.append(_file_entry(path, blob))
        if folder and not entries and not dirs:
            self._error(404, "EntryNotFound", f"{folder} does not exist", repo)
            return
        self._json([_dir_entry(d) for d in sorted(dirs)] + entries)

    def _paths_info(self, method: str, m: re.Match, query: dict, body: bytes) -> None:
        repo = m.group(1)
        if self._revision(repo, m.group(2)) is None:
            return
        form = parse_qs(body.decode())
        files = self.fake.repos[repo]
        out = []
        for p in form.get("paths", []):
            p = p.strip("/")
            if p in files:
                out.append(_file_entry(p, files[p]))
            elif any(f.startswith(p + "/") for f in files):
                out.append(_dir_entry(p))
        self._json(out)

    # --- files --------------------------------------------------------------------------------------------------------

    def _resolve(self, method: str, m: re.Match, query: dict, body: bytes) -> None:
        repo, path = m.group(1), m.group(3)
        commit = self._revision(repo, m.group(2))
        if commit is None:
            return
        blob = self.fake.repos[repo].get(path)
        if blob is None:
            self._error(404, "EntryNotFound", "Entry not found", repo)
            return
        start, end, status = 0, blob.size - 1, 200
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if rng and method == "GET":
            start, end, status = int(rng.group(1)), int(rng.group(2) or blob.size - 1), 206
        headers = {"X-Repo-Commit": commit, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream", "Content-Length": str(end - start + 1)}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if method == "HEAD":
            return
        self._send_body(f"{repo}/{path}", blob.data[start:end + 1])

    def _send_body(self, key: str, data: bytes) -> None:
        with self.fake.lock:
            cut = self.fake.cut_after.pop(key, None)
            damaged = self.fake.corrupt.get(key, 0) > 0
            if damaged:
                self.fake.corrupt[key] -= 1
        if damaged:  # same length, different bytes: only a hash check can tell
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        if cut is not None and cut < len(data):
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        step = max(1, (self.fake.rate or len(data)) // 10)
        for i in range(0, len(data), step):
            self.wfile.write(data[i:i + step])
            if self.fake.rate:
                time.sleep(0.1)

    # --- plumbing -----------------------------------------------------------------------------------------------------

    def _json(self, payload: object) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, code: str, message: str, repo: str | None = None) -> None:
        raw = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if repo is not None:
            self.send_header("X-Repo-Commit", self.fake.commit(repo))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)


def _file_entry(path: str, blob: Blob) -> dict:
    entry: dict = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
    if blob.lfs:
        entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
    return entry


def _dir_entry(path: str) -> dict:
    return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
