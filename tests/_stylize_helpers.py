"""Tiny models and synthetic images for the inference, CLI and export tests (no ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fast_style.core.model_io import describe, save_safetensors
from fast_style.core.network import TransformerNet

TINY = (8, 16, 16)


def tiny_net(
    seed: int = 0, channels: tuple[int, int, int] = TINY, num_residual: int = 1
) -> TransformerNet:
    """A small random-weight network (fast on CPU; enough for shapes, formats and equivalence)."""
    torch.manual_seed(seed)
    net = TransformerNet(channels, num_residual=num_residual).eval()
    with torch.no_grad():  # non-trivial instance-norm affine parameters
        for m in net.modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


def save_tiny(path: Path, style: str = "tiny", **kw) -> Path:
    net = tiny_net(**kw)
    return save_safetensors(net, path, describe(net, style, width="tiny"))


def save_tiny_ckpt(
    path: Path, style: str = "tiny", meta_overrides: dict | None = None, **kw
) -> Path:
    """A Lightning-style checkpoint: ``state_dict`` with ``net.*`` keys plus ``fast_style``."""
    net = tiny_net(**kw)
    meta = {**describe(net, style, width="tiny"), **(meta_overrides or {})}
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "fast_style": meta, "global_step": 7, "epoch": 0}, path)
    return path


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth, colourful synthetic RGB 'photo' (gradients plus blobs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = []
    for _c in range(3):
        fx, fy, ph = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 6)
        chans.append(
            0.5 + 0.4 * np.sin(fx * xx / max(w, 1) * 6 + ph) * np.cos(fy * yy / max(h, 1) * 6)
        )
    arr = np.stack(chans, -1) + rng.normal(0, 0.03, (h, w, 3))
    return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8), "RGB")


def odd_images() -> dict[str, Image.Image]:
    """One image per awkward Pillow mode the stylizer must accept."""
    base = photo(23, 17)
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 0
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    i16 = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    return {
        "L": base.convert("L"),
        "LA": base.convert("LA"),
        "RGBA": rgba,
        "P": pal,
        "P+transparency": pal_t,
        "CMYK": base.convert("CMYK"),
        "I;16": i16,
        "I": base.convert("I"),
        "F": base.convert("F"),
        "1": base.convert("1"),
        "YCbCr": base.convert("YCbCr"),
    }


def exif_rotated_jpeg(path: Path, w: int = 40, h: int = 24) -> Path:
    """A w×h JPEG whose EXIF orientation (6: rotate 90° clockwise) makes it display h×w."""
    img = photo(w, h)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, exif=exif.tobytes())
    return path
