"""Time the official Causal Forcing loop (thu-ml/Causal-Forcing's `CausalInferencePipeline`) on random weights.

The reference figures beside `cf bench` in docs/performance.md: run both in the same device call and report ratios
(docs/official-harness.md says how). The official code is run as it is, from `.official/` (scripts/official_fetch.sh);
the harness only supplies what a machine with no weights and no flash-attn lacks, without touching their files:

- `flash_attn` is a module made here whose `flash_attn_varlen_func` is torch SDPA, so their `flash_attention` and
  `attention` take the flash-attn 2 path they take on a GPU;
- the umT5 text encoder (and its tokenizer, which needs Hub files and `transformers`) is bypassed: a module returns
  random prompt embeddings [1, 512, 4096] in the pipeline's dtype, rows past a typical prompt's length zeroed;
- `CausalWanModel.from_pretrained` and the VAE loader are replaced for the build only, by the same classes built on the
  device with cf bench's seeded random init (`cfcli.pipeline.random_weights.random_init_`);
- their package `__init__`s (trainers, Wan's T2V/I2V apps, tokenizers) are skipped: only the modules the loop
  imports are loaded.

Timing as `cf bench` (cfcli/pipeline/bench.py): one untimed warm-up run, then per repeat one `inference()` call timed
with the same `Clock` (CUDA events, a synchronisation before the start and after the end). DiT time runs from the start
of `inference()` (cross-attention K/V included, umT5 not) to the call of their VAE decode; end to end to the return of
the decoded clip. fps counts video frames (81 for 21 latent frames) as cf bench does. Prints one JSON line.

    python3 scripts/official_bench.py --mode framewise|chunkwise [--frames 81 --height 480 --width 832]
        [--repeat 2] [--device cuda] [--seed 0] [--tiny]

`--tiny`: a 2-layer DiT and a narrow VAE at 9 frames of 32×48, float32 on the CPU, to check the harness end to end
anywhere. Only at the official size (1560 tokens a latent frame) are their caches their own; at any other size the
harness makes caches of the same layout at that size, and the JSON says `"adapted": true`.
"""

import argparse
import contextlib
import importlib
import importlib.machinery
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cfcli.pipeline.bench import Clock, gpu_name, phase_peak
from cfcli.pipeline.random_weights import RANDOM_PROMPT_TOKENS, random_init_

OFFICIAL = ROOT / ".official"
PROMPT = "a red fox running through a snowy birch forest at dawn"  # never encoded: the embeddings are random
VAE_TIME, VAE_SPACE, PATCH = 4, 8, 2  # latent frame = 4 video frames, latent pixel = 8×8, DiT patch 2×2

# Wan2.1-T2V-1.3B's config.json (spec/generator.md §1); qk_norm and cross_attn_norm keep CausalWanModel's defaults.
WAN_1_3B = {"model_type": "t2v", "patch_size": (1, 2, 2), "text_len": 512, "in_dim": 16, "dim": 1536, "ffn_dim": 8960,
            "freq_dim": 256, "text_dim": 4096, "out_dim": 16, "num_heads": 12, "num_layers": 30, "eps": 1e-6}
TINY_DIT = WAN_1_3B | {"dim": 64, "ffn_dim": 128, "text_dim": 32, "num_heads": 4, "num_layers": 2}
TINY_VAE = {"dim": 8}  # over `_video_vae`'s own config (dim 96, z_dim 16, dim_mult [1, 2, 4, 4], ...)
TINY_SIZE = {"frames": 9, "height": 32, "width": 48}
FULL_SIZE = {"frames": 81, "height": 480, "width": 832}


# ---------------------------------------------------------------------------------------------------------------
# Stand-ins for what this machine lacks

def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), deterministic=False, **_):
    """flash-attn 2's varlen call through SDPA, for sequences of equal length: the only kind the official loop makes
    (batch 1, no `k_lens`), so the lengths come from the shapes and nothing waits for the host."""
    batch = q.shape[0] // max_seqlen_q
    if tuple(window_size) != (-1, -1) or q.shape[0] != batch * max_seqlen_q or k.shape[0] != batch * max_seqlen_k:
        raise NotImplementedError("the SDPA stand-in for flash_attn handles equal-length sequences without a window")
    q, k, v = (t.unflatten(0, (batch, -1)).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=softmax_scale)
    return out.transpose(1, 2).flatten(0, 1)


