"""Where `cf generate` and `cf extend` run their job: on a running `cf serve` when there is one (`cfcli.serve.client`;
this process then never imports torch), else here, on a `Session` of this process."""

from cfcli.cli.common import console
from cfcli.cli.view import ConsoleView

# The options that pick and shape the session (`cfcli.session.Session`'s arguments); a job sends those the user gave.
ENGINE = ("preset", "mode", "steps", "device", "dtype", "height", "width", "compile", "cuda_graphs", "quantize",
          "plain", "decoder", "max_vram", "low_vram", "lora")


def given_engine(ctx) -> dict:
    """The session options given on the command line, by a `CF_*` variable or the config file; the others are left to
    the session (a `cf serve` then keeps its own). LoRA files are made absolute here: the job may run elsewhere."""
    from cfcli.lora.spec import absolute

    params = ctx.params
    given = {k: params[k] for k in ENGINE if k in params and getattr(ctx.get_parameter_source(k), "name", "DEFAULT")
             not in ("DEFAULT", None)}
    if given.get("lora"):
        given["lora"] = [absolute(spec) for spec in given["lora"]]
    return given


def run_job(kind: str, job, quiet: bool, json_out: bool, no_server: bool) -> ConsoleView:
    """Run a `cfcli.jobs` job (`kind`: "generate" or "extend") on `cf serve` or here, rendered on this terminal;
    a job that stopped exits 128 + the signal (typer.Exit)."""
    import typer

    view, code = (None, 0) if no_server else run_served(kind, job, quiet, json_out)
    if view is None:
        view, code = run_here(kind, job, quiet, json_out)
    if code:
        raise typer.Exit(code)
    return view


def run_served(kind: str, job, quiet: bool, json_out: bool) -> tuple[ConsoleView | None, int]:
    """The job on the running `cf serve`, if there is one that answers; (None, 0) when there is none."""
    from cfcli.pipeline.phases import process_start
    from cfcli.serve import client

    def note(why: str) -> None:
        if not quiet:
            console.print(f"[yellow]note:[/] {why}; running here")

    server = client.find(note)
    if server is None:
        return None, 0
    view = ConsoleView(quiet, json_out, server.url)
    try:
        return view, client.submit(server, kind, job, view, started=process_start()[0])
    except client.Unreachable as exc:
        note(str(exc))
        return None, 0


def run_here(kind: str, job, quiet: bool, json_out: bool) -> tuple[ConsoleView, int]:
    """The job in this process, stopped by Ctrl-C, SIGTERM or SIGHUP (the video so far kept)."""
    from cfcli.pipeline.phases import Phases

    phases = Phases()
    phases.mark("cli_ready")  # before torch is imported
    from cfcli.jobs import extend, generate
    from cfcli.jobs.view import status
    from cfcli.pipeline.signals import stop_on_signals, stopped_by
    from cfcli.session import Session

    view = ConsoleView(quiet, json_out, stopped=stopped_by)

    def open_session(**engine):
        return Session(**engine, keep_text=False, one_shot=True, status=status(view), phases=phases)

    with stop_on_signals():
        code = (generate if kind == "generate" else extend).run(job, view, open_session, phases)
    return view, code
