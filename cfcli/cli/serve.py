"""`cf serve`: the engine resident on this machine. Models load, compile and capture once; `cf generate` and
`cf extend` then hand their jobs to it (`cfcli.serve`), and it serves `cf live`'s page from the same engine."""

import contextlib
import logging
import os
import secrets
from pathlib import Path

import typer

from cfcli.cli.common import (CodecOpt, CompileOpt, CrfOpt, DecoderOpt, DeviceOpt, DtypeOpt, GraphsOpt, LoraOpt,
                              LowVramOpt, MaxVramOpt, ModeOpt, PlainOpt, PresetOpt, QuantizeOpt, StepsOpt, console,
                              friendly)
from cfcli.cli.live_options import check_live_options
from cfcli.cli.progress import status_line
from cfcli.errors import CfError


def register(app: typer.Typer) -> None:
    @app.command("serve", short_help="Keep the engine loaded for jobs and the live page.")
    @friendly
    def serve(
        preset: PresetOpt = None,
        mode: ModeOpt = None,
        steps: StepsOpt = None,
        height: int = typer.Option(None, "--height", help="Video height (default: the preset's)."),
        width: int = typer.Option(None, "--width", help="Video width (default: the preset's)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on; the jobs API and the page always "
                                                             "need the token."),
        port: int = typer.Option(7860, "--port", help="Port to serve on (0: any free port)."),
        token: str = typer.Option(None, "--token", help="Access token (default: a new one, written for this user's "
                                                        "clients to $CF_HOME/serve.json)."),
        warm_up: bool = typer.Option(True, "--warm-up/--no-warm-up",
                                     help="Make one video at start-up so that compilation and CUDA-graph capture are "
                                          "done before the first job."),
        out_dir: Path = typer.Option(None, "--out-dir", help="Where live recordings are saved (default: live/ in "
                                                             "the output folder)."),
        codec: CodecOpt = "h264",
        crf: CrfOpt = 18,
        max_seconds: float = typer.Option(None, "--max-seconds", help="Stop each live video after this long."),
        lead: float = typer.Option(1.0, "--lead", help="Seconds of live video generated ahead of playback."),
        text_device: str = typer.Option(None, "--text-device", metavar="cuda|stream|cpu",
                                        help="Where umT5 stays loaded (default: the GPU if it has room, else host "
                                             "memory, streamed to the GPU per prompt; cpu is very slow)."),
        device: DeviceOpt = None,
        dtype: DtypeOpt = None,
        compile: CompileOpt = None,
        cuda_graphs: GraphsOpt = True,
        quantize: QuantizeOpt = None,
        plain: PlainOpt = False,
        decoder: DecoderOpt = "wan",
        max_vram: MaxVramOpt = None,
        low_vram: LowVramOpt = False,
        lora: LoraOpt = None,
        random_weights: bool = typer.Option(False, "--random-weights",
                                            help="Random weights of the preset's size (timing without downloads)."),
    ) -> None:
        """Load the engine once and keep it: `cf generate` and `cf extend` on this machine run their jobs here (one
        on the GPU at a time, the others queued), and the live page is served from the same engine.

        \b
        Examples:
          cf serve --mode framewise
          cf generate "a fox running"          # in another terminal: runs on the server
          cf generate "a fox" --no-server      # in this process instead
        """
        from cfcli.config import output_dir
        from cfcli.live.server import bind
        from cfcli.live.session import LiveConfig
        from cfcli.serve import registry
        from cfcli.serve.resident import Resident

        running = registry.read()
        if running is not None and registry.alive(running.pid):
            raise CfError(f"a cf serve is already running at {running.url} (process {running.pid})",
                          f"use that one, or stop it first (Ctrl-C in its terminal, or kill {running.pid})")
        defaults = {k: v for k, v in dict(preset=preset, mode=mode, steps=steps, height=height, width=width,
                                          device=device, dtype=dtype, compile=compile, cuda_graphs=cuda_graphs,
                                          quantize=quantize, plain=plain, decoder=decoder, max_vram=max_vram,
                                          low_vram=low_vram, lora=lora).items() if v is not None}
        if lora:  # made absolute once: a job's session resolves them from the server's folder
            from cfcli.lora.spec import absolute

            defaults["lora"] = [absolute(spec) for spec in lora]
        resident = Resident(defaults, random_weights, max_seconds, text_device)
        session = resident.new_session({})  # every option checked before the port is taken or anything loads
        check_live_options(session.preset, None, crf, codec, port, token, max_seconds, lead, 64, None)
        # the live page shares the engine with the jobs, which must run on the server's own LoRAs
        config = LiveConfig(out_dir or output_dir() / "live", codec, crf, lead, max_seconds, lora_swaps=False)
        sock = bind(host, port)
        try:
            load(resident, warm_up)
            run(resident, config, host, sock, token)
        finally:
            sock.close()
            resident.close()


