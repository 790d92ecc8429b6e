"""The live API's wire format: JSON control messages checked at the edge, and the binary frame messages.

Client → server messages are JSON objects with a `type` and only the fields listed in `MESSAGES` (docs/live.md).
Anything else gets `{"type": "error", ...}` back; nothing a client sends reaches the generation thread unchecked.

Server → client frames are binary WebSocket messages: a 16-byte little-endian header, then one JPEG picture:
`magic b"CFLV" | session u32 | frame u32 | width u16 | height u16`.
"""

import io
import json
import math
import struct

from cfcli.pipeline.prompts import CUT, MAX_TRANSITION_BLOCKS, Transition, encodable

MAX_PROMPT_CHARS = 2000
MAX_MESSAGE_BYTES = 16 * 1024
MAX_LORAS = 8  # LoRAs one `loras` message may set
MAX_PREPARE = 64  # prompts one `prepare` message may name
MAX_PATH_CHARS = 4096
FRAME_HEADER = struct.Struct("<4sIIHH")
FRAME_MAGIC = b"CFLV"

# type -> {field: (accepted python types, required)}
MESSAGES: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "claim": {},  # become the controller (if nobody is)
    "release": {},  # give control back
    "start": {"prompt": ((str,), True), "seed": ((int, type(None)), False), "image": ((str, type(None)), False),
              "clip": ((str, type(None)), False), "record": ((bool,), False)},
    "stop": {},
    "restart": {"seed": ((int, type(None)), False), "new_seed": ((bool,), False), "prompt": ((str, type(None)), False)},
    "prompt": {"prompt": ((str,), True), "transition": ((dict, type(None)), False)},  # {"blocks": N, "kind": ...}
    "record": {"on": ((bool,), True)},
    "prepare": {"prompts": ((list,), True)},  # prompts to encode ahead (a queue), so firing one later skips umT5
    "loras": {"loras": ((list,), True)},  # the whole list: [{"file": path or Hub file, "scale": number}, ...]
    "status": {},  # ask for a status message now
}
CONTROL = {"start", "stop", "restart", "prompt", "record", "loras", "prepare"}  # messages only the controller may send


class BadMessage(ValueError):
    """A client message that is not valid JSON or not one of `MESSAGES`; the text is sent back."""


def parse(text: str | bytes | None) -> dict:
    """Validate one client message; returns the dict with defaults for the optional fields left out."""
    if not isinstance(text, str):
        raise BadMessage("send control messages as JSON text, not binary")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"message over {MAX_MESSAGE_BYTES} bytes")
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadMessage(f"not JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # a number past int()'s digit limit; nesting past the stack
        raise BadMessage(f"not a message this server reads: {type(exc).__name__}") from None
    if not isinstance(msg, dict) or msg.get("type") not in MESSAGES:
        raise BadMessage(f"unknown message type; use one of: {', '.join(MESSAGES)}")
    fields = MESSAGES[msg["type"]]
    extra = set(msg) - set(fields) - {"type"}
    if extra:
        raise BadMessage(f"{msg['type']}: unknown field(s) {', '.join(sorted(extra))}")
    for name, (types, required) in fields.items():
        if name not in msg:
            if required:
                raise BadMessage(f"{msg['type']}: {name!r} is required")
            msg[name] = None
        elif not isinstance(msg[name], types) or (isinstance(msg[name], bool) and bool not in types):
            raise BadMessage(f"{msg['type']}: {name!r} has the wrong type")
    check_values(msg)
    return msg


def check_values(msg: dict) -> None:
    if msg.get("prompt") is not None:
        check_prompt(msg["type"], msg["prompt"])
    if msg["type"] == "prepare":
        if not 1 <= len(msg["prompts"]) <= MAX_PREPARE:
            raise BadMessage(f"prepare: give 1-{MAX_PREPARE} prompts")
        for prompt in msg["prompts"]:
            if not isinstance(prompt, str):
                raise BadMessage("prepare: 'prompts' must be a list of strings")
            check_prompt("prepare", prompt)
    seed = msg.get("seed")
    if seed is not None and not 0 <= seed < 2**63:
        raise BadMessage(f"{msg['type']}: the seed must be in [0, 2^63)")
    if msg["type"] == "prompt":
        msg["transition"] = transition_entry(msg["transition"])
    if msg["type"] == "loras":
        msg["loras"] = [lora_entry(i, e) for i, e in enumerate(msg["loras"])]
        if len(msg["loras"]) > MAX_LORAS:
            raise BadMessage(f"loras: at most {MAX_LORAS} LoRAs")


def check_prompt(kind: str, prompt: str) -> None:
    if not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        raise BadMessage(f"{kind}: the prompt must be 1-{MAX_PROMPT_CHARS} characters")
    if not encodable(prompt):
        raise BadMessage(f"{kind}: the prompt is not valid Unicode text (a lone surrogate such as \\ud800): "
                         "a recording could not store it")


def transition_entry(entry: dict | None) -> Transition:
    """A `prompt` message's `{"blocks": N, "kind": "linear" | "spherical"}` (kind defaults to linear; none: a cut)."""
    if entry is None:
        return CUT
    blocks, kind = entry.get("blocks"), entry.get("kind", "linear")
    if set(entry) - {"blocks", "kind"} or not isinstance(blocks, int) or isinstance(blocks, bool) \
            or not 0 <= blocks <= MAX_TRANSITION_BLOCKS:
        raise BadMessage(f'prompt: transition must be {{"blocks": 0-{MAX_TRANSITION_BLOCKS}, '
                         '"kind": "linear" or "spherical"}')
    if kind not in ("linear", "spherical"):
        raise BadMessage('prompt: transition kind must be "linear" or "spherical"')
    return Transition(blocks, kind)


def lora_entry(i: int, entry) -> dict:
    """One `{"file", "scale"}` of a `loras` message, its scale defaulting to 1."""
    where = f"loras[{i}]"
    if not isinstance(entry, dict) or set(entry) - {"file", "scale"} or "file" not in entry:
        raise BadMessage(f'{where} must be {{"file": "...", "scale": number}}')
    file, scale = entry["file"], entry.get("scale", 1.0)
    if not isinstance(file, str) or not file.strip() or len(file) > MAX_PATH_CHARS or not encodable(file):
        raise BadMessage(f"{where}.file must be a path or Hub file of 1-{MAX_PATH_CHARS} characters")
    try:
        finite = isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(float(scale))
    except OverflowError:  # an int past float's range
        finite = False
    if not finite:
        raise BadMessage(f"{where}.scale must be a finite number")
    return {"file": file, "scale": float(scale)}


def encode_frame(session: int, index: int, rgb, quality: int) -> bytes:
    """One frame message: header + JPEG of `rgb` (a uint8 [3, H, W] tensor)."""
    from PIL import Image

    _, h, w = rgb.shape
    buf = io.BytesIO()
    buf.write(FRAME_HEADER.pack(FRAME_MAGIC, session, index, w, h))
    Image.fromarray(rgb.permute(1, 2, 0).contiguous().numpy()).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def decode_header(data: bytes) -> dict:
    magic, session, frame, width, height = FRAME_HEADER.unpack_from(data)
    if magic != FRAME_MAGIC:
        raise ValueError("not a cfcli live frame")
    return {"session": session, "frame": frame, "width": width, "height": height}
