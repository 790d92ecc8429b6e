"""`cf serve`'s web app: the job API beside `cf live`'s page, one engine behind both.

- `POST /api/jobs` takes `{"kind": "generate"|"extend", "job": {...}, "env": {...}, "quiet": bool}` and answers with
  the job's events as JSON lines (`cfcli.serve.queue`): `queued` (its id and the jobs ahead), then `line`,
  `progress_start`, `progress`, `progress_end`, `summary`, `error`, and last `exit` with the status. A client that
  goes away cancels its job.
- `POST /api/jobs/{id}/cancel` with `{"signal": N}` stops a job as that signal stops a local run.
- `GET /api/queue`: the job running and those waiting.

Every request needs the server's token (`cfcli.serve.registry`), the live page included (open it with `?token=`), and
on a local bind a local Host (`cfcli.live.server.Guard`).
"""

import asyncio
import contextlib
import json
import logging
import signal

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from cfcli.errors import CfError
from cfcli.live import server as live_server
from cfcli.serve.queue import Job, JobQueue

log = logging.getLogger("cfcli.serve")
KINDS = ("generate", "extend")


def job_of(kind: str, data: dict):
    from cfcli.jobs.extend import ExtendJob
    from cfcli.jobs.generate import GenerateJob

    if kind not in KINDS:
        raise CfError(f"unknown job kind {kind!r}", f"use one of: {', '.join(KINDS)}")
    if not isinstance(data, dict):
        raise CfError("the job is not a JSON object")
    try:
        return (GenerateJob if kind == "generate" else ExtendJob).from_json(data)
    except TypeError as exc:
        raise CfError(f"the job is incomplete: {exc}", "use a cf client of this server's version") from None


async def submit(request: Request):
    jobs: JobQueue = request.app.state.jobs
    try:
        body = await request.json()
        job = job_of(body.get("kind"), body.get("job"))
        env, quiet = body.get("env") or {}, bool(body.get("quiet"))
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise CfError("the job's environment is not a mapping of strings")
    except (ValueError, AttributeError):
        return JSONResponse({"message": "the request is not a JSON job"}, 400)
    except CfError as exc:
        return JSONResponse({"message": exc.message, "hint": exc.hint}, 400)
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def post(event: dict) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed at shutdown: the client is gone anyway
            loop.call_soon_threadsafe(events.put_nowait, event)

    entry = Job(body["kind"], job, env, quiet, post)
    try:
        jobs.submit(entry)
    except CfError as exc:
        return JSONResponse({"message": exc.message, "hint": exc.hint}, 503)
    return StreamingResponse(stream(jobs, entry, events), media_type="application/x-ndjson")


async def stream(jobs: JobQueue, job: Job, events: asyncio.Queue):
    """The job's events as JSON lines, to its `exit`; a client gone before then cancels the job."""
    ended = False
    try:
        while not ended:
            event = await events.get()
            ended = event["type"] == "exit"
            yield json.dumps(event) + "\n"
    finally:
        if not ended:
            jobs.cancel(job.id, signal.SIGHUP)


async def cancel(request: Request):
    try:
        body = await request.json()
        signum = int(body.get("signal", signal.SIGINT))
        job_id = int(request.path_params["job"])
    except (ValueError, TypeError, AttributeError):
        return JSONResponse({"message": "send {\"signal\": N} to a job id"}, 400)
    if signum not in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        return JSONResponse({"message": f"signal {signum} cannot stop a job", "hint": "use 2, 15 or 1"}, 400)
    found = request.app.state.jobs.cancel(job_id, signum)
    return JSONResponse({"cancelled": found}, 200 if found else 404)


async def queue(request: Request):
    return JSONResponse(request.app.state.jobs.status())


ROUTES = [Route("/api/jobs", submit, methods=["POST"]), Route("/api/jobs/{job}/cancel", cancel, methods=["POST"]),
          Route("/api/queue", queue)]


@contextlib.asynccontextmanager
async def lifespan(app):
    jobs: JobQueue = app.state.jobs
    async with live_server.lifespan(app):
        try:
            yield
        finally:
            jobs.stop(signal.SIGTERM)
            await asyncio.to_thread(jobs.join, 60)


def create_app(resident, live_session, broadcast, settings, info: dict, jobs: JobQueue):
    """The ASGI app of `cf serve`: the jobs API and the live page (`cfcli.live.server.create_app`)."""
    guarded = live_server.create_app(live_session, broadcast, settings, info | {"serve": True}, routes=ROUTES,
                                     lifespan=lifespan)
    guarded.app.state.jobs, guarded.app.state.resident = jobs, resident
    return guarded
