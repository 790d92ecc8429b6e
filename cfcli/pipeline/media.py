"""Pictures and clips in, model-sized tensors out: center crop to the preset's aspect ratio, resize, [-1, 1]."""

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


def load_image(path: Path, width: int, height: int) -> Tensor:
    """A PNG/JPEG/WebP picture as [3, height, width] in [-1, 1]."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise CfError(f"image not found: {path}", "check the --image path")
    try:
        with Image.open(path) as img:
            img = fit(img.convert("RGB"), width, height)
            return to_model_range(np.asarray(img)).permute(2, 0, 1).contiguous()
    except (UnidentifiedImageError, OSError) as exc:
        raise CfError(f"could not read image {path}: {exc}".splitlines()[0],
                      "use a PNG, JPEG or WebP picture") from exc


def fit_frames(frames: Tensor, width: int, height: int) -> Tensor:
    """uint8 frames [T, 3, h, w] -> [T, 3, height, width] uint8, cropped and resized like `fit`."""
    from PIL import Image

    if frames.shape[-2:] == (height, width):
        return frames
    out = [np.asarray(fit(Image.fromarray(f.permute(1, 2, 0).numpy()), width, height)) for f in frames]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
