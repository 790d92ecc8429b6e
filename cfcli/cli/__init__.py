"""The `cf` command line: parse, call the pipeline, render. Torch is imported only inside commands."""

from contextlib import contextmanager

import typer
from typer.core import TyperGroup

try:  # recent Typer ships its own copy of Click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:
    from click.exceptions import NoArgsIsHelpError, UsageError

from cfcli.cli import bench, download, extend, generate
from cfcli.cli.common import fail


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


class _Group(TyperGroup):
    """Exit status 1 for every user error: usage errors (Click's 2) are printed like the others, `error: ...`."""

    def make_context(self, *args, **kwargs):
        with _usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_errors():
            return super().invoke(ctx)


app = typer.Typer(name="cf", help="Causal Forcing real-time video generation on your own GPU.", cls=_Group,
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
generate.register(app)
extend.register(app)
bench.register(app)
download.register(app)


@app.callback()
def _root() -> None:
    """Causal Forcing real-time video generation on your own GPU."""


def main() -> None:
    app()
