"""The `cf` command line: parse, call the pipeline, render. Torch is imported only inside commands."""

import os
import sys
from contextlib import contextmanager, suppress

import typer
from typer.core import TyperGroup

try:  # recent Typer ships its own copy of Click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:
    from click.exceptions import NoArgsIsHelpError, UsageError

from cfcli.version import __version__
from cfcli.cli import bench, cache, download, extend, generate, info, live, serve
from cfcli.cli.common import fail, friendly
from cfcli.errors import CfError


@contextmanager
def _usage_errors():
    try:
        yield
    except NoArgsIsHelpError as exc:  # plain `cf`: the help, not an error
        typer.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        raise typer.Exit(0) from None
    except UsageError as exc:
        where = f"{exc.ctx.command_path} --help" if exc.ctx else "cf --help"
        fail(exc.format_message(), f"see {where}")
    except CfError as exc:  # a bad config value, raised when a command's option asks for it as its default
        fail(exc.message, exc.hint)


class _Group(TyperGroup):
    """Exit status 1 for every user error: usage errors (Click's 2) are printed like the others, `error: ...`."""

    def make_context(self, *args, **kwargs):
        with _usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_errors():
            return super().invoke(ctx)


# Plain (click) help: readable at 80 columns, nothing cut; `-h` as well as `--help` on every command.
app = typer.Typer(name="cf", help="Causal Forcing real-time video generation on your own GPU.", cls=_Group,
                  no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
generate.register(app)
extend.register(app)
live.register(app)
serve.register(app)
info.register(app)
bench.register(app)
download.register(app)
cache.register(app)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"cf (cfcli) {__version__}")
        raise typer.Exit()


@app.callback()
@friendly
def _root(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", "-V", callback=_show_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Causal Forcing real-time video generation on your own GPU.

    Defaults for --device, --dtype, --codec, --crf, the preset and the output folder come from CF_DEVICE,
    CF_DTYPE, CF_CODEC, CF_CRF, CF_PRESET, CF_OUTPUT_DIR, else the config file
    ($XDG_CONFIG_HOME/cfcli/config.yaml, or $CF_CONFIG); a flag always wins.
    """
    from cfcli.config import default_map, read_config

    # Never refuses here: a bad file or value is refused by the command about to use it, so --help always works.
    ctx.default_map = default_map(read_config())


def main() -> None:
    """Run `cf`. A command that imported torch ends the process as soon as it is done, with its exit status (success,
    a failure, a stop): tearing down compile workers, CUDA graphs and large modules took 5-9 s after the summary.
    Nothing is lost by it: every command has finished and closed its files before it returns (none leaves work to
    atexit handlers or finalisers), and output is flushed first. An unexpected error still ends as Python ends it."""
    try:
        app()
    except SystemExit as exc:
        if "torch" not in sys.modules or not isinstance(exc.code, int | None):
            raise
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):  # a closed pipe: nothing more can reach it
                stream.flush()
        os._exit(exc.code or 0)
