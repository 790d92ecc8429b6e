"""Where a preset's weights live on this machine, and how they get there.

Local look-ups (`resolve`, `cached_path`, `converted_path`, `local_status`) read only the Hugging Face cache and
cfcli's own cache, never the network, so `cf generate` works with HF_HUB_OFFLINE=1. `plan` asks the Hub which files a
preset names (size, sha256, commit) and `fetch` downloads one of them into the standard cache (resuming a partial
kept by an interrupted run: `cfcli.resume`), retrying with backoff, and checks its content against the Hub's hash
before anything may use it: a file that does not match is deleted and fetched again, never left in the cache.

huggingface_hub reads HF_HOME / HF_HUB_CACHE / HF_ENDPOINT / HF_HUB_OFFLINE at import time, so everything here reads
`huggingface_hub.constants` at call time rather than copying the values.

One module per concern; everything cfcli and its tests use is re-exported here, so `from cfcli import hub` and
`hub.<name>` keep working.
"""

from cfcli.hub.hints import download_command, download_hint, human
from cfcli.hub.cache import COMMIT, hub_cache, repo_dir, cached_path, disk_size
from cfcli.hub.converted import (CONVERTIBLE, HEX_ETAG, needs_conversion, converted_dir, converted_name, blob_etag,
                                 record_conversion, converted_path)
from cfcli.hub.local import resolve, resolve_all, LocalStatus, local_status
from cfcli.hub.loras import lora_ref, resolve_lora
from cfcli.hub.verify import HASH_CHUNK, content_hash, check_content, discard
from cfcli.hub.network import network_errors
from cfcli.hub.hubfile import HubFile
from cfcli.hub.listing import Need, plan, plan_files
from cfcli.hub.download import RETRIES, Events, fetch
from cfcli.hub.space import check_space, free_space

__all__ = ["download_command", "download_hint", "human", "COMMIT", "hub_cache", "repo_dir", "cached_path", "disk_size",
           "CONVERTIBLE", "HEX_ETAG", "needs_conversion", "converted_dir", "converted_name", "blob_etag",
           "record_conversion", "converted_path", "resolve", "resolve_all", "LocalStatus", "local_status", "lora_ref",
           "resolve_lora", "HASH_CHUNK",
           "content_hash", "check_content", "discard", "network_errors", "HubFile", "Need", "plan", "plan_files", "RETRIES",
           "Events", "fetch", "check_space", "free_space"]
