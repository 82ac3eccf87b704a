"""One stylise request: decode (413/415/400/422), stylise, encode."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from fastapi import UploadFile
from PIL import Image

from fast_style.core.imaging import (
    UPLOAD_FORMATS,
    ImageReadError,
    ImageTooLargeError,
    NotAnImageError,
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


def mask_to_l(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A mask upload as L (white = style); transparent pixels count as black. Its aspect ratio
    must match the image's (it is resized to the image by the stylizer); else 422."""
    # A local import keeps this change inside mask_to_l; it may join the imports above.
    from fast_style.core.imaging import MaskSizeError, check_mask_size

    rgb, alpha = split_alpha(mask)
    m = rgb.convert("L")
    if alpha is not None:
        m = Image.composite(m, Image.new("L", m.size, 0), alpha)
    try:
        check_mask_size(m.size, size)
    except MaskSizeError as e:
        detail = {"mask_size": list(e.mask_size), "image_size": list(e.image_size)}
        raise ApiError(422, str(e), detail) from None
    return m


def run_job(registry: ModelRegistry, entry: StyleEntry, job: Job) -> Image.Image:
    """The network and post-processing (in a worker thread): the same call as ``stylize.py``."""
    try:
        model = registry.stylizer(entry)
    except (ModelFileError, ValueError) as e:
        raise ApiError(500, f"model {entry.name!r} could not be loaded", str(e)) from None
    try:
        return model.stylize_image(
            job.image,
            strength=job.strength,
            preserve_color=job.preserve_color,
            max_size=job.max_side,
            mask=job.mask,
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