def cpu_flash_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None,
                        causal=False, window_size=(-1, -1), deterministic=False, dtype=None, version=None):
    """Their `flash_attention` less its CUDA-only assert and bf16 cast, for `--tiny` on the CPU; same varlen call."""
    if q_lens is not None or k_lens is not None or q_scale is not None:
        raise NotImplementedError("the official loop passes no lengths and no q_scale")
    b, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    cu = lambda n: torch.arange(0, (b + 1) * n, n, dtype=torch.int32, device=q.device)
    x = flash_attn_varlen_func(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu(lq), cu(lk), lq, lk,
                               dropout_p, softmax_scale, causal, window_size)
    return x.unflatten(0, (b, lq)).type(q.dtype)


class RandomPrompt(torch.nn.Module):
    """In place of `WanTextEncoder`: the same output ({"prompt_embeds": [1, text_len, text_dim]}), random."""

    def __init__(self, text_len: int, text_dim: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        embeds = torch.randn(1, text_len, text_dim, generator=gen)
        embeds[:, RANDOM_PROMPT_TOKENS:] = 0.0  # the encoder zeroes the rows past the prompt's tokens
        self.register_buffer("embeds", embeds)

    def forward(self, text_prompts):
        return {"prompt_embeds": self.embeds}


# ---------------------------------------------------------------------------------------------------------------
# Loading their code

def made_module(name: str, path: Path | None = None, **names) -> types.ModuleType:
    """A module registered under `name` (with a spec, for libraries that look modules up); a package of `path`."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=path is not None)
    if path is not None:
        module.__path__ = module.__spec__.submodule_search_locations = [str(path)]
    module.__dict__.update(names)
    sys.modules[name] = module
    return module


def bare_package(name: str) -> None:
    """`name` as a package of `.official/` whose `__init__` is not run (theirs import trainers, apps, tokenizers)."""
    made_module(name, OFFICIAL / name.replace(".", "/"))


def no_tokenizer() -> None:
    """`wan.modules.tokenizers` without `transformers`/`ftfy`: the text encoder it serves is bypassed."""
    class HuggingfaceTokenizer:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("the benchmark feeds random prompt embeddings; no tokenizer is loaded")

    made_module("wan.modules.tokenizers", HuggingfaceTokenizer=HuggingfaceTokenizer)


def import_official(device: torch.device) -> types.SimpleNamespace:
    if not (OFFICIAL / "COMMIT").is_file():
        sys.exit(f"{OFFICIAL} is missing: run scripts/official_fetch.sh first")
    made_module("flash_attn", flash_attn_varlen_func=flash_attn_varlen_func, __version__="2 (torch SDPA stand-in)")
    for name in ("wan", "wan.modules", "pipeline", "utils", "demo_utils"):
        bare_package(name)
    no_tokenizer()
    current_device = torch.cuda.current_device
    if device.type != "cuda":  # demo_utils.memory names `cuda:{current_device()}` at import; never used here
        torch.cuda.current_device = lambda: 0
    try:
        ns = types.SimpleNamespace(**{n.rsplit(".", 1)[-1]: importlib.import_module(n) for n in (
            "wan.modules.attention", "wan.modules.model", "wan.modules.causal_model", "wan.modules.vae",
            "utils.wan_wrapper", "pipeline.causal_inference")})
    finally:
        torch.cuda.current_device = current_device
    if device.type != "cuda":
        ns.attention.flash_attention = ns.model.flash_attention = cpu_flash_attention
    return ns


def official_args(mode: str) -> types.SimpleNamespace:
    """Their inference.py's config: configs/default_config.yaml merged with causal_forcing_dmd_<mode>.yaml."""
    cfg = yaml.safe_load((OFFICIAL / "configs" / "default_config.yaml").read_text())
    cfg |= yaml.safe_load((OFFICIAL / "configs" / f"causal_forcing_dmd_{mode}.yaml").read_text())
    return types.SimpleNamespace(**cfg)


@contextlib.contextmanager
def patched(owner, name: str, value):
    """`owner.name = value` for the block; what `owner` itself held (if anything, not what it inherits) comes back."""
    missing = object()
    old = owner.__dict__.get(name, missing)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if old is missing:
            delattr(owner, name)
        else:
            setattr(owner, name, old)


def build_pipeline(ns, mode: str, dit_cfg: dict, vae_cfg: dict, device, dtype, seed: int):
    """Their pipeline with random modules, in `dtype` on `device` (inference.py: `.to(dtype=bfloat16)`, then cuda)."""
    def dit(path, **kwargs):  # from_pretrained(f"wan_models/{name}/", local_attn_size=..., sink_size=...)
        with torch.device(device):
            return random_init_(ns.causal_model.CausalWanModel(**dit_cfg, **kwargs), seed)

    def vae(pretrained_path=None, z_dim=16, **kwargs):
        with torch.device(device):
            return random_init_(ns.vae.WanVAE_(**vae_kwargs(z_dim) | vae_cfg), seed + 1)

    prompt = RandomPrompt(dit_cfg["text_len"], dit_cfg["text_dim"], seed + 2)
    with patched(ns.causal_model.CausalWanModel, "from_pretrained", staticmethod(dit)), \
            patched(ns.wan_wrapper, "_video_vae", vae):
        pipe = ns.causal_inference.CausalInferencePipeline(official_args(mode), device=device, text_encoder=prompt)
    return pipe.to(dtype=dtype).to(device)


def vae_kwargs(z_dim: int) -> dict:
    """`_video_vae`'s own config (wan/modules/vae.py), which builds on meta and loads the checkpoint in one go."""
    return {"dim": 96, "z_dim": z_dim, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
            "temperal_downsample": [False, True, True], "dropout": 0.0}


def fit_caches(pipe, dit_cfg: dict, latent_frames: int, tokens: int, device, dtype) -> bool:
    """At a size other than the official one, their hard-coded 1560 tokens a frame and 12×128 heads would not fit:
    set the frame length and lay out caches of their layout at this size. False (nothing touched) at theirs."""
    heads, head_dim = dit_cfg["num_heads"], dit_cfg["dim"] // dit_cfg["num_heads"]
    if tokens == pipe.frame_seq_length and (heads, head_dim) == (12, 128):
        return False
    pipe.frame_seq_length = tokens
    zeros = lambda n: torch.zeros(1, n, heads, head_dim, dtype=dtype, device=device)
    index = lambda: torch.tensor([0], dtype=torch.long, device=device)
    layers = range(pipe.num_transformer_blocks)
    pipe.kv_cache1 = [{"k": zeros(latent_frames * tokens), "v": zeros(latent_frames * tokens),
                       "global_end_index": index(), "local_end_index": index()} for _ in layers]
    pipe.crossattn_cache = [{"k": zeros(dit_cfg["text_len"]), "v": zeros(dit_cfg["text_len"]), "is_init": False}
                            for _ in layers]
    return True


# ---------------------------------------------------------------------------------------------------------------
# Timing

def timed_inference(pipe, noise, seed: int, clock: Clock) -> tuple[float, float, torch.Tensor]:
    """(DiT seconds, end-to-end seconds, the clip) of one `inference()`; the DiT mark is set when their decode starts."""
    marks = []
    decode = pipe.vae.decode_to_pixel

    def marked(latent, use_cache=False):
        marks.append(clock.mark())
        return decode(latent, use_cache)

    pipe.vae.decode_to_pixel = marked  # on the instance, for this call only
    try:
        torch.manual_seed(seed)  # the loop draws its re-noising with torch.randn_like
        clock.sync()
        start = clock.mark()
        video = pipe.inference(noise=noise, text_prompts=[PROMPT])
        end = clock.mark()
        clock.sync()
    finally:
        del pipe.vae.decode_to_pixel
    return clock.seconds(start, marks[0]), clock.seconds(start, end), video


def summary(runs: list[dict], frames: int, pick) -> dict:
    dit_s, e2e_s = pick(r["dit_s"] for r in runs), pick(r["e2e_s"] for r in runs)
    return {"dit_s": dit_s, "e2e_s": e2e_s, "dit_fps": frames / dit_s, "e2e_fps": frames / e2e_s}


def bench(args) -> dict:
    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    dit_cfg, vae_cfg = (TINY_DIT, TINY_VAE) if args.tiny else (WAN_1_3B, {})
    latent_frames = (args.frames - 1) // VAE_TIME + 1
    lh, lw = args.height // VAE_SPACE, args.width // VAE_SPACE
    tokens = (lh // PATCH) * (lw // PATCH)
    torch.set_grad_enabled(False)  # as their inference.py
    ns = import_official(device)
    pipe = build_pipeline(ns, args.mode, dit_cfg, vae_cfg, device, dtype, args.seed)
    check_frames(args.frames, latent_frames, pipe.num_frame_per_block, tokens)
    adapted = fit_caches(pipe, dit_cfg, latent_frames, tokens, device, dtype)
    gen = torch.Generator(device).manual_seed(args.seed)
    noise = torch.randn(1, latent_frames, dit_cfg["in_dim"], lh, lw, generator=gen, device=device, dtype=dtype)
    clock = Clock(device)
    started = time.perf_counter()
    *_, video = timed_inference(pipe, noise, args.seed, clock)  # warm-up: kernels chosen, caches allocated
    warmup_s = time.perf_counter() - started
    runs = []
    for _ in range(args.repeat):
        (dit_s, e2e_s, _), peak = phase_peak(device, lambda: timed_inference(pipe, noise, args.seed, clock))
        runs.append({"dit_s": dit_s, "e2e_s": e2e_s, "dit_fps": args.frames / dit_s, "e2e_fps": args.frames / e2e_s,
                     "peak_gib": peak})
    peaks = [r["peak_gib"] for r in runs if r["peak_gib"] is not None]
    return {
        "harness": "official", "mode": args.mode, "commit": (OFFICIAL / "COMMIT").read_text().strip(),
        "device": str(device), "gpu": gpu_name(device), "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__, "attention": "torch SDPA as flash_attn 2", "tiny": args.tiny, "adapted": adapted,
        "frames": args.frames, "latent_frames": latent_frames, "block_frames": pipe.num_frame_per_block,
        "steps": len(pipe.denoising_step_list), "height": args.height, "width": args.width, "repeat": args.repeat,
        "warmup_s": warmup_s, "finite": bool(torch.isfinite(video).all()), "runs": runs,
        "best": summary(runs, args.frames, min), "median": summary(runs, args.frames, statistics.median),
        "peak_gib": max(peaks) if peaks else None,
    }


def check_frames(frames: int, latent_frames: int, block: int, tokens: int) -> None:
    if frames < 1 or (frames - 1) % VAE_TIME or latent_frames % block:
        sys.exit(f"--frames must be 1 + {VAE_TIME}k with a latent count ({latent_frames}) divisible by {block}")
    if tokens == 1560 and latent_frames > 21:
        sys.exit("the official KV cache holds 21 latent frames (81 video frames) at 480×832")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("framewise", "chunkwise"), required=True)
    p.add_argument("--frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--device")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="a tiny model at a tiny size, float32 on the CPU")
    args = p.parse_args(argv)
    for key, value in (TINY_SIZE if args.tiny else FULL_SIZE).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    if args.repeat < 1 or args.height % (VAE_SPACE * PATCH) or args.width % (VAE_SPACE * PATCH):
        p.error("--repeat must be ≥ 1; --height and --width multiples of 16")
    return args


def main(argv=None) -> None:
    args = parse(argv)
    with contextlib.redirect_stdout(sys.stderr):  # their prints and tqdm stay off the JSON line
        result = bench(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
