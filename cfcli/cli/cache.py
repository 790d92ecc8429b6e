"""`cf cache`: what cfcli keeps in `$CF_HOME` (converted checkpoints, prompt embeddings, TAEHV), and clearing it.

Downloads live in the Hugging Face cache, which `hf cache` manages; this is only cfcli's own folder. A conversion is
"old" when no shipped preset's current checkpoint maps to it (a newer checkpoint was converted since).
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import typer

from cfcli.cli.common import JsonOpt, console, friendly
from cfcli.errors import CfError
from cfcli.hub import converted_dir, converted_path, disk_size, human
from cfcli.paths import cf_home

cache_app = typer.Typer(invoke_without_command=True)


@dataclass
class Entry:
    kind: str  # converted | prompts | taehv
    path: Path
    size: int
    note: str = ""

    @property
    def old(self) -> bool:
        return self.kind == "converted" and not self.note


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache", short_help="List or clear cfcli's cache.")


@cache_app.callback()
@friendly
def _cache(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List cfcli's cache (converted checkpoints, prompt embeddings), or clear part of it.

    Examples:

    \b
      cf cache
      cf cache clear --old
      cf cache clear --prompts --yes
    """
    if ctx.invoked_subcommand is None:
        show(entries(), json_out)


@cache_app.command("clear")
@friendly
def clear(old: bool = typer.Option(False, "--old", help="Converted checkpoints no preset uses any more."),
          converted: bool = typer.Option(False, "--converted", help="All converted checkpoints (remade by "
                                                                     "`cf download`)."),
          prompts: bool = typer.Option(False, "--prompts", help="Cached prompt embeddings (remade on use)."),
          all_: bool = typer.Option(False, "--all", help="Everything in $CF_HOME listed by `cf cache`."),
          yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before deleting.")) -> None:
    """Delete cached files (ask first unless --yes).

    Examples:

    \b
      cf cache clear --old
      cf cache clear --all -y
    """
    if not (old or converted or prompts or all_):
        raise CfError("say what to clear", "use --old, --converted, --prompts or --all (see `cf cache`)")
    doomed = [e for e in entries() if all_ or (converted and e.kind == "converted") or (prompts and e.kind == "prompts")
              or (old and e.old)]
    if not doomed:
        console.print("nothing to clear")
        return
    size = human(sum(e.size for e in doomed))
    if not yes and not typer.confirm(f"delete {len(doomed)} cached item(s), {size}?", err=True):
        raise typer.Exit(1)
    for e in doomed:
        shutil.rmtree(e.path) if e.path.is_dir() else e.path.unlink(missing_ok=True)
    console.print(f"[green]✓[/] cleared {len(doomed)} item(s), {size}")


def entries() -> list[Entry]:
    """Every converted checkpoint (with the presets using it), the prompt cache and TAEHV, with sizes."""
    users = converted_users()
    found = [Entry("converted", f, f.stat().st_size, ", ".join(users.get(f.resolve(), ())))
             for f in sorted(converted_dir().glob("*.safetensors"))]
    for kind, folder in (("prompts", cf_home() / "prompts"), ("taehv", cf_home() / "taehv")):
        if folder.is_dir():
            n = sum(1 for f in folder.iterdir() if f.is_file())
            found.append(Entry(kind, folder, disk_size(folder), f"{n} file{'s' * (n != 1)}"))
    return found


def converted_users() -> dict[Path, list[str]]:
    """Converted file → the shipped presets whose current checkpoint it was made from (read locally only)."""
    from cfcli.presets import load_preset, shipped_presets

    users: dict[Path, list[str]] = {}
    for name in shipped_presets():
        path = converted_path(load_preset(name), whole=False)  # a damaged file is still that preset's
        if path is not None:
            users.setdefault(path.resolve(), []).append(name)
    return users


def show(found: list[Entry], as_json: bool) -> None:
    from rich.table import Table

    if as_json:
        typer.echo(json.dumps([{"kind": e.kind, "path": str(e.path), "bytes": e.size, "old": e.old,
                                "note": e.note} for e in found]))
        return
    if not found:
        console.print(f"cfcli's cache ({cf_home()}) is empty")
        return
    table = Table(box=None, pad_edge=False)
    for col, justify in (("kind", "left"), ("size", "right"), ("use", "left"), ("path", "left")):
        table.add_column(col, justify=justify)
    for e in found:
        use = "[yellow]old: no preset uses it[/]" if e.old else e.note
        table.add_row(e.kind, human(e.size), use, str(e.path))
    console.print(table)
    console.print(f"[dim]{human(sum(e.size for e in found))} in {cf_home()} · `cf cache clear --old` removes old "
                  "conversions[/]")
