"""cfcli: run Causal Forcing real-time video generation on your own GPU."""

__version__ = "0.1.0"
