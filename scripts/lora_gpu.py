"""Issue #26 on a GPU: what a LoRA costs, merged (the default) against applied unmerged, on random full-size weights.

  python3 scripts/lora_gpu.py write MODE FILE [RANK]   a random LoRA of rank RANK (32) on every linear of every DiT
                                                       block, Wan/ComfyUI layout, alpha = RANK
  python3 scripts/lora_gpu.py unmerged MODE FILE       81 frames, twice each (the second timed), on engines with CUDA
                                                       graphs and no compiled blocks: the LoRA merged, then the same
                                                       LoRA applied unmerged (a low-rank product added to each
                                                       linear's output, in forward hooks captured into the graphs)

`load_s` is each engine's load on random weights; the merged one's includes the merge. The live swap is timed by `cf live --measure-latency N --lora FILE` (scripts/lora_gpu.sh).
"""

import json
import sys
import time

import torch

PROMPT = "a fox running through a snowy forest at dawn"


def write(mode: str, file: str, rank: int = 32) -> None:
    from safetensors.torch import save_file

    from cfcli.lora.files import parameter_shapes
    from cfcli.models.dit import BLOCK_LINEARS
    from cfcli.session import Session

    shapes = parameter_shapes(Session(**where(mode), random_weights=True).preset.configs.dit)
    gen, tensors = torch.Generator().manual_seed(0), {}
    for name, (out, inp) in ((n.removesuffix(".weight"), s) for n, s in shapes.items()
                             if n.endswith(".weight") and BLOCK_LINEARS.fullmatch(n.removesuffix(".weight"))):
        key = f"diffusion_model.{name}"
        tensors[f"{key}.lora_down.weight"] = (torch.randn(rank, inp, generator=gen) / inp ** 0.5).bfloat16()
        tensors[f"{key}.lora_up.weight"] = (torch.randn(out, rank, generator=gen) * 0.01).bfloat16()
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, file)
    print(json.dumps({"file": file, "rank": rank, "linears": len(tensors) // 3}))


def where(mode: str) -> dict:
    """A mode, or a preset file (tiny ones check this script on a CPU)."""
    return {"preset": mode} if mode.endswith(".yaml") else {"mode": mode}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(session) -> dict:
    """The engine's load (random weights, the LoRA's merge included), then 81 frames twice (fps of each)."""
    t0 = time.perf_counter()
    session.engine  # noqa: B018 - loads and configures it
    sync()
    load_s, runs = time.perf_counter() - t0, []
    for seed in (1, 2):
        sync()
        t0, n = time.perf_counter(), 0
        for frames in session.stream(PROMPT, frames=81, seed=seed):
            n += frames.shape[0]
        sync()
        runs.append(n / (time.perf_counter() - t0))
    return {"load_s": round(load_s, 3), "fps_first": round(runs[0], 2), "fps": round(runs[1], 2),
            "levers": session.engine.levers()}


def hooked(dit, file: str, scale: float = 1.0) -> int:
    """Apply `file`'s low-rank pairs unmerged: each block linear's output gains scale·alpha/r·(x downᵀ) upᵀ."""
    from safetensors.torch import load_file

    sd, n = load_file(file, device=str(next(dit.parameters()).device)), 0
    for name, mod in dit.named_modules():
        key = f"diffusion_model.{name}"
        if f"{key}.lora_down.weight" not in sd:
            continue
        down, up = sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"]
        up = (up.float() * (scale * float(sd[f"{key}.alpha"]) / down.shape[0])).to(mod.weight.dtype)
        down = down.to(mod.weight.dtype)
        mod.register_forward_hook(lambda m, args, out, d=down, u=up: out + (args[0] @ d.T) @ u.T)
        n += 1
    return n


def unmerged(mode: str, file: str) -> None:
    from cfcli.session import Session, SpeedFlags

    flags = SpeedFlags(compile=False)
    with Session(**where(mode), random_weights=True, speed=flags, lora=[file]) as s:
        merged = timed(s)
    with Session(**where(mode), random_weights=True, speed=flags) as s:
        plain = timed(s)
    with Session(**where(mode), random_weights=True, speed=flags) as s:
        t0 = time.perf_counter()
        linears = hooked(s.engine.dit, file)  # before the first video: the graphs capture the hooks
        side = timed(s) | {"load_s": round(time.perf_counter() - t0, 3)}
    print(json.dumps({"mode": mode, "linears": linears, "no_lora": plain, "merged": merged, "unmerged": side,
                      "unmerged_of_merged": round(side["fps"] / merged["fps"], 3)}))


if __name__ == "__main__":
    {"write": lambda a: write(a[0], a[1], *(int(x) for x in a[2:])), "unmerged": lambda a: unmerged(*a)}[
        sys.argv[1]](sys.argv[2:])
