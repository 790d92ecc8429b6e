"""`cf cache`: what cfcli keeps in `$CF_HOME` (converted checkpoints, prompt embeddings, TAEHV, compiled code), and
clearing it.

Downloads live in the Hugging Face cache, which `hf cache` manages; this is only cfcli's own folder. A conversion is
"old" when no shipped preset's current checkpoint maps to it (a newer checkpoint was converted since).

Clearing removes only what cfcli makes, by name (`MADE`), and never through a link: a cache folder that is a symbolic
link (say `converted` pointing at a folder of your own) is listed as linked and left alone, link and target both, and
a linked file inside a cache folder is not cfcli's. Sizes are of those files only, so a link is never walked.
"""

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import typer

from cfcli.cli.common import JsonOpt, console, friendly
from cfcli.errors import CfError
from cfcli.hub import converted_dir, converted_path, human
from cfcli.paths import cf_home

# What cfcli writes in each cache folder (temp files of an interrupted write included); nothing else is cleared.
MADE = {"converted": re.compile(r"([0-9a-f]{40}|[0-9a-f]{64})-(ema|noema)\.safetensors"),
        "prompts": re.compile(r"[^.][^/]*\.safetensors|\..+\.\d+\.tmp"),
        "taehv": re.compile(r"taew2_1\.pth(\.part)?"),
        # `cfcli.pipeline.compile_cache`'s code, `cfcli.pipeline.traced`'s figures
        "compiled": re.compile(r"[0-9a-f]{24}\.(bin|json)|\..+\.\d+\.tmp")}

cache_app = typer.Typer(invoke_without_command=True)


@dataclass
class Entry:
    kind: str  # converted | prompts | taehv | compiled
    path: Path
    size: int
    note: str = ""
    files: list[Path] = field(default_factory=list)  # what clearing it removes (a folder: its files cfcli made)
    link: Path | None = None  # a cache folder that is a symbolic link: its target; listed, never cleared

    @property
    def old(self) -> bool:
        return self.kind == "converted" and not self.note and self.link is None


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache", short_help="List or clear cfcli's cache.")


@cache_app.callback()
@friendly
def _cache(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List cfcli's cache (converted checkpoints, prompt embeddings, compiled code), or clear part of it.

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
          compiled: bool = typer.Option(False, "--compiled", help="Compiled code of the DiT blocks and traced "
                                                                   "memory figures (remade by the next run)."),
          all_: bool = typer.Option(False, "--all", help="Everything in $CF_HOME listed by `cf cache`."),
          dry_run: bool = typer.Option(False, "--dry-run", help="List what would be deleted, with sizes; delete "
                                                                "nothing."),
          yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before deleting.")) -> None:
    """Delete cached files (ask first unless --yes). Only files cfcli made are deleted, never through a link: a
    cache folder that is a symbolic link is left alone, and said so.

    Examples:

    \b
      cf cache clear --old
      cf cache clear --all --dry-run
      cf cache clear --all -y
    """
    from rich.markup import escape

    if not (old or converted or prompts or compiled or all_):
        raise CfError("say what to clear", "use --old, --converted, --prompts, --compiled or --all (see `cf cache`)")
    chosen = [e for e in entries() if all_ or (converted and e.kind == "converted") or (prompts and e.kind == "prompts")
              or (compiled and e.kind == "compiled") or (old and (e.old or (e.link and e.kind == "converted")))]
    for e in chosen:
        if e.link is not None:
            console.print(f"[yellow]left alone:[/] {escape(str(e.path))} is a link to {escape(str(e.link))}; cfcli "
                          "deletes nothing through a link [dim](remove the link yourself if it should go)[/]")
    doomed = [e for e in chosen if e.link is None and e.files]
    if not doomed:
        console.print("nothing to clear")
        return
    size = human(sum(e.size for e in doomed))
    if dry_run:
        for e in doomed:
            console.print(f"  {human(e.size):>9}  {escape(str(e.path))}", highlight=False)
        console.print(f"would delete {len(doomed)} cached item(s), {size} [dim](--dry-run: nothing deleted)[/]")
        return
    if not yes and not typer.confirm(f"delete {len(doomed)} cached item(s), {size}?", err=True):
        raise typer.Exit(1)
    for e in doomed:
        remove(e)
    console.print(f"[green]✓[/] cleared {len(doomed)} item(s), {size}")


def remove(e: Entry) -> None:
    """Delete the entry's files (each checked again to be a plain file, not a link), then its folder if now empty."""
    for f in e.files:
        if made_by_cf(e.kind, f) and not f.parent.is_symlink():
            f.unlink(missing_ok=True)
    if e.path.is_dir() and not e.path.is_symlink():
        try:
            e.path.rmdir()  # only when empty: anything else in it is not cfcli's
        except OSError:
            pass


def made_by_cf(kind: str, path: Path) -> bool:
    """A plain file (not a link, not a folder) named as cfcli names what it writes in the `kind` folder."""
    return bool(MADE[kind].fullmatch(path.name)) and not path.is_symlink() and path.is_file()


def linked(folder: Path) -> Path | None:
    """Where a cache folder that is a symbolic link points (None for a real folder or nothing)."""
    return Path(os.readlink(folder)) if folder.is_symlink() else None


def entries() -> list[Entry]:
    """Every converted checkpoint (with the presets using it), the prompt cache, TAEHV and the compiled code, with
    sizes; a linked cache folder as one entry that is never cleared."""
    found: list[Entry] = []
    folder = converted_dir()
    if (target := linked(folder)) is not None:
        found.append(Entry("converted", folder, 0, f"a link to {target}: left alone", link=target))
    elif folder.is_dir():
        users = converted_users()
        found += [Entry("converted", f, f.stat().st_size, ", ".join(users.get(f.resolve(), ())), [f])
                  for f in sorted(folder.iterdir()) if made_by_cf("converted", f)]
    for kind in ("prompts", "taehv", "compiled"):
        folder = cf_home() / kind
        if (target := linked(folder)) is not None:
            found.append(Entry(kind, folder, 0, f"a link to {target}: left alone", link=target))
        elif folder.is_dir():
            files = sorted(f for f in folder.iterdir() if made_by_cf(kind, f))
            n = len(files)
            found.append(Entry(kind, folder, sum(f.stat().st_size for f in files), f"{n} file{'s' * (n != 1)}",
                               files))
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
                                "note": e.note, "link": str(e.link) if e.link is not None else None}
                               for e in found]))
        return
    if not found:
        console.print(f"cfcli's cache ({cf_home()}) is empty")
        return
    table = Table(box=None, pad_edge=False)
    for col, justify in (("kind", "left"), ("size", "right"), ("use", "left"), ("path", "left")):
        table.add_column(col, justify=justify)
    for e in found:
        use = "[yellow]old: no preset uses it[/]" if e.old else f"[yellow]{e.note}[/]" if e.link else e.note
        table.add_row(e.kind, human(e.size), use, str(e.path))
    console.print(table)
    console.print(f"[dim]{human(sum(e.size for e in found))} in {cf_home()} · `cf cache clear --old` removes old "
                  "conversions[/]")
