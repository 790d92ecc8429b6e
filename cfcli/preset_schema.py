"""The checks a preset's values must pass before anything is built from them: types, ranges, known keys at every level.

Every problem is collected in one pass and reported together, so a preset with three mistakes needs one fix round.
YAML booleans are not numbers here (`height: true` is refused), and a float is not an int (`height: 48.0` is refused).
`architecture` parts are checked against the model config dataclasses' own fields and types, so a new field there is
accepted without a change here (the caller passes them in: importing them imports torch).
"""

import math
import typing

TRAIN_STEPS = 1000  # the flow schedule's table length (cfcli.pipeline.schedule.TRAIN_STEPS; that module pulls torch)
WEIGHT_KEYS = ("repo", "file", "folder", "path", "revision")
LORA_KEYS = ("repo", "file", "path", "scale")  # a `loras:` entry: {repo, file, scale} or {path, scale}
ITEM_NAMES = {int: "positive whole numbers", float: "numbers", bool: "true/false values"}
VAE_FAMILY_KEY = "family"  # `architecture.vae.family`: which VAE module and config class (cfcli.models.build)


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


class Problems(list):
    """The messages found so far; `add(key, expected, value)` words one the same way every time."""

    def add(self, key: str, expected: str, value: object) -> None:
        self.append(f"{key} must be {expected}, got {_show(value)}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


def check_steps(data: dict, key: str, problems: Problems) -> None:
    steps = data.get(key)
    if key == "first_block_steps" and steps is None:
        return
    want = f"a list of timesteps in 1…{TRAIN_STEPS}, strictly decreasing (e.g. [1000, 750, 500, 250])"
    if not isinstance(steps, list) or not steps or not all(is_int(s) for s in steps):
        problems.add(key, want, steps)
    elif not all(1 <= s <= TRAIN_STEPS for s in steps) or any(a <= b for a, b in zip(steps, steps[1:])):
        problems.add(key, want, steps)


def check_scalars(data: dict, block_frames: int, problems: Problems) -> None:
    """Everything at the top level but `weights`, `architecture`, `steps` and the size multiple."""
    for key in ("name", "summary"):
        if not isinstance(data.get(key), str) or (key == "name" and not data[key].strip()):
            problems.add(key, "a non-empty string" if key == "name" else "a string", data.get(key))
    shift = data.get("timestep_shift")
    if not is_number(shift) or shift <= 0:
        problems.add("timestep_shift", "a positive number (e.g. 5.0)", shift)
    if not isinstance(data.get("use_ema"), bool):
        problems.add("use_ema", "true or false", data.get("use_ema"))
    if not is_number(data.get("fps")) or not 0 < data["fps"] <= 1000:
        problems.add("fps", "a frame rate above 0 (e.g. 16)", data.get("fps"))
    for key in ("frames", "horizon_frames"):
        if key in data and (not is_int(data[key]) or data[key] < 1):
            problems.add(key, "a whole number ≥ 1", data[key])
    window = data.get("local_attn_frames")
    if not is_int(window) or (window != -1 and window < block_frames):
        problems.add("local_attn_frames", f"-1 (the whole trained horizon) or a whole number ≥ {block_frames}",
                     window)
        window = None
    horizon = data.get("horizon_frames", 21)
    limit = window if window not in (None, -1) else horizon if is_int(horizon) and horizon >= 1 else None
    sink = data.get("sink_frames")
    if not is_int(sink) or sink < 0 or (limit is not None and sink >= limit):
        problems.add("sink_frames", "a whole number ≥ 0" + (f" and below the {limit}-frame attention window"
                                                             if limit is not None else ""), sink)


def check_size(data: dict, multiple: int, problems: Problems) -> None:
    for key in ("height", "width"):
        v = data.get(key)
        if not is_int(v) or v <= 0 or v % multiple:
            what = f"a positive multiple of {multiple}" if multiple > 1 else "a positive whole number"
            problems.add(key, f"{what} (e.g. 480 × 832)", v)


def check_weights(weights: object, problems: Problems, roles: tuple[str, ...]) -> None:
    if not isinstance(weights, dict):
        problems.add("weights", f"a mapping with {', '.join(roles)}", weights)
        return
    if set(weights) != set(roles):
        extra, missing = sorted(set(map(str, weights)) - set(roles)), sorted(set(roles) - set(weights))
        problems.append(f"weights must name exactly {', '.join(roles)}"
                        + (f" (unknown: {', '.join(extra)})" if extra else "")
                        + (f" (missing: {', '.join(missing)})" if missing else ""))
    for role in roles:
        if role in weights:
            check_weight_entry(weights[role], f"weights.{role}", problems)


def check_weight_entry(entry: object, where: str, problems: Problems) -> None:
    shape = "{repo, file}, {repo, folder} or {path}"
    if not isinstance(entry, dict):
        problems.add(where, shape, entry)
        return
    unknown = sorted(str(k) for k in entry if k not in WEIGHT_KEYS)
    if unknown:
        problems.append(f"{where}: unknown keys {', '.join(unknown)} (known: {', '.join(WEIGHT_KEYS)})")
    for key in WEIGHT_KEYS:
        if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
            problems.add(f"{where}.{key}", "a non-empty string (quote numbers and hashes)", entry[key])
    if "path" in entry:
        if set(entry) & {"repo", "file", "folder", "revision"}:
            problems.append(f"{where}: `path` cannot be combined with repo/file/folder/revision")
    elif "repo" not in entry or ("file" in entry) == ("folder" in entry):
        problems.append(f"{where} must be {shape}")
    elif isinstance(entry["repo"], str) and entry["repo"].count("/") != 1:
        problems.add(f"{where}.repo", "a Hub repo id like owner/name", entry["repo"])


def check_loras(loras: object, problems: Problems) -> None:
    """`loras:` (optional): LoRAs merged into the DiT, each a safetensors file on the Hub or a local path, with a
    scale (default 1)."""
    shape = "{repo, file, scale} or {path, scale}"
    if loras is None:
        return
    if not isinstance(loras, list):
        problems.add("loras", f"a list of {shape}", loras)
        return
    for i, entry in enumerate(loras):
        where = f"loras[{i}]"
        if not isinstance(entry, dict):
            problems.add(where, shape, entry)
            continue
        unknown = sorted(str(k) for k in entry if k not in LORA_KEYS)
        if unknown:
            problems.append(f"{where}: unknown keys {', '.join(unknown)} (known: {', '.join(LORA_KEYS)})")
        for key in ("repo", "file", "path"):
            if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
                problems.add(f"{where}.{key}", "a non-empty string", entry[key])
        if ("path" in entry) == ("repo" in entry or "file" in entry) or ("path" not in entry and not
                                                                         {"repo", "file"} <= set(entry)):
            problems.append(f"{where} must be {shape}")
        elif isinstance(entry.get("repo"), str) and entry["repo"].count("/") != 1:
            problems.add(f"{where}.repo", "a Hub repo id like owner/name", entry["repo"])
        if "scale" in entry and not is_number(entry["scale"]):
            problems.add(f"{where}.scale", "a number (e.g. 0.8)", entry["scale"])


def check_architecture(arch: object, configs: dict[str, type], problems: Problems) -> None:
    if arch is None:
        return
    if not isinstance(arch, dict):
        problems.add("architecture", f"a mapping of parts ({', '.join(configs)})", arch)
        return
    for part, values in arch.items():
        if part not in configs:
            problems.append(f"architecture: unknown part {_show(part)} (known: {', '.join(configs)})")
        elif values is not None and not isinstance(values, dict):
            problems.add(f"architecture.{part}", "a mapping of sizes", values)
        elif values:
            sizes = {k: v for k, v in values.items() if not (part == "vae" and k == VAE_FAMILY_KEY)}
            check_config(sizes, configs[part], f"architecture.{part}", problems)


def check_vae_family(arch: object, families: tuple[str, ...], problems: Problems) -> None:
    vae = arch.get("vae") if isinstance(arch, dict) else None
    if isinstance(vae, dict) and VAE_FAMILY_KEY in vae and vae[VAE_FAMILY_KEY] not in families:
        problems.append(f"architecture.vae.{VAE_FAMILY_KEY}: unknown VAE family {_show(vae[VAE_FAMILY_KEY])} "
                        f"(known: {', '.join(families)})")


def check_config(values: dict, config: type, where: str, problems: Problems) -> None:
    """Each key must be a field of the config dataclass, with a value of the field's type."""
    hints = typing.get_type_hints(config)
    for key, value in values.items():
        if key not in hints:
            problems.append(f"{where}: unknown key {_show(key)} (known: {', '.join(hints)})")
            continue
        expected = _type_problem(hints[key], value)
        if expected:
            problems.add(f"{where}.{key}", expected, value)


def _type_problem(hint: object, value: object) -> str | None:
    """What `value` should have been for a field typed `hint`, or None when it fits."""
    if hint is int:
        return None if is_int(value) and value > 0 else "a positive whole number"
    if hint is float:
        return None if is_number(value) else "a finite number"
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        item, length = args[0], None if args[-1] is Ellipsis else len(args)
        fits = (isinstance(value, list) and len(value) > 0 and (length is None or len(value) == length)
                and all(_type_problem(item, v) is None for v in value))
        count = f"{length} " if length else ""
        return None if fits else f"a list of {count}{ITEM_NAMES.get(item, 'values')}"
    return None


def check_geometry(arch: dict, configs: dict[str, type], problems: Problems) -> None:
    """Relations between sizes that would otherwise fail as reshape errors deep in the models."""
    parts = {k: v for k, v in arch.items() if isinstance(v, dict)} if isinstance(arch, dict) else {}
    for part, heads, width in (("dit", "num_heads", "dim"), ("text_encoder", "num_heads", "dim_attn")):
        values = {**_defaults(configs[part]), **parts.get(part, {})}
        if is_int(values.get(heads)) and is_int(values.get(width)) and values[heads] > 0 \
                and values[width] % values[heads]:
            problems.append(f"architecture.{part}: {width} {values[width]} is not divisible by {heads} "
                            f"{values[heads]}")
    vae = {**_defaults(configs["vae"]), **parts.get("vae", {})}
    vae.pop(VAE_FAMILY_KEY, None)
    if all(isinstance(vae.get(k), (list, tuple)) for k in ("dim_mult", "temporal_downsample")) \
            and len(vae["temporal_downsample"]) != len(vae["dim_mult"]) - 1:
        problems.append("architecture.vae: temporal_downsample needs one entry fewer than dim_mult")
    for key in ("latent_mean", "latent_std"):
        if is_int(vae.get("z_dim")) and isinstance(vae.get(key), (list, tuple)) and len(vae[key]) != vae["z_dim"]:
            problems.append(f"architecture.vae: {key} needs z_dim ({vae['z_dim']}) values, got {len(vae[key])}")


def _defaults(config: type) -> dict:
    import dataclasses

    return {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