def load(resident, warm_up: bool) -> None:
    """The server's session loaded (umT5 kept), and warmed up on a GPU."""
    from cfcli.cli.view import ConsoleView
    from cfcli.jobs.notices import show_plan

    status = status_line(False)
    resident.start(status)
    session = resident.session
    random = " (random weights)" if session.random_weights else ""
    console.print(f"[bold]{session.preset.name}[/] · loaded on {session.device}{random}; umT5 stays "
                  f"[cyan]{session.encoder.where}[/]")
    show_plan(ConsoleView(), session.memory)
    if warm_up and session.device.type == "cuda":
        with console.status(f"warming up: one {session.preset.frames}-frame video (compilation, CUDA graphs)"):
            seconds = resident.warm_up()
        console.print(f"[dim]warmed up in {seconds:.1f}s[/]")


def run(resident, config, host: str, sock, token: str | None) -> None:
    """Serve until a stop signal: the running job stops (its frames so far kept), queued ones are refused, the live
    recording is saved."""
    from cfcli.live.server import quoted, serve
    from cfcli.serve import registry

    app, entry, jobs = build_app(resident, config, host, sock.getsockname()[1], token)
    show_queue()
    registry.publish(entry)
    console.print(f"[green]serving[/] {resident.session.preset.name} at {entry.url} — `cf generate` and `cf extend` "
                  "on this machine run here (--no-server: in their own process)")
    console.print(f"[green]live:[/] {entry.url}/?token={quoted(entry.token)}   (Ctrl-C to stop; recordings go to "
                  f"{config.out_dir})")
    try:
        signum = serve(app, sock, on_stop=jobs.stop, grace_s=60)
    finally:
        registry.withdraw(entry)
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        console.print("stopped")
    if signum:
        raise typer.Exit(128 + signum)


def build_app(resident, config, host: str, port: int, token: str | None):
    """(the ASGI app, the registry entry that finds it, its job queue) for the loaded `resident`."""
    from cfcli.live.server import Broadcast, ServerSettings, is_local, page_info
    from cfcli.live.session import LiveSession
    from cfcli.serve import registry
    from cfcli.serve.app import create_app
    from cfcli.serve.queue import JobQueue

    session = resident.session
    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    entry = registry.Entry(f"http://{local}:{port}", token or secrets.token_urlsafe(24), os.getpid(),
                           session.preset.name)
    broadcast = Broadcast()
    engine, encoder = session.open_live(resident.live_seconds, resident.text_device)
    live = LiveSession(engine, encoder, config, broadcast, hold=resident.live).begin()
    jobs = JobQueue(resident.run)
    settings = ServerSettings(entry.token, 64 * 2**20, local=is_local(host))
    info = page_info(engine, encoder, True, None, config.max_seconds)
    return create_app(resident, live, broadcast, settings, info, jobs), entry, jobs


def show_queue() -> None:
    """The server's log (jobs queued, started, finished, cancelled; switches) on this terminal."""
    from rich.logging import RichHandler

    log = logging.getLogger("cfcli.serve")
    if not log.handlers:
        handler = RichHandler(console=console, show_path=False, show_level=False, markup=False)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
