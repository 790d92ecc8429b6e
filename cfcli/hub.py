"""Where a preset's weights live on this machine: a local path, or the Hugging Face cache (never the network here)."""

from pathlib import Path

from cfcli.errors import CfError
from cfcli.presets import Preset, WeightRef


def download_hint(preset: Preset) -> str:
    src = preset.source
    shipped = src is not None and src.parent.name == "presets" and src.stem == preset.name
    return f"run `cf download --preset {preset.name if shipped else src}` first"


def resolve(preset: Preset, role: str) -> Path:
    """Local path of the preset's `role` weights (a file, or the tokenizer folder)."""
    ref = preset.weights[role]
    if ref.path is not None:
        if not ref.path.exists():
            raise CfError(f"{role} weights not found at {ref.path}", "fix the path in the preset")
        return ref.path
    path = cached_path(ref)
    if path is None:
        raise CfError(f"{role} weights {ref.label} are not downloaded", download_hint(preset))
    return path


def cached_path(ref: WeightRef) -> Path | None:
    """The file or folder of `ref` in the local Hugging Face cache, or None."""
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache
    from huggingface_hub.errors import CacheNotFound

    if ref.file is not None:
        hit = try_to_load_from_cache(ref.repo, ref.file, revision=ref.revision)
        return Path(hit) if isinstance(hit, str) else None
    try:
        repos = scan_cache_dir().repos
    except CacheNotFound:
        return None
    for repo in repos:
        if repo.repo_id == ref.repo and repo.repo_type == "model":
            for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
                folder = rev.snapshot_path / ref.folder
                if folder.is_dir():
                    return folder
    return None
