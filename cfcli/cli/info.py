"""`cf info CLIP`: how a clip was made (the metadata cfcli stores in it, the stream as ffprobe sees it) and the exact
command that makes it again.

The metadata is read as untrusted JSON: every value is checked against what cfcli writes (`FIELDS`), a malformed one
is shown as it is and named, and the remake command is built only from good values. Where the clip does not record
all that decides its pixels (an older cfcli, a live recording), the command is still given with what it can say and a
`not exactly reproducible: …` note for each gap.
"""

import json
import math
import shlex
from decimal import Decimal
from pathlib import Path

import typer

from cfcli.cli.common import JsonOpt, console, friendly
from cfcli.errors import CfError


def _text(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _count(v) -> bool:
    return _whole(v) and v >= 1


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _schedule(v) -> bool:
    return isinstance(v, list) and len(v) >= 1 and all(
        isinstance(e, list) and len(e) in (2, 3) and isinstance(e[0], (int, float)) and not isinstance(e[0], bool)
        and math.isfinite(e[0]) and e[0] >= 0 and _text(e[1]) and (len(e) == 2 or _transition(e[2]) or _step(e[2]))
        for e in v)


def _transition(v) -> bool:
    """A switch's `{"blocks", "kind"}` (`cfcli.pipeline.prompts.Transition`; written out here: `cf info` loads no
    torch)."""
    return isinstance(v, dict) and set(v) == {"blocks", "kind"} and _whole(v["blocks"]) and v["blocks"] <= 64 \
        and v["kind"] in ("linear", "spherical")


def _step(v) -> bool:
    """A switch's `{"step": K}`: it landed before denoising step K ≥ 1 of its block (`--prompt-at TIME@K`)."""
    return isinstance(v, dict) and set(v) == {"step"} and _count(v["step"])


def _loras(v) -> bool:
    """A list of the LoRAs merged: each {file, name, sha256, scale[, preset]} (`cfcli.pipeline.loras.Adapter.facts`)."""
    return isinstance(v, list) and all(
        isinstance(e, dict) and _text(e.get("file")) and _text(e.get("name")) and isinstance(e.get("sha256"), str)
        and len(e["sha256"]) == 64 and isinstance(e.get("scale"), (int, float)) and not isinstance(e["scale"], bool)
        and math.isfinite(e["scale"]) and isinstance(e.get("preset", False), bool) for e in v)


def _lora_schedule(v) -> bool:
    """A live recording's LoRA timeline: [{seconds, latent, loras}], the first entry what it opened with."""
    return isinstance(v, list) and len(v) >= 1 and all(
        isinstance(e, dict) and set(e) == {"seconds", "latent", "loras"} and isinstance(e["seconds"], (int, float))
        and not isinstance(e["seconds"], bool) and math.isfinite(e["seconds"]) and e["seconds"] >= 0
        and _whole(e["latent"]) and _loras(e["loras"]) for e in v)


# What cfcli writes under each key: a check and, for the message, what the value should be.
TEXT, WHOLE, COUNT = (_text, "text"), (_whole, "a whole number ≥ 0"), (_count, "a whole number ≥ 1")
FIELDS = {"prompt": TEXT, "seed": WHOLE, "preset": TEXT, "preset_file": TEXT, "mode": TEXT,
          "steps": (lambda v: isinstance(v, list) and all(_whole(s) for s in v), "a list of whole numbers"),
          "frames": COUNT, "fps": (_number, "a positive number"), "width": COUNT, "height": COUNT, "device": TEXT,
          "dtype": TEXT, "codec": TEXT, "crf": WHOLE, "decoder": TEXT, "quantize": TEXT, "image": TEXT,
          "extended_from": TEXT, "context_frames": COUNT, "new_frames": COUNT,
          "only_new": (lambda v: isinstance(v, bool), "true or false"), "source_seed": WHOLE,
          "motion_fps": (_number, "a positive number"), "live": (lambda v: isinstance(v, bool), "true or false"),
          "max_frames": COUNT, "noise_frames": COUNT, "planned_frames": COUNT, "cfcli": TEXT,
          "prompt_schedule": (_schedule, "a list of [seconds, prompt] pairs (a third item: the transition or step)"),
          "loras": (_loras, "a list of {file, name, sha256, scale}"),
          "lora_schedule": (_lora_schedule, "a list of {seconds, latent, loras}")}

# Metadata keys that map one to one onto a flag of `cf generate` / `cf extend`.
FLAGS = (("seed", "--seed"), ("fps", "--fps"), ("height", "--height"), ("width", "--width"), ("codec", "--codec"),
         ("crf", "--crf"), ("device", "--device"), ("dtype", "--dtype"), ("decoder", "--decoder"),
         ("quantize", "--quantize"), ("image", "--image"), ("noise_frames", "--noise-frames"))
# What decides the pixels beyond the prompt, preset and seed: without it the remake uses today's defaults.
DECIDES = ("device", "dtype", "decoder", "height", "width", "codec")


def register(app: typer.Typer) -> None:
    @app.command("info")
    @friendly
    def info(clip: Path = typer.Argument(..., help="A video file (made by cf or not)."),
             json_out: JsonOpt = False) -> None:
        """Show how a clip was made, and the command that makes it again.

        Examples:

        \b
          cf info outputs/a-fox-running-1234.mp4
          cf info fox.mp4 --json | jq .command
        """
        facts = probe(clip)
        meta = facts["metadata"]
        malformed = facts["malformed"] | check(meta)
        argv, notes = remake(meta, malformed) if meta else (None, [])
        command = shlex.join(argv) if argv else None
        if json_out:
            typer.echo(json.dumps(facts | {"malformed": malformed, "command": command, "notes": notes},
                                  ensure_ascii=False))
            return
        show(clip, facts, malformed, command, notes)


def probe(path: Path) -> dict:
    """The file's video stream (codec, tag, size, frames, rate, colour tags) and cfcli's metadata."""
    import av

    from cfcli.pipeline.containers import format_name
    from cfcli.pipeline.video import META_KEY, read_metadata

    if not path.is_file():
        raise CfError(f"file not found: {path}", "check the path")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise CfError(f"{path} has no video stream")
            s = container.streams.video[0]
            cc = s.codec_context
            frames = s.frames or sum(1 for _ in container.decode(s))
            stream = {"codec": format_name(cc.name), "tag": s.codec_tag.strip("\x00") or None, "width": cc.width,
                      "height": cc.height,
                      "pix_fmt": cc.pix_fmt, "fps": float(s.average_rate or s.guessed_rate or 0), "frames": frames,
                      "color_range": int(cc.color_range), "color_primaries": int(cc.color_primaries),
                      "color_trc": int(cc.color_trc), "colorspace": int(cc.colorspace)}
            meta = read_metadata(container)
            raw = container.metadata.get(META_KEY) or container.metadata.get(META_KEY.upper())
    except av.FFmpegError as exc:
        raise CfError(f"cannot read {path} as a video: {exc}".splitlines()[0]) from exc
    malformed = {}
    if raw and not meta and raw.lstrip().startswith(("{", "[")):  # cfcli writes a JSON object there
        malformed["comment"] = "not a JSON object of cfcli metadata"
    return {"path": str(path), "stream": stream, "metadata": meta, "malformed": malformed}


def check(meta: dict) -> dict[str, str]:
    """Key → what is wrong with its value, for every value that is not what cfcli writes there."""
    bad = {}
    for key, value in meta.items():
        if key in FIELDS and not FIELDS[key][0](value):
            bad[key] = f"expected {FIELDS[key][1]}, got {json.dumps(value, ensure_ascii=False)[:60]}"
    return bad


def seconds_arg(seconds: float) -> str:
    """A time `--prompt-at` parses back to the same float (shortest round-trip digits, never an exponent)."""
    text = format(Decimal(repr(float(seconds))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def remake(meta: dict, malformed: dict[str, str]) -> tuple[list[str] | None, list[str]]:
    """The `cf` command line that makes this clip again from its metadata, and notes: why there is none, or what
    keeps it from being bit-exact. Only well-formed values are used."""
    good = {k: v for k, v in meta.items() if k not in malformed}
    extend = "extended_from" in meta
    need = ["prompt", "seed", "extended_from" if extend else "frames"]
    if "preset" not in good and "preset_file" not in good:
        need.append("preset")
    missing = [k for k in need if k not in good]
    if missing:
        why = ", ".join(f"{k} is {'malformed' if k in meta else 'missing'}" for k in missing)
        return None, [f"no remake command: {why}"]
    if changed := lora_changes(good):
        return None, [f"no remake command: the LoRAs changed at {', '.join(f'{t:g}' for t in changed)} s while the "
                      "video played, which cf generate cannot do (it merges its LoRAs for the whole video); "
                      "lora_schedule says which were merged from when"]
    notes = [f"not exactly reproducible: {k} is malformed, left out" for k in malformed if k in dict(FLAGS)]
    if extend:
        if "planned_frames" in good:
            notes.append(f"the extension was stopped: the remake makes all {good['planned_frames']} frames planned, "
                         f"of which this clip holds the first {good['frames']}")
        argv = ["cf", "extend", good["extended_from"], "--prompt", good["prompt"]]
        argv += ["--frames", str(good["new_frames"])] if "new_frames" in good else []
        argv += ["--context-frames", str(good["context_frames"])] if "context_frames" in good else []
        argv += ["--only-new"] if good.get("only_new") else []
        if not Path(good["extended_from"]).is_absolute():
            notes.append(f"the source clip is recorded as {good['extended_from']}, relative to where cf extend ran: "
                         "run the command there")
    elif good.get("live"):
        argv, more = live_generate(good)
        notes += more
    else:
        argv, more = generate_argv(good, good["frames"], noise_frames=stopped_run(good))
        notes += more
    preset = good.get("preset_file") or good["preset"]
    if "preset_file" in good and not Path(preset).is_file():
        notes.append(f"not exactly reproducible: the preset file {preset} is gone")
    elif "preset_file" not in good:
        from cfcli.presets import shipped_presets

        if preset not in shipped_presets():
            notes.append(f"not reproducible as it is: {preset} is not a shipped preset, and the clip does not record "
                         "the preset file it came from (give it with --preset)")
    argv += ["--preset", str(preset)]
    for key, flag in FLAGS:
        if good.get(key) is not None and not skipped(key, good):
            value = good[key]
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    argv, more = lora_args(argv, good.get("loras") or [])
    notes += more
    if "loras" in malformed:
        notes.append("not exactly reproducible: loras is malformed, left out")
    if "fps" in good and not extend and float(good["fps"]) != int(good["fps"]):
        notes.append(f"not exactly reproducible: --fps takes whole numbers, the clip plays at {good['fps']:g}")
    gaps = [k for k in DECIDES if k not in good and not (extend and k in ("height", "width"))]
    if gaps:
        notes.append(f"not exactly reproducible: the clip does not record its {', '.join(gaps)} (the remake uses "
                     "today's defaults)")
    if "image" in good and not Path(good["image"]).is_absolute():
        notes.append(f"the start picture is recorded by name only ({good['image']}): run the command where it is")
    return argv, notes


def lora_changes(meta: dict) -> list[float]:
    """The times a live recording's LoRAs changed. Even one landing after its last frame counts: with the rolling
    sampler the blocks in flight, shown before it, finished under the new weights."""
    return [e["seconds"] for e in (meta.get("lora_schedule") or [])[1:]]


def lora_args(argv: list[str], loras: list[dict]) -> tuple[list[str], list[str]]:
    """`argv` with a `--lora FILE:SCALE` for each LoRA given on the command line (the preset's come with it), and a
    note for each whose file is not where it was."""
    from cfcli.lora.spec import LoraSpec, is_hub

    notes = []
    for lora in loras:
        if lora.get("preset"):
            continue
        argv = argv + ["--lora", LoraSpec(lora["file"], float(lora["scale"])).arg]
        if not is_hub(lora["file"]) and not Path(lora["file"]).is_file():
            notes.append(f"not exactly reproducible: the LoRA {lora['file']} is gone (sha256 {lora['sha256']})")
    return argv, notes


def generate_argv(meta: dict, frames: int, until: float | None = None,
                  noise_frames: int | None = None) -> tuple[list[str], list[str]]:
    """`cf generate PROMPT --frames N` with the prompt schedule as `--prompt-at` pairs (those before `until`
    seconds: a switch after the end of a recording never showed)."""
    prompt = meta["prompt"]
    dash = prompt.startswith("-")  # would be taken for an option: given after `--`, at the end
    argv, notes = ["cf", "generate", *([] if dash else [prompt]), "--frames", str(frames)], []
    argv += ["--noise-frames", str(noise_frames)] if noise_frames is not None else []
    for seconds, text, *landing in (meta.get("prompt_schedule") or [])[1:]:
        if until is not None and seconds >= until:
            continue
        if text.startswith("-"):
            notes.append(f"not exactly reproducible: the switch prompt {text[:30]!r} starts with '-', which "
                         "--prompt-at cannot take (use a --prompt-schedule file)")
            continue
        argv += ["--prompt-at", seconds_arg(seconds) + landing_arg(landing[0] if landing else {}), text]
    return argv + (["--", prompt] if dash else []), notes


def landing_arg(landing: dict) -> str:
    """How a switch lands, as `--prompt-at`'s TIME ends: `~N[:slerp]` for a transition, `@K` before step K."""
    if landing.get("step"):
        return f"@{landing['step']}"
    if landing.get("blocks"):
        return f"~{landing['blocks']}" + (":slerp" if landing["kind"] == "spherical" else "")
    return ""


def stopped_run(meta: dict) -> int | None:
    """The `--noise-frames` of a clip: the run it was cut from when it was stopped early (`planned_frames`, or the
    `noise_frames` it was made with)."""
    run = meta.get("noise_frames") or meta.get("planned_frames")
    return run if run is not None and run > meta["frames"] else None


def live_generate(meta: dict) -> tuple[list[str], list[str]]:
    """A live recording: its frames are the first of a run as long as the session's limit (`max_frames`), whose
    noise and cache were drawn for that whole length; `--noise-frames` makes them so again."""
    notes = []
    if "context_frames" in meta:
        notes.append("not reproducible by cf generate: the live run continued an uploaded clip, which the "
                     "recording does not keep")
    fps = float(meta.get("fps") or 16)
    longer = meta.get("max_frames", 0) > meta["frames"]
    argv, more = generate_argv(meta, meta["frames"], meta["frames"] / fps, meta["max_frames"] if longer else None)
    notes += more
    if "max_frames" not in meta:
        notes.append("not exactly reproducible: the recording does not say how long its live run could go "
                     "(max_frames), which decides its noise; this command draws it for --frames only")
    return argv, notes


def skipped(key: str, meta: dict) -> bool:
    """Flags `cf extend` does not take: its size is the preset's, its frame rate the clip's when not whole; a
    generate frame rate that is not whole (`--fps` takes whole numbers); `--noise-frames` for live (placed by
    `live_generate`)."""
    if key == "noise_frames" and "extended_from" not in meta:  # placed by `generate_argv`
        return True
    if key == "fps" and float(meta["fps"]) != int(meta["fps"]):
        return True
    if "extended_from" not in meta:
        return False
    return key in ("height", "width", "image", "noise_frames")


def show(path: Path, facts: dict, malformed: dict[str, str], command: str | None, notes: list[str]) -> None:
    from rich.markup import escape

    s, meta = facts["stream"], facts["metadata"]
    tag = f" ({s['tag']})" if s["tag"] else ""
    console.print(f"[bold]{escape(str(path))}[/]: {s['codec']}{tag} {s['width']}×{s['height']} {s['pix_fmt']}, "
                  f"{s['frames']} frames at {s['fps']:g} fps ({s['frames'] / s['fps'] if s['fps'] else 0:.2f}s)")
    if "comment" in malformed:
        console.print(f"[yellow]malformed:[/] the comment tag: {malformed['comment']}")
    if not meta:
        if "comment" not in malformed:
            console.print("[dim]no cfcli metadata: not made by cf (or a GIF, which has no place for it)[/]")
        return
    width = max(len(k) for k in meta)
    for key, value in meta.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        bad = f"  [yellow]malformed: {escape(malformed[key])}[/]" if key in malformed else ""
        console.print(f"  {escape(key):<{width}}  {escape(str(shown))}{bad}", highlight=False)
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    if command:
        console.print("[bold]remake:[/]")
        typer.echo(command)
