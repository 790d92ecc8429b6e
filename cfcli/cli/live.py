"""`cf live`: load the models once, serve the live page, steer the video while it plays (Ctrl-C to quit)."""

import contextlib
import json
import secrets
from pathlib import Path

import typer

from cfcli.cli.common import (CodecOpt, CompileOpt, CrfOpt, DecoderOpt, DeviceOpt, DtypeOpt, GraphsOpt, JsonOpt,
                              LoraOpt, LowVramOpt, MaxVramOpt, ModeOpt, PlainOpt, PresetOpt, QuantizeOpt, SeedOpt,
                              StepsOpt, console, friendly)
from cfcli.cli.live_options import check_live_options
from cfcli.cli.progress import status_line

def register(app: typer.Typer) -> None:
    @app.command("live", short_help="Play and steer generation live in the browser.")
    @friendly
    def live(
        preset: PresetOpt = None,
        mode: ModeOpt = None,
        steps: StepsOpt = None,
        seed: SeedOpt = None,
        host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on; any but localhost needs the "
                                                             "token."),
        port: int = typer.Option(7860, "--port", help="Port to serve on."),
        open_browser: bool = typer.Option(False, "--open", help="Open the page in the browser."),
        token: str = typer.Option(None, "--token", help="Access token (default: generated when --host is not "
                                                        "local)."),
        out_dir: Path = typer.Option(None, "--out-dir", help="Where recordings are saved (default: live/ in the "
                                                             "output folder, ./outputs or CF_OUTPUT_DIR)."),
        record: bool = typer.Option(True, "--record/--no-record", help="Record each video unless the page turns "
                                                                       "it off."),
        codec: CodecOpt = "h264",
        crf: CrfOpt = 18,
        max_seconds: float = typer.Option(None, "--max-seconds", help="Stop each video after this long (default: "
                                                                      "the model's position-table limit)."),
        lead: float = typer.Option(1.0, "--lead", help="Seconds of video generated ahead of playback."),
        text_device: str = typer.Option(None, "--text-device", metavar="cuda|stream|cpu",
                                        help="Where umT5 stays loaded (default: the GPU if it has room, else host "
                                             "memory, streamed to the GPU per prompt; cpu is very slow)."),
        max_upload_mb: int = typer.Option(64, "--max-upload-mb", help="Largest picture or clip upload."),
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
        switch_at: str = typer.Option("steps", "--switch-at", metavar="steps|blocks",
                                      help="Where a typed prompt lands: the next denoising step of the block being "
                                           "made (sooner), or the next block (each block under one prompt)."),
        measure_latency: int = typer.Option(None, "--measure-latency", metavar="N",
                                            help="No server: make N prompt switches at random moments and report "
                                                 "submitted → first frame latency."),
        json_out: JsonOpt = False,
        osc: int = typer.Option(None, "--osc", metavar="PORT",
                                help="Also take control messages over OSC (UDP) on this port (docs/live.md, OSC)."),
        osc_host: str = typer.Option("127.0.0.1", "--osc-host", help="Address OSC listens on; any but localhost "
                                                                     "needs --token."),
    ) -> None:
        """Serve a page that plays the video as it is generated; type to change where it goes.

        \b
        Examples:
          cf live --mode framewise --open
          cf live --mode chunkwise --seed 7 --port 8000
          cf live --host 0.0.0.0 --token secret      # other machines may connect, with the token
          cf live --osc 9000                         # and steer it over OSC: /cf/claim, /cf/prompt "..."
        """
        from cfcli.config import output_dir
        from cfcli.live.recording import recover_partials
        from cfcli.live.server import bind
        from cfcli.live.session import LiveConfig
        from cfcli.session import Session, SpeedFlags

        session = Session(preset, mode=mode, steps=steps, device=device, dtype=dtype,
                          speed=SpeedFlags(compile, cuda_graphs, quantize, decoder, plain), max_vram=max_vram,
                          low_vram=low_vram, lora=lora, random_weights=random_weights, status=status_line(False))
        check_live_options(session.preset, seed, crf, codec, port, token, max_seconds, lead,
                           max_upload_mb, measure_latency, switch_at)
        config = LiveConfig(out_dir or output_dir() / "live", codec, crf, lead, max_seconds, switch_at=switch_at)
        sock = bind(host, port) if measure_latency is None else None  # a busy port is refused before anything loads
        osc_sock = None
        try:
            if osc is not None:
                from cfcli.errors import CfError
                from cfcli.live.osc import bind_osc

                if measure_latency is not None:
                    raise CfError("--osc needs the server; --measure-latency runs none", "leave out one of them")
                osc_sock = bind_osc(osc_host, osc, token)
            for path in recover_partials(config.out_dir):
                console.print(f"[yellow]kept[/] the recording of a server that was killed: {path}")
            engine, encoder = load(session, max_seconds, text_device)
            if measure_latency is not None:
                from cfcli.live.measure import measure

                result = measure(engine, encoder, config, measure_latency, seed or 0)
                typer.echo(json.dumps(result)) if json_out else console.print_json(data=result)
                return
            run_server(engine, encoder, config, host, sock, token, record, seed, open_browser, max_upload_mb,
                       osc_sock)
        finally:
            if sock is not None:
                sock.close()
            if osc_sock is not None:
                osc_sock.close()


