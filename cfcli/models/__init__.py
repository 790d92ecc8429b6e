"""Plain nn.Modules that load the official Causal Forcing / Wan2.1 files unchanged."""
