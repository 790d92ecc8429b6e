"""`cf info CLIP`: how a clip was made (the metadata cfcli stores in it, the stream as ffprobe sees it) and the exact
command that makes it again."""

import json
import shlex
from pathlib import Path

import typer

from cfcli.cli.common import JsonOpt, console, friendly
from cfcli.errors import CfError

# Metadata keys that map one to one onto a flag of `cf generate` / `cf extend`.
FLAGS = (("seed", "--seed"), ("fps", "--fps"), ("height", "--height"), ("width", "--width"), ("codec", "--codec"),
         ("crf", "--crf"), ("device", "--device"), ("dtype", "--dtype"), ("decoder", "--decoder"),
         ("quantize", "--quantize"), ("image", "--image"))


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
        command = shlex.join(remake(meta)) if meta.get("prompt") else None
        if json_out:
            typer.echo(json.dumps(facts | {"command": command}, ensure_ascii=False))
            return
        show(clip, facts, command)


def probe(path: Path) -> dict:
    """The file's video stream (codec, tag, size, frames, rate, colour tags) and cfcli's metadata."""
    import av

    from cfcli.pipeline.containers import format_name
    from cfcli.pipeline.video import read_metadata

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
    except av.FFmpegError as exc:
        raise CfError(f"cannot read {path} as a video: {exc}".splitlines()[0]) from exc
    return {"path": str(path), "stream": stream, "metadata": meta}


def remake(meta: dict) -> list[str]:
    """The `cf` command line that makes this clip again from its metadata (same device and dtype: same pixels)."""
    if "extended_from" in meta:
        argv = ["cf", "extend", meta["extended_from"], "--prompt", meta["prompt"]]
        argv += ["--frames", str(meta["new_frames"])] if "new_frames" in meta else []
        argv += ["--context-frames", str(meta["context_frames"])] if "context_frames" in meta else []
        argv += ["--only-new"] if meta.get("only_new") else []
    else:
        argv = ["cf", "generate", meta["prompt"], "--frames", str(meta["frames"])]
        for seconds, text in (meta.get("prompt_schedule") or [])[1:]:
            argv += ["--prompt-at", f"{seconds:g}", text]
    argv += ["--preset", str(meta.get("preset_file") or meta["preset"])]
    for key, flag in FLAGS:
        if meta.get(key) is not None and not skipped(key, meta):
            argv += [flag, f"{meta[key]:g}" if isinstance(meta[key], float) else str(meta[key])]
    return argv


def skipped(key: str, meta: dict) -> bool:
    """Flags `cf extend` does not take: its size is the preset's, its frame rate the clip's when not whole."""
    if "extended_from" not in meta:
        return False
    return key in ("height", "width", "image") or (key == "fps" and float(meta["fps"]) != int(meta["fps"]))


def show(path: Path, facts: dict, command: str | None) -> None:
    from rich.markup import escape

    s, meta = facts["stream"], facts["metadata"]
    tag = f" ({s['tag']})" if s["tag"] else ""
    console.print(f"[bold]{escape(str(path))}[/]: {s['codec']}{tag} {s['width']}×{s['height']} {s['pix_fmt']}, "
                  f"{s['frames']} frames at {s['fps']:g} fps ({s['frames'] / s['fps'] if s['fps'] else 0:.2f}s)")
    if not meta:
        console.print("[dim]no cfcli metadata: not made by cf (or a GIF, which has no place for it)[/]")
        return
    width = max(len(k) for k in meta)
    for key, value in meta.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        console.print(f"  {key:<{width}}  {escape(str(shown))}", highlight=False)
    if command:
        console.print("[bold]remake:[/]")
        typer.echo(command)
