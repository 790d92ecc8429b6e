"""The client side of `cf serve`: a `cf generate`/`cf extend` job handed to the running server and rendered here as if
it ran here. Torch-free (the standard library's http.client), so a served job's first frame is not behind an import.

The job goes out as one POST with its options (paths made absolute here), this process's settings variables
(`cfcli.config.client_environment`) and whether to be quiet; the answer is a stream of JSON lines, one per call on the
job's `View` (`cfcli.serve.app`). The first Ctrl-C (SIGTERM, SIGHUP) asks the server to stop the job — the video so
far is kept, as here — and the stream goes on to the summary; later ones are only noted.
"""

import http.client
import json
import os
import signal
import threading
import time
from contextlib import closing, contextmanager
from urllib.parse import urlsplit

from cfcli.errors import CfError
from cfcli.serve import registry

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Unreachable(Exception):
    """The recorded server did not take the job (nothing was sent): run it here."""


def find(note=lambda why: None) -> registry.Entry | None:
    """The running `cf serve` recorded in `$CF_HOME`, or None; a stale entry (its process gone) is removed and said."""
    entry = registry.read()
    if entry is None:
        return None
    if not registry.alive(entry.pid):
        note(f"the cf serve recorded in {registry.entry_path()} (process {entry.pid}) is gone")
        registry.entry_path().unlink(missing_ok=True)
        return None
    return entry


def connect(entry: registry.Entry, timeout: float | None = None) -> http.client.HTTPConnection:
    url = urlsplit(entry.url)
    return http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)


def submit(entry: registry.Entry, kind: str, job, view, started: float | None = None) -> int:
    """Run `job` (a `cfcli.jobs` job of `kind`) on the server, rendered on `view`; the exit status. Raises
    `Unreachable` when the server cannot be reached (nothing ran), CfError for a refused or failed job."""
    started = time.perf_counter() if started is None else started
    body = json.dumps({"kind": kind, "job": job.absolute().to_json(), "quiet": view.quiet,
                       "env": client_environment()})
    conn = connect(entry, timeout=5)
    try:
        conn.request("POST", "/api/jobs", body, {"Authorization": f"Bearer {entry.token}",
                                                 "Content-Type": "application/json"})
        resp = conn.getresponse()
    except OSError as exc:
        conn.close()
        raise Unreachable(f"the cf serve at {entry.url} does not answer ({exc.strerror or exc})") from None
    if resp.status != 200:
        text = resp.read().decode(errors="replace").strip()
        conn.close()
        raise refusal(entry, resp.status, text)
    conn.sock.settimeout(None)  # a job may wait in the queue, or load models, for minutes
    with closing(conn), cancel_on_signals(entry) as stop:
        return follow(resp, view, stop, started)


def follow(resp, view, stop: "Stopper", started: float) -> int:
    """Render the job's events until its exit status."""
    first_frame = None
    for raw in resp:
        event = json.loads(raw)
        kind = event.pop("type")
        if kind == "queued":
            stop.job = event["job"]
            if event["ahead"] and not view.quiet:
                view.line(f"[dim]queued on cf serve behind {event['ahead']} job(s)…[/]")
        elif kind == "line":
            view.line(event["markup"])
        elif kind == "progress_start":
            view.progress_start(event["fps"])
        elif kind == "progress":
            first_frame = first_frame if first_frame is not None else time.perf_counter() - started
            view.progress(event["made"], event["goal"], event["elapsed"], event["mem_gib"])
        elif kind == "progress_end":
            view.progress_end()
        elif kind == "summary":
            phases = event["phases"]
            if phases is not None:  # what this process saw: from its start
                phases["client"] = {"first_frame_s": first_frame, "done_s": time.perf_counter() - started}
            first_frame = None
            view.summary(event["fields"], phases)
        elif kind == "error":
            view.progress_end()
            raise CfError(event["message"], event.get("hint", ""))
        elif kind == "exit":
            return event["code"]
    raise CfError("cf serve stopped in the middle of the job", "see its terminal; run again, or with --no-server")


def refusal(entry: registry.Entry, status: int, text: str) -> CfError:
    if status == 401:
        return CfError(f"the cf serve at {entry.url} refused this client's token",
                       f"{registry.entry_path()} is not that server's: restart cf serve, or use --no-server")
    try:
        data = json.loads(text)
        return CfError(data["message"], data.get("hint", ""))
    except (ValueError, KeyError, TypeError):
        return CfError(f"the cf serve at {entry.url} refused the job (HTTP {status}): {text[:200]}",
                       "run with --no-server")


class Stopper:
    """Asks the server to stop the job on the first stop signal (from a thread: a signal handler must not block)."""

    def __init__(self, entry: registry.Entry):
        self.entry, self.job, self.signum = entry, None, 0

    def __call__(self, signum, frame) -> None:
        if self.signum:
            os.write(2, b"\nstopping: the server is finishing the file, one moment\n")
            return
        self.signum = signum
        threading.Thread(target=self.cancel, daemon=True).start()

    def cancel(self) -> None:
        for _ in range(50):  # the job's id comes with its first event
            if self.job is not None:
                break
            time.sleep(0.02)
        conn = connect(self.entry, timeout=5)
        try:
            conn.request("POST", f"/api/jobs/{self.job}/cancel", json.dumps({"signal": self.signum}),
                         {"Authorization": f"Bearer {self.entry.token}", "Content-Type": "application/json"})
            conn.getresponse().read()
        except OSError:
            pass  # the server is gone: the stream ends and says so
        finally:
            conn.close()


@contextmanager
def cancel_on_signals(entry: registry.Entry):
    stop = Stopper(entry)
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.signal(s, stop) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, signal.SIG_IGN if stop.signum else handler)


def client_environment() -> dict:
    from cfcli.config import client_environment

    return client_environment()
