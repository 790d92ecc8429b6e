"""The notes a job shows before its video: the memory plan, partial files of killed runs, a run on the CPU."""

from pathlib import Path

from rich.markup import escape

from cfcli.jobs.view import View, note


def show_plan(view: View, plan) -> None:
    """Say which memory plan a GPU run uses (`cfcli.pipeline.memory`)."""
    if plan is not None and not view.quiet:
        view.line(f"[dim]memory plan: {escape(plan.describe())}[/]")


def report_stale(view: View, outputs) -> None:
    """Partial files that killed runs left hidden beside these outputs: put in place as `NAME.partial.EXT` and said
    (`cfcli.pipeline.outputs.adopt_stale`), so nothing a run made stays out of sight."""
    from cfcli.pipeline.outputs import adopt_stale

    for folder in dict.fromkeys(Path(p).parent for p in outputs):
        for kept in adopt_stale(folder):
            view.line(f"[yellow]kept[/] the partial video of a run that was killed: {escape(str(kept))}")


def cpu_notice(view: View, device, asked: str | None) -> None:
    """Say so when generation runs on the CPU: it works, at a small fraction of a GPU's speed (the last
    `cf bench --device cpu` on this machine says how small)."""
    if device.type != "cpu":
        return
    why = "no CUDA GPU found" if asked is None else f"--device {asked}"
    last = recorded_bench("cpu")
    speed = (f"`cf bench` measured {last['fps_end_to_end']:.2g} frames/s here ({last['preset']}, "
             f"{last['width']}×{last['height']})" if last else "`cf bench --device cpu` measures this machine")
    note(view, f"running on the CPU ({why}): far slower than a GPU; {speed}")


def bench_record(device_type: str) -> Path:
    from cfcli.paths import cf_home

    return cf_home() / "bench" / f"last-{device_type}.json"


def recorded_bench(device_type: str) -> dict | None:
    """The last `cf bench` result on this device type (`cfcli.cli.progress.record_bench` keeps it)."""
    import json

    try:
        data = json.loads(bench_record(device_type).read_text())
        return data if isinstance(data.get("fps_end_to_end"), float) else None
    except (OSError, ValueError, AttributeError):
        return None
