"""What the Hub has: the files each preset's weights name, with sizes, hashes and the commit they resolve to."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cfcli.converted_check import is_whole
from cfcli.errors import CfError
from cfcli.hub.converted import converted_dir, converted_name, needs_conversion
from cfcli.hub.network import _status, _with_retries
from cfcli.hub.hubfile import HubFile
from cfcli.presets import WEIGHT_ROLES, Preset, WeightRef


@dataclass
class Need:
    """One role of one preset: the Hub files it names and, for a `.pt` generator, where its conversion goes."""

    preset: Preset
    role: str
    files: list[HubFile]
    converted: Path | None = None

    @property
    def ref(self) -> WeightRef:
        return self.preset.weights[self.role]

    def satisfied_by_conversion(self) -> bool:
        """A converted generator replaces its checkpoint: the `.pt` need not be fetched again."""
        return self.converted is not None and is_whole(self.converted)


Listings = dict[tuple[str, str | None], dict[str, HubFile]]  # (repo, revision) -> its files, asked once a run


def plan(presets: Iterable[Preset]) -> list[Need]:
    """The Hub files each preset's weights name (exactly those), with sizes, hashes and the commit they resolve to."""
    listings: Listings = {}
    needs = []
    for preset in presets:
        for role in WEIGHT_ROLES:
            ref = preset.weights[role]
            if ref.path is not None:
                continue
            files = _files(listings, ref)
            target = None
            if role == "generator" and needs_conversion(ref):
                target = converted_dir() / converted_name(files[0].etag, preset.use_ema)
            needs.append(Need(preset, role, files, target))
    return needs


def plan_files(refs: Iterable[WeightRef]) -> list[HubFile]:
    """The Hub file each of `refs` names (each a `{repo, file}`: a LoRA), listed as a preset's weights are."""
    listings: Listings = {}
    return [f for ref in refs for f in _files(listings, ref)]


def _files(listings: Listings, ref: WeightRef) -> list[HubFile]:
    key = (ref.repo, ref.revision)
    if key not in listings:
        listings[key] = _with_retries(lambda: _listing(*key), what=f"list {ref.repo}")
    return _select(listings[key], ref)


def _listing(repo: str, revision: str | None) -> dict[str, HubFile]:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = constants.ENDPOINT
    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except GatedRepoError as exc:
        raise CfError(f"{repo} is gated on {where}: accept its terms on the model page",
                      "then set HF_TOKEN to a token of that account") from exc
    except RepositoryNotFoundError as exc:
        raise CfError(f"repository {repo} was not found on {where}",
                      "check the repo id in the preset; for a private repo set HF_TOKEN") from exc
    except RevisionNotFoundError as exc:
        raise CfError(f"revision {revision!r} of {repo} was not found on {where}",
                      "check the revision in the preset") from exc
    except OfflineModeIsEnabled as exc:
        raise CfError("HF_HUB_OFFLINE is set, so the Hub cannot be asked",
                      "unset HF_HUB_OFFLINE to download") from exc
    except HfHubHTTPError as exc:
        status = _status(exc)
        if status in (408, 429) or status >= 500:
            raise
        raise CfError(f"the Hub at {where} refused {repo}: {str(exc).splitlines()[0]}",
                      "check HF_TOKEN" if status in (401, 403) else "") from exc
    return {s.rfilename: HubFile(repo, revision, info.sha, s.rfilename, (s.lfs.size if s.lfs else s.size) or 0,
                                 s.lfs.sha256 if s.lfs else None, s.blob_id)
            for s in info.siblings or []}


def _select(listing: dict[str, HubFile], ref: WeightRef) -> list[HubFile]:
    where = f"{ref.repo}" + (f" at {ref.revision}" if ref.revision else "")
    if ref.file is not None:
        if ref.file not in listing:
            raise CfError(f"{ref.file} is not in {where}", "check the file name (in the preset, or the --lora given)")
        return [listing[ref.file]]
    prefix = ref.folder.strip("/") + "/"
    files = [f for path, f in sorted(listing.items()) if path.startswith(prefix)]
    if not files:
        raise CfError(f"folder {ref.folder} is not in {where}", "check the folder name in the preset")
    return files
