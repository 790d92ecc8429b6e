"""The values `cf live` and `cf serve` take for the live page, refused before anything binds or loads."""

import math

from cfcli.errors import CfError
from cfcli.pipeline.limits import check_options


def check_live_options(p, seed, crf, codec, port: int, token: str | None, max_seconds: float | None,
                       lead: float, max_upload_mb: int, measure_latency: int | None,
                       switch_at: str = "steps") -> None:
    """Every value `cf live` takes, refused before anything binds or loads (`p`: the session's preset)."""
    from cfcli.pipeline.limits import check_length
    from cfcli.pipeline import containers

    check_options(seed=seed, crf=crf)
    containers.get(codec)  # an unknown codec (or one this ffmpeg lacks) is refused here
    if not 0 <= port <= 65535:
        raise CfError(f"--port {port} is out of range", "use 1 to 65535, e.g. --port 7860 (0: any free port)")
    if token is not None and not token:
        raise CfError("--token is empty", "give a token that is hard to guess, or leave out --token (one is made "
                                          "when --host is not local)")
    if max_seconds is not None:
        if not (math.isfinite(max_seconds) and max_seconds > 0):
            raise CfError(f"--max-seconds must be a positive number, got {max_seconds}", "e.g. --max-seconds 60")
        check_length(math.ceil(min(max_seconds * p.fps, 2**62)), "--max-seconds", max_seconds, p.fps, p.geometry)
    if not (math.isfinite(lead) and lead >= 0):
        raise CfError(f"--lead must be a number of seconds from 0 up, got {lead}", "e.g. --lead 1.0")
    if max_upload_mb < 1:
        raise CfError(f"--max-upload-mb must be at least 1, got {max_upload_mb}", "e.g. --max-upload-mb 64")
    if switch_at not in ("steps", "blocks"):
        raise CfError(f"--switch-at {switch_at!r} is not a choice", "use steps (the default) or blocks")
    if measure_latency is not None and measure_latency < 1:
        raise CfError(f"--measure-latency must be at least 1 switch, got {measure_latency}",
                      "e.g. --measure-latency 20")