def load(session, max_seconds: float | None, text_device: str | None):
    """(engine, prompt encoder) of `session` for the live loop: planned (umT5 kept loaded beside the DiT, or on the
    CPU where it does not fit) and loaded, each said."""
    p, dev = session.preset, session.device
    random = " (random weights)" if session.random_weights else ""
    console.print(f"[bold]{p.name}[/] · loading the models on {dev}{random}")
    engine, encoder = session.open_live(max_seconds, text_device, swap_loras=True)  # the page swaps LoRAs in place
    from cfcli.cli.view import ConsoleView
    from cfcli.jobs.notices import show_plan

    show_plan(ConsoleView(), session.memory)
    console.print(f"umT5 stays loaded [cyan]{encoder.where}[/]" +
                  ("" if text_device else " (automatic; --text-device)"))
    return engine, encoder


def run_server(engine, encoder, config, host: str, sock, token: str | None, record: bool, seed: int | None,
               open_browser: bool, max_upload_mb: int, osc_sock=None) -> None:
    """Serve on the bound `sock` until a stop signal (SIGINT, SIGTERM, SIGHUP: the recording is saved each time)."""
    from cfcli.live.server import is_local, quoted, serve

    if token is None and not is_local(host):
        token = secrets.token_urlsafe(24)
    app, _ = build_app(engine, encoder, config, token, record, seed, max_upload_mb * 2**20, host=host, osc=osc_sock)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{sock.getsockname()[1]}/"
    url += f"?token={quoted(token)}" if token else ""
    console.print(f"[green]live:[/] {url}   (Ctrl-C to quit; recordings go to {config.out_dir})")
    if osc_sock is not None:
        osc_host, osc_port = osc_sock.getsockname()[:2]
        console.print(f"[green]osc:[/] udp {osc_host}:{osc_port}   (/cf/claim, then /cf/prompt, /cf/start …"
                      + ("; end each message with the token" if token else "") + ")")
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    with terminal_log():
        signum = serve(app, sock)
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        console.print("stopped")
    if signum:
        raise typer.Exit(128 + signum)


@contextlib.contextmanager
def terminal_log():
    """The live log on this terminal while the server runs: videos started and stopped, recordings saved, OSC
    refusals; taken off again after, so nothing outlives the server."""
    import logging

    from rich.logging import RichHandler

    log = logging.getLogger("cfcli.live")
    handler = RichHandler(console=console, show_path=False, show_level=False, markup=False, log_time_format="[%X]")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def build_app(engine, encoder, config, token: str | None, record: bool = True, seed: int | None = None,
              max_upload_bytes: int = 64 * 2**20, host: str = "127.0.0.1", osc=None):
    """(the ASGI app, its running `LiveSession`): what `cf live` serves, and what the tests serve. `host` is the
    address bound: on a local one only a local Host is answered, token or not. `osc`: the bound OSC socket
    (`cf live --osc`), served on the app's loop."""
    from cfcli.live.server import Broadcast, ServerSettings, create_app, is_local, page_info
    from cfcli.live.session import LiveSession

    settings = ServerSettings(token, max_upload_bytes, local=token is None or is_local(host))
    broadcast = Broadcast()
    session = LiveSession(engine, encoder, config, broadcast)
    session.warm_up()
    session.begin()
    info = page_info(engine, encoder, record, seed, config.max_seconds)
    control = None
    if osc is not None:
        from cfcli.live.osc import OscControl

        control = OscControl(osc, token)
    return create_app(session, broadcast, settings, info, osc=control), session
