"""cfcli's version (the package's, as built: `pyproject.toml` reads it here)."""

__version__ = "0.1.0"
