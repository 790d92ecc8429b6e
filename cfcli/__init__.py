"""cfcli: run Causal Forcing real-time video generation on your own GPU.

The Python API (`docs/python-api.md`): `cfcli.Session` holds a preset's engine loaded between jobs, `cfcli.generate`
makes one clip in one call. Both are imported on first use, so `import cfcli` (and `cf --help`) stays cheap.
"""

from cfcli.version import __version__

__all__ = ["Session", "SpeedFlags", "generate", "__version__"]


def __getattr__(name: str):
    if name in ("Session", "SpeedFlags", "generate"):
        from cfcli import session

        return getattr(session, name)
    raise AttributeError(f"module 'cfcli' has no attribute {name!r}")
