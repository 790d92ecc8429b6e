"""Pictures and clips in, model-sized tensors out: center crop to the preset's aspect ratio, resize, [-1, 1]."""

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cfcli.errors import CfError


def fit(img, width: int, height: int):
    """Center-crop a PIL image to width:height, then resize (bilinear, as the official torchvision Resize)."""
    from PIL import Image

    w, h = img.size
    if w * height > h * width:  # too wide
        cw = round(h * width / height)
        img = img.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h))
    elif w * height < h * width:  # too tall
        ch = round(w * height / width)
        img = img.crop((0, (h - ch) // 2, w, (h - ch) // 2 + ch))
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    return img


def to_model_range(rgb: np.ndarray | Tensor) -> Tensor:
    """uint8 [..., H, W, 3] or [..., 3, H, W] tensor -> float32 in [-1, 1] (ToTensor then Normalize(0.5, 0.5))."""
    x = torch.as_tensor(np.array(rgb)) if isinstance(rgb, np.ndarray) else rgb
    return (x.float() / 255 - 0.5) / 0.5


IMAGE_HINT = "use a PNG, JPEG or WebP picture"


def load_image(path: Path, width: int, height: int) -> Tensor:
    """A PNG/JPEG/WebP picture as [3, height, width] in [-1, 1], upright (EXIF orientation) and in 8-bit RGB."""
    path = Path(path)
    with _opened(path) as img:
        try:
            rgb = to_rgb(img)
        except (OSError, ValueError, SyntaxError) as exc:  # a truncated or damaged file shows up on decode
            raise CfError(f"could not read image {path}: {exc}".splitlines()[0], IMAGE_HINT) from exc
        return to_model_range(np.asarray(fit(rgb, width, height))).permute(2, 0, 1).contiguous()


def check_image(path: Path) -> None:
    """Refuse a missing, non-image, damaged or oversized `--image` cheaply (header and checksums, no resize)."""
    with _opened(Path(path)) as img:
        try:
            img.verify()
        except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for a damaged file
            raise CfError(f"could not read image {path}: {exc}".splitlines()[0], IMAGE_HINT) from exc


def check_image_input(preset, image: Path | None) -> None:
    """`--image` refused before any model loads: it needs a frame-wise preset and a readable picture."""
    if image is None:
        return
    if preset.block_frames != 1:
        raise CfError(f"--image needs a frame-wise preset; {preset.name} is {preset.mode}", "use --mode framewise")
    check_image(image)


@contextmanager
def _opened(path: Path):
    """Image.open with the failures worded for the user; a decompression bomb is refused, not just warned about."""
    from PIL import Image, UnidentifiedImageError

    if path.is_dir():
        raise CfError(f"image {path} is a folder, not a picture", IMAGE_HINT)
    if not path.is_file():
        raise CfError(f"image not found: {path}", "check the --image path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CfError(f"image {path} is over Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels",
                      "scale the picture down first") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CfError(f"could not read image {path}: {exc}".splitlines()[0], IMAGE_HINT) from exc
    with img:
        yield img


def to_rgb(img):
    """8-bit RGB of any Pillow mode, turned upright by its EXIF orientation.

    16-bit and 32-bit grey (I;16, I) are scaled from 0…65535, float grey (F) from 0…1; transparent pixels
    (RGBA, LA, PA, palette transparency) are composited on white, as viewers show them; CMYK, 1-bit, palette and
    YCbCr go through Pillow's own conversion.
    """
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":  # I, I;16, I;16B, …
        scale = 1 / 257 if img.mode != "F" else 255.0
        grey = np.asarray(img, dtype=np.float64) * scale
        img = Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def fit_frames(frames: Tensor, width: int, height: int) -> Tensor:
    """uint8 frames [T, 3, h, w] -> [T, 3, height, width] uint8, cropped and resized like `fit`."""
    from PIL import Image

    if frames.shape[-2:] == (height, width):
        return frames
    out = [np.asarray(fit(Image.fromarray(f.permute(1, 2, 0).numpy()), width, height)) for f in frames]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
