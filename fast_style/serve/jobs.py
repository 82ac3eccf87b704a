"""One stylise request: the styles (404/422), decode (413/415/400/422), stylise, encode."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import UploadFile
from PIL import Image

from fast_style.core.imaging import (
    UPLOAD_FORMATS,
    ImageReadError,
    ImageTooLargeError,
    MaskSizeError,
    NotAnImageError,
    check_mask_size,
    open_image_bytes,
    split_alpha,
)
from fast_style.core.model_io import ModelFileError
from fast_style.serve.errors import ApiError, human_size
from fast_style.serve.limits import Limits
from fast_style.serve.registry import ModelRegistry, StyleEntry


@dataclass
class Job:
    """A decoded request, ready for the network."""

    image: Image.Image
    mask: Image.Image | None
    strength: float
    preserve_color: bool
    max_side: int
    # A multi-style model's weights: (S,) for one style or a mix, (2, S) with style_mask (row 0
    # where it is white, row 1 where black); None for a single-style model.
    style: torch.Tensor | None = None
    style_mask: Image.Image | None = None

    @property
    def pixels(self) -> int:
        """Pixels the network will see (after downscaling to ``max_side``)."""
        w, h = self.image.size
        scale = min(1.0, self.max_side / max(w, h))
        return round(w * scale) * round(h * scale)


def header_pixels(data: bytes | None, limits: Limits) -> int:
    """The pixel count an upload decodes to, read from its header alone; 0 for what
    ``decode_upload`` refuses before decoding (not an image, above ``max_pixels``)."""
    if not data:
        return 0
    Image.init()  # as open_image_bytes: only the accepted formats this Pillow has
    formats = [f for f in UPLOAD_FORMATS if f in Image.OPEN]
    try:
        with Image.open(io.BytesIO(data), formats=formats) as im:
            pixels = im.size[0] * im.size[1]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 0
    return pixels if pixels <= limits.max_pixels else 0


def decode_upload(data: bytes, limits: Limits, name: str) -> Image.Image:
    """Bytes → image, with the errors mapped to status codes."""
    if not data:
        raise ApiError(400, f"{name}: empty upload")
    try:
        return open_image_bytes(data, limits.max_pixels, name)
    except ImageTooLargeError as e:
        raise ApiError(413, str(e), {"max_pixels": limits.max_pixels}) from None
    except NotAnImageError as e:
        raise ApiError(415, str(e)) from None
    except ImageReadError as e:
        raise ApiError(400, str(e)) from None


def mask_to_l(mask: Image.Image, size: tuple[int, int], name: str = "mask") -> Image.Image:
    """A mask upload as L (white = style, or style A of a style mask); transparent pixels
    count as black. Its aspect ratio must match the image's (it is resized to the image by the
    stylizer); else 422 (the message names a ``style_mask``; a ``mask``'s is as it always was)."""
    rgb, alpha = split_alpha(mask)
    m = rgb.convert("L")
    if alpha is not None:
        m = Image.composite(m, Image.new("L", m.size, 0), alpha)
    try:
        check_mask_size(m.size, size)
    except MaskSizeError as e:
        detail = {"mask_size": list(e.mask_size), "image_size": list(e.image_size)}
        prefix = "" if name == "mask" else f"{name}: "
        raise ApiError(422, f"{prefix}{e}", detail) from None
    return m


def choose_styles(
    registry: ModelRegistry,
    entry: StyleEntry,
    style_b: str | None,
    blend: float | None,
    painted: bool,
) -> tuple[torch.Tensor | None, StyleEntry | None]:
    """The style weights of a request and its second style: (None, None) for a single-style
    model alone (run as it always was); (S,) one-hot or a mix ``(1 - blend) A + blend B``;
    (2, S) rows A, B when ``painted`` (a ``style_mask`` was sent). 404 for an unknown
    ``style_b``; 422 for a combination that does not make sense (each says why)."""
    if style_b is None:
        if blend is not None:
            raise ApiError(422, "blend needs style_b: the style to mix in")
        if painted:
            raise ApiError(422, "style_mask needs style_b: the style for its black areas")
        return (_one_hot(entry) if entry.num_styles > 1 else None), None
    other = registry.get(style_b)
    if other.path != entry.path or entry.num_styles == 1:
        same = [e.name for e in registry.all_entries().values() if e.path == entry.path]
        raise ApiError(
            422,
            f"style_b {style_b!r} is not a style of the model of {entry.name!r} "
            f"({entry.path.name}): two styles are mixed or painted by one multi-style model",
            {"same_model": [n for n in same if n != entry.name]},
        )
    if other.index == entry.index:
        raise ApiError(422, f"style_b is the same style as style ({entry.style!r})")
    a, b = _one_hot(entry), _one_hot(other)
    if painted and blend is not None:
        raise ApiError(
            422,
            "blend and style_mask exclude each other: blend mixes the two styles everywhere, "
            "style_mask paints them side by side",
        )
    if painted:
        return torch.stack([a, b]), other
    if blend is None:
        raise ApiError(
            422, "style_b needs blend (0..1: its weight in a mix) or a style_mask (where it goes)"
        )
    return (1.0 - blend) * a + blend * b, other


def _one_hot(entry: StyleEntry) -> torch.Tensor:
    w = torch.zeros(entry.num_styles, dtype=torch.float32)
    w[entry.index] = 1.0
    return w


def run_job(registry: ModelRegistry, entry: StyleEntry, job: Job) -> Image.Image:
    """The network and post-processing (in a worker thread): the same call as ``stylize.py``."""
    try:
        model = registry.stylizer(entry)
    except (ModelFileError, ValueError) as e:
        raise ApiError(500, f"model {entry.name!r} could not be loaded", str(e)) from None
    try:
        styles: dict[str, Any] = {} if job.style is None else {"style": job.style}
        if job.style_mask is not None:
            styles["style_mask"] = job.style_mask
        return model.stylize_image(
            job.image,
            strength=job.strength,
            preserve_color=job.preserve_color,
            max_size=job.max_side,
            mask=job.mask,
            **styles,
        )
    except ValueError as e:
        raise ApiError(422, str(e)) from None
    except MemoryError:
        raise ApiError(503, "out of memory: try a smaller max_size") from None
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            raise ApiError(503, "out of memory: try a smaller max_size") from None
        raise


def encode(img: Image.Image, fmt: str) -> bytes:
    """The result as PNG (keeps alpha), JPEG or WebP."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=3)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=92)
    else:
        img.convert("RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


async def read_limited(upload: UploadFile, limit: int, name: str) -> bytes:
    """The upload's bytes; 413 above ``limit``."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(
            413,
            f"{name}: upload too large: the limit is {human_size(limit)}",
            {"limit_bytes": limit},
        )
    return data


def download_name(filename: str | None, style: str, fmt: str) -> str:
    """``<photo>_<style>.<ext>`` with only safe characters."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(filename or "photo").stem)[:60] or "photo"
    return f"{stem}_{re.sub(r'[^A-Za-z0-9_-]+', '_', style)}.{'jpg' if fmt == 'jpeg' else fmt}"
