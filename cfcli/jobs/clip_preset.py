"""The preset `cf extend` continues a clip with when nothing else names one: the clip's own, as its metadata records
it (a module of its own, so `cf extend` reads a clip's metadata without importing another command)."""

from pathlib import Path

from collections.abc import Callable

from cfcli.errors import CfError


def _text(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


def extend_preset(clip: Path, preset: str | None, mode: str | None, steps: int | None,
                  note: Callable[[str], None] = lambda text: None) -> str | None:
    """The preset `cf extend` uses: `--preset` as given; when neither --preset/--mode/--steps nor CF_PRESET/the config
    file names one, the clip's own (its preset file, else its shipped preset), said in a `note`. A recorded preset that
    is gone or cannot extend clips falls back to the default, with a note saying why; a clip cfcli cannot read is
    left to `cf extend`'s own checks."""
    from cfcli.config import read_config, setting

    if preset is not None or mode is not None or steps is not None or setting("preset", read_config()) is not None:
        return preset
    meta = clip_metadata(Path(clip))
    name, path = meta.get("preset"), meta.get("preset_file")
    chosen = path if _text(path) and Path(path).is_file() else name if _text(name) else None
    if chosen is None:
        if _text(path) or name is not None:
            note(f"the clip's preset ({path or name}) is not recorded in a usable form; extending with the "
                 "default framewise")
        return None
    from cfcli.pipeline.samplers import sampler_kind
    from cfcli.presets import load_preset

    try:
        p = load_preset(chosen)
    except CfError:
        where = f" ({path})" if _text(path) and path != chosen else ""
        note(f"the clip was made with the preset {chosen}{where}, which no longer exists; extending with the default "
             "framewise (--preset or --mode to choose)")
        return None
    if not sampler_kind(p).starts_from_frames:
        note(f"the clip was made with {p.name}, which cannot extend clips; extending with the default framewise")
        return None
    note(f"extending with the clip's own preset, {chosen} (--preset or --mode to choose another)")
    return str(chosen)


def clip_metadata(path: Path) -> dict:
    """cfcli's metadata of a clip, read from its container header only ({} for a file that is not a readable video:
    `cf extend` refuses it with its own message)."""
    import av

    from cfcli.pipeline.video import read_metadata

    try:
        with av.open(str(path)) as container:
            return read_metadata(container)
    except (OSError, av.FFmpegError):
        return {}
