"""`cf download` and `cf models`: fetch exactly the files a preset names, verified and converted; list what is ready.

Files go into the standard Hugging Face cache (HF_HOME / HF_HUB_CACHE, from HF_ENDPOINT with HF_TOKEN); a `.pt`
generator checkpoint is then converted once into a bf16 safetensors file in cfcli's cache (CF_HOME). The work is in
`cfcli.hub` and `cfcli.convert`; this module asks, draws progress and reports.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.table import Table

from cfcli import converted_check, hub
from cfcli.cli.common import ModeOpt, PresetOpt, QuietOpt, StepsOpt, console, friendly
from cfcli.errors import CfError
from cfcli.paths import cf_home, cf_home_variable, hf_cache_variable, usable_dir
from cfcli.presets import Preset, WeightRef, load_preset, preset_name, shipped_presets

stdout = Console(highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("download", short_help="Download (and convert) a preset's weights.")
    @friendly
    def download(
        mode: ModeOpt = None,
        steps: StepsOpt = None,
        preset: PresetOpt = None,
        all_: bool = typer.Option(False, "--all", help="Every shipped preset."),
        dry_run: bool = typer.Option(False, "--dry-run", help="List files, sizes and what is cached; fetch "
                                     "nothing (asks the Hub for the listing; HF_HUB_OFFLINE=1: shipped sizes)."),
        list_: bool = typer.Option(False, "--list", help="List the shipped presets and whether they are ready."),
        verify: bool = typer.Option(False, "--verify", help="Hash cached files again, even those checked before."),
        decoder: str = typer.Option(None, "--decoder", metavar="taehv",
                                    help="Also fetch the TAEHV tiny decoder (`--decoder taehv`; alone: only it)."),
        lora: list[str] = typer.Option(None, "--lora", metavar="OWNER/REPO/FILE",
                                       help="Also fetch a LoRA from the Hub (repeatable; alone: only them). A "
                                            "preset's own LoRAs come with it."),
        quiet: QuietOpt = False,
    ) -> None:
        """Download the weights a preset needs (only those files), verified, then convert the generator once.

        Examples:

        \b
          cf download
          cf download --mode chunkwise --dry-run
          cf download --all --decoder taehv
          cf download --lora someone/wan-loras/ink.safetensors
        """
        if list_:
            show_models(as_json=False)
            return
        if decoder is not None:
            if decoder != "taehv":
                raise CfError(f"--decoder {decoder} has nothing to download", "use --decoder taehv (the Wan VAE comes "
                              "with every preset)")
            if not dry_run:
                download_taehv(quiet, force=verify)
            if not (all_ or preset or mode or steps or lora):
                return
        if all_ and (preset or mode or steps):
            raise CfError("--all cannot be combined with --preset/--mode/--steps", "use one or the other")
        alone = lora and not (all_ or preset or mode or steps or decoder)  # only the LoRAs
        names = [] if alone else shipped_presets() if all_ else [preset_name(preset, mode, steps)]
        presets = [load_preset(n, models=False) for n in names]
        try:
            run_download(presets, dry_run=dry_run, recheck=verify, quiet=quiet, loras=lora_refs(presets, lora or ()))
        except KeyboardInterrupt:
            console.print("[yellow]stopped:[/] finished files and the partial download are kept; run the same "
                          "command to resume where it stopped")
            raise typer.Exit(130) from None

    @app.command("models", short_help="List the shipped presets and what is downloaded.")
    @friendly
    def models(json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout.")) -> None:
        """List the shipped presets: whether each is ready to run offline, and its size on disk."""
        show_models(as_json=json_out)


# --- cf download ------------------------------------------------------------------------------------------------------

@dataclass
class Job:
    """The de-duplicated work for a set of presets: Hub files to fetch and checkpoints to convert."""

    files: dict[tuple[str, str, str], hub.HubFile] = field(default_factory=dict)
    used_by: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)
    conversions: dict[Path, hub.Need] = field(default_factory=dict)
    converted: list[hub.Need] = field(default_factory=list)  # already converted: their `.pt` is not needed

    @classmethod
    def of(cls, needs: list[hub.Need], recheck: bool = False, loras: list[hub.HubFile] = ()) -> Job:
        """`recheck` (`--verify`) hashes converted files too; one that fails is deleted and made again. `loras`: LoRA
        files to fetch as well."""
        job, checked = cls(), {}
        for f in loras:
            key = (f.repo, f.commit, f.path)
            job.files[key] = f
            job.used_by.setdefault(key, set()).add("LoRA")
        for need in needs:
            if need.satisfied_by_conversion() and recheck:
                ok = checked.setdefault(need.converted, converted_check.verify(need.converted))
                if not ok:
                    console.print(f"[yellow]damaged:[/] {need.converted} does not match its digest; converting again")
                    converted_check.discard(need.converted)
            if need.satisfied_by_conversion():
                job.converted.append(need)
                continue
            if need.converted is not None:
                job.conversions.setdefault(need.converted, need)
            for f in need.files:
                key = (f.repo, f.commit, f.path)
                job.files[key] = f
                job.used_by.setdefault(key, set()).add(need.preset.name)
        return job

    def to_download(self) -> list[hub.HubFile]:
        return [f for f in self.files.values() if not f.cached()]


def lora_refs(presets: list[Preset], given: list[str]) -> list[WeightRef]:
    """The Hub files of the presets' LoRAs and of `--lora` (a local file has nothing to fetch: said, and left out)."""
    from cfcli.lora.spec import parse

    specs = [*(s for p in presets for s in p.loras), *(parse(text) for text in given)]
    for spec in specs:
        if hub.lora_ref(spec) is None:
            if not Path(spec.source).is_file():
                raise CfError(f"--lora {spec.source} is neither a file here nor a Hub file owner/repo/path",
                              "give a Hub file like someone/wan-loras/style.safetensors")
            console.print(f"[dim]{escape(spec.source)} is a local file: nothing to download[/]")
    return list(dict.fromkeys(ref for s in specs if (ref := hub.lora_ref(s)) is not None))


