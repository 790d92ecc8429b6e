"""The `cf` command line: parse, call the pipeline, render. Torch is imported only inside commands."""

import typer

from cfcli.cli import bench, download, extend, generate, live

app = typer.Typer(name="cf", help="Causal Forcing real-time video generation on your own GPU.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
generate.register(app)
extend.register(app)
bench.register(app)
download.register(app)
live.register(app)


@app.callback()
def _root() -> None:
    """Causal Forcing real-time video generation on your own GPU."""


def main() -> None:
    app()
