"""LoRAs and weight diffs for the DiT: read from safetensors files in the common layouts, checked against the model
config before any weights load, merged into the DiT's weights once after loading.

- `spec`: what a user asks for (`FILE[:SCALE]`, a Hub file `owner/repo/path.safetensors`), torch-free for the CLI.
- `keys`: the file layouts (Wan/ComfyUI, PEFT/diffusers, kohya) mapped onto the DiT's own parameter names.
- `files`: one LoRA file read (never unpickled), grouped by the parameter it changes, checked against its shapes.
- `merge`: the deltas added to the weights in float32, then cast back.

Nothing here imports torch at package import (the CLI parses `--lora` without it).
"""