def run_download(presets: list[Preset], *, dry_run: bool, recheck: bool, quiet: bool,
                 loras: list[WeightRef] = ()) -> None:
    """Fetch, verify and convert what `presets` need, and the Hub `loras` (`WeightRef`s)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        offline_check(presets, dry_run, loras)
        return
    if dry_run:  # said before the network is touched: a dry run fetches nothing, but it does ask the Hub
        console.print("[dim]dry run: asking the Hub for the exact files and sizes (nothing is downloaded); without "
                      "the network: HF_HUB_OFFLINE=1 cf download --dry-run (what is cached, and sizes from the "
                      "manifest shipped with cfcli)[/]")
    if not dry_run:
        usable_dir(hub.hub_cache(), hf_cache_variable())
        usable_dir(cf_home(), cf_home_variable())
    with console.status("asking the Hub which files are needed …") if _live(quiet) else nullcontext():
        try:
            needs, lora_files = hub.plan(presets), hub.plan_files(loras)
        except CfError as exc:
            if not (dry_run and unreachable(exc)):
                raise
            console.print(f"[yellow]note:[/] {exc.message}; sizes below are from the manifest shipped with cfcli")
            show_manifest(presets)
            return
    job = Job.of(needs, recheck=recheck, loras=lora_files)
    if dry_run:
        show_plan(job)
        return
    fresh = job.to_download()
    # The conversion estimate assumes a float32 source (bf16 halves it); conversion checks the exact size itself.
    hub.check_space({hub.hub_cache(): sum(f.size for f in fresh),
                     hub.converted_dir(): sum(n.files[0].size // 2 for n in job.conversions.values())})
    fetch_all(job, recheck=recheck, quiet=quiet)
    convert_all(job, quiet=quiet)
    for need in job.converted:
        f = need.files[0]
        hub.record_conversion(need.ref, need.preset.use_ema, f.etag, f.commit)
        if not quiet:
            console.print(f"[green]✓[/] {f.label}  [dim]converted before → {need.converted.name}; "
                          "the checkpoint itself is not needed[/]")
    for p in presets:
        report_ready(p, quiet)


def fetch_all(job: Job, *, recheck: bool, quiet: bool) -> None:
    files = list(job.files.values())
    total = sum(f.size for f in job.to_download())
    with _hf_logs_to_console(), DownloadView(total, enabled=_live(quiet)) as view:
        for f in files:
            hub.fetch(f, view, recheck=recheck)
            how = "downloaded" if view.downloaded else "cached"
            view.done(f)
            if not quiet:
                check = "sha256" if f.sha256 else "git sha1"
                console.print(f"[green]✓[/] {f.label}  [dim]{hub.human(f.size)} · {how} · {check} ok[/]")


def convert_all(job: Job, *, quiet: bool) -> None:
    from cfcli.convert import convert_generator

    for target, need in job.conversions.items():
        if converted_check.is_whole(target):
            continue
        converted_check.discard(target)  # a truncated file from an earlier run
        f = need.files[0]
        source = f.pointer
        with Progress(TextColumn("converting {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("tensors"), console=console, transient=True, disable=not _live(quiet)) as bar:
            task = bar.add_task(f.path, total=None)
            convert_generator(source, target, need.preset.use_ema,
                              metadata={"repo": f.repo, "file": f.path, "commit": f.commit, "sha256": f.etag},
                              on_tensor=lambda done, total: bar.update(task, completed=done, total=total))
        hub.record_conversion(need.ref, need.preset.use_ema, f.etag, f.commit)
        if not quiet:
            size = hub.human(target.stat().st_size)
            console.print(f"[green]✓[/] converted {f.path} → {target}  [dim]{size} bf16 safetensors "
                          f"({'EMA' if need.preset.use_ema else 'non-EMA'} weights)[/]")


def download_taehv(quiet: bool, force: bool) -> None:
    from cfcli.taehv_weights import fetch_taehv, taehv_path

    if taehv_path().is_file() and not force:
        if not quiet:
            console.print(f"[green]✓[/] TAEHV decoder ready ({taehv_path()})")
        return
    with Progress(TextColumn("TAEHV taew2_1.pth"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, disable=not _live(quiet)) as bar:
        task = bar.add_task("taehv", total=None)
        path = fetch_taehv(lambda done, total: bar.update(task, completed=done, total=total), force=force)
    if not quiet:
        console.print(f"[green]✓[/] TAEHV decoder ready ({path}): use --decoder taehv")


def report_ready(p: Preset, quiet: bool) -> None:
    status = hub.local_status(p)
    if not status.ready:
        raise CfError(f"{p.name} is still missing {', '.join(status.missing)} after the download",
                      f"run `{hub.download_command(p)}` again")
    if not quiet:
        console.print(f"[bold green]ready:[/] {p.name}  [dim]{hub.human(status.size)} on disk · works offline[/]")


def offline_check(presets: list[Preset], dry_run: bool, loras: list[WeightRef] = ()) -> None:
    """HF_HUB_OFFLINE: nothing can be fetched, but what is here can be reported."""
    for ref in loras:
        if hub.cached_path(ref) is None:
            raise CfError(f"HF_HUB_OFFLINE is set and the LoRA {ref.label} is not downloaded",
                          f"unset HF_HUB_OFFLINE and run `cf download --lora {ref.label}`")
        console.print(f"[green]✓[/] LoRA {escape(ref.label)} cached; HF_HUB_OFFLINE is set, so it was not checked "
                      "against the Hub")
    statuses = [hub.local_status(p) for p in presets]
    missing = [s for s in statuses if not s.ready]
    if dry_run:
        show_local(statuses)
        show_manifest(presets)
    if missing and not dry_run:
        s = missing[0]
        raise CfError(f"HF_HUB_OFFLINE is set and {s.preset.name} is missing {', '.join(s.missing)}",
                      f"unset HF_HUB_OFFLINE and run `{hub.download_command(s.preset)}`")
    if not missing:
        for s in statuses:
            console.print(f"[green]✓[/] {s.preset.name} ready ({hub.human(s.size)}); HF_HUB_OFFLINE is set, so it "
                          "was not checked against the Hub")


def unreachable(exc: CfError) -> bool:
    """Whether the Hub could not be reached at all (no network, DNS, refused, timeouts), not what it answered."""
    return isinstance(exc.__cause__, (OSError, *hub.network_errors()))


def show_manifest(presets: list[Preset]) -> None:
    """What each preset downloads, by the shipped manifest (the Hub not asked): ≈ marks sizes not from the Hub."""
    from cfcli import manifest

    table = Table(title="files the preset needs (shipped manifest)", title_justify="left", box=None, pad_edge=False)
    for col, just in (("file", "left"), ("size", "right"), ("for", "left")):
        table.add_column(col, justify=just, overflow="fold")
    items, used_by = {}, {}
    for p in presets:
        for item in manifest.listed(p):
            items[item.label] = item
            used_by.setdefault(item.label, []).append(p.name)
    for label, item in items.items():
        size = "?" if item.size is None else ("≈ " if item.approx else "") + hub.human(item.size)
        table.add_row(label, size, ", ".join(used_by[label]))
    stdout.print(table)
    known, exact = manifest.total(list(items.values()))
    more = "" if all(i.size is not None for i in items.values()) else " + files of unknown size"
    stdout.print(f"to download at most: {'' if exact else '≈ '}{hub.human(known)}{more} (shared files counted once; "
                 "cached ones above are not fetched again)")


def show_plan(job: Job) -> None:
    table = Table(title="files the preset needs", title_justify="left", box=None, pad_edge=False)
    for col, just in (("file", "left"), ("size", "right"), ("status", "left"), ("for", "left")):
        table.add_column(col, justify=just)
    for key, f in job.files.items():
        status = ("cached, verified" if f.verified() else "cached") if f.cached() else _pending(f)
        table.add_row(f.label, hub.human(f.size), status, ", ".join(sorted(job.used_by[key])))
    for need in job.converted:
        f = need.files[0]
        table.add_row(f.label, hub.human(f.size), "not needed: converted", need.preset.name)
    for target, need in job.conversions.items():
        done = converted_check.is_whole(target)
        status = "converted" if done else "[yellow]convert after download[/]"
        table.add_row(f"→ {target}", "", status, need.preset.name)
    stdout.print(table)
    fresh = job.to_download()
    total = sum(f.size for f in job.files.values())
    stdout.print(f"to download: {hub.human(sum(f.size for f in fresh))} in {len(fresh)} file(s) of "
                 f"{hub.human(total)} needed; {hub.human(hub.free_space(hub.hub_cache()))} free in {hub.hub_cache()}")


def _pending(f: hub.HubFile) -> str:
    from cfcli.resume import partial_path

    partial = partial_path(f.blob)
    done = partial.stat().st_size if partial.is_file() else 0
    return f"[yellow]download[/] (resumes at {hub.human(done)})" if 0 < done <= f.size else "[yellow]download[/]"


# --- cf models --------------------------------------------------------------------------------------------------------

def show_models(as_json: bool) -> None:
    statuses = [hub.local_status(load_preset(n, models=False)) for n in shipped_presets()]
    if as_json:
        typer.echo(json.dumps([{"name": s.preset.name, "ready": s.ready, "missing": s.missing, "bytes": s.size,
                                "converted": s.converted} for s in statuses]))
        return
    show_local(statuses)


def show_local(statuses: list[hub.LocalStatus]) -> None:
    table = Table(box=None, pad_edge=False)
    for col, just in (("preset", "left"), ("status", "left"), ("on disk", "right"), ("", "left")):
        table.add_column(col, justify=just)
    for s in statuses:
        if s.ready:
            status = "[green]ready[/]" + ("" if s.converted or not hub.needs_conversion(s.preset.weights["generator"])
                                          else " (not converted)")
            table.add_row(s.preset.name, status, hub.human(s.size), f"[dim]{s.preset.summary}[/]")
        else:
            table.add_row(s.preset.name, f"[red]missing {', '.join(s.missing)}[/]", hub.human(s.size),
                          f"[dim]{hub.download_command(s.preset)}[/]")
    stdout.print(table)
    seen: dict[Path, int] = {}
    for s in statuses:
        for p in s.paths.values():
            if p is not None:
                seen[p.resolve()] = hub.disk_size(p)
    stdout.print(f"[dim]{hub.human(sum(seen.values()))} in all (shared files counted once) · "
                 f"Hugging Face cache {hub.hub_cache()} · converted {hub.converted_dir()}[/]")


# --- drawing ----------------------------------------------------------------------------------------------------------

class DownloadView(hub.Events):
    """Rich progress: the current file and the total, in bytes, with speed and ETA."""

    def __init__(self, total: int, enabled: bool):
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                            TimeRemainingColumn(), console=console, transient=True, disable=not enabled)
        self.total_task = self.bar.add_task("[bold]total", total=total or None)
        self.file_task = self.bar.add_task("", total=None, visible=False)
        self.counted = 0  # bytes of the current attempt already in the total
        self.hashing = False
        self.downloaded = False

    def __enter__(self) -> DownloadView:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        self.bar.__exit__(*exc)
        return False

    def start(self, f: hub.HubFile, attempt: int) -> None:
        self.bar.advance(self.total_task, -self.counted)  # a failed attempt's bytes are gone
        self.counted, self.hashing = 0, False
        desc = f.path if attempt == 0 else f"{f.path} (try {attempt + 1})"
        self.bar.reset(self.file_task, total=f.size, description=desc, visible=True)

    def advance(self, n: int) -> None:
        self.bar.advance(self.file_task, n)
        if not self.hashing:
            self.counted += n
            self.downloaded = True
            self.bar.advance(self.total_task, n)

    def verifying(self, f: hub.HubFile) -> None:
        self.hashing = True
        self.bar.reset(self.file_task, total=f.size, description=f"checking {f.path}")

    def retry(self, f: hub.HubFile, reason: str, wait: float) -> None:
        console.print(f"[yellow]retrying[/] {f.label}: {reason}; next try in {wait:.0f}s")

    def done(self, f: hub.HubFile) -> None:
        self.counted, self.downloaded = 0, False
        self.bar.update(self.file_task, visible=False)


class _ConsoleHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        text = " ".join(line.strip() for line in record.getMessage().splitlines() if line.strip())
        cut = re.match(r"Error while downloading from \S+?: (.*?) Trying to resume download", text)
        if cut:  # huggingface_hub resumes a dropped transfer itself (Range request); say so briefly
            text = f"connection lost ({cut.group(1)}); resuming where it stopped"
        console.print(f"[dim]hub: {escape(text)}[/]", highlight=False)


@contextmanager
def _hf_logs_to_console():
    """huggingface_hub's warnings (e.g. "connection lost … resuming") as short lines above our progress bars."""
    log = logging.getLogger("huggingface_hub")
    saved = log.handlers[:], log.propagate
    log.handlers, log.propagate = [_ConsoleHandler(logging.WARNING)], False
    try:
        yield
    finally:
        log.handlers, log.propagate = saved


def _live(quiet: bool) -> bool:
    """Live bars only on a terminal; logs and pipes get the one line per finished file instead."""
    return not quiet and console.is_terminal
