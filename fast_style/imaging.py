"""The one source of pre- and post-processing: reading images, value range, normalisation, padding.

Conventions used everywhere in fast_style (training, inference, Gatys, evaluation):

* an image tensor is float32 RGB, shape ``(3, H, W)`` or ``(B, 3, H, W)``, values in ``[0, 1]``;
* the loss network sees ``normalize_imagenet(x)`` (torchvision's ImageNet mean/std);
* the transform network pads its input to a multiple of 4 and crops its output back.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

# torchvision's ImageNet statistics. Both torchvision's VGG weights and the Caffe-converted
# file in ../shared expect RGB in [0, 1] normalised with these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
)

# Pillow refuses images above 2 × MAX_IMAGE_PIXELS as decompression bombs. fast_style's
# default limit is 200 MP (a 100 MP photo must go through tiled inference); callers may lower it.
DEFAULT_MAX_PIXELS = 200_000_000


class ImageReadError(ValueError):
    """An image file that is missing, unreadable, corrupt or too large."""


def normalize_imagenet(x: torch.Tensor) -> torch.Tensor:
    """Map RGB ``x`` in [0, 1], shape (B, 3, H, W), to the loss network's input convention."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def list_images(root: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """All image files under ``root`` (sorted, by extension), searched recursively by default."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    pattern = "**/*" if recursive else "*"
    return sorted(
        p for p in root.glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def _sixteen_bit_to_8(img: Image.Image) -> Image.Image:
    """Greyscale 16/32-bit integer images (modes I;16*, I) → 8-bit L, scaled by the type's range."""
    arr = np.asarray(img)
    peak = 65535.0 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0
    return Image.fromarray(
        np.clip(arr.astype(np.float64) / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
    )


def split_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Convert any Pillow mode to ``(RGB image, alpha channel or None)``.

    Handles greyscale, palette (with transparency), LA/RGBA/PA, CMYK, YCbCr, LAB, HSV, 16-bit
    and float greyscale.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        img = _sixteen_bit_to_8(img)
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0  # float images in [0, 1] or [0, 255]
        img = Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A")
    if img.mode == "CMYK":
        # Pillow's CMYK→RGB is the naive (1 - c)(1 - k) formula, fine for photos without a profile.
        return img.convert("RGB"), None
    return (img if img.mode == "RGB" else img.convert("RGB")), None


def _checked_load(
    im: Image.Image, name: str, max_pixels: int | None, too_large: type[ImageReadError]
) -> Image.Image:
    """Refuse more than ``max_pixels`` before decoding (header only), then decode and apply
    the EXIF orientation."""
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        raise too_large(
            f"{name}: {w}x{h} = {w * h / 1e6:.1f} MP exceeds the limit of {max_pixels / 1e6:.1f} MP"
        )
    im.load()
    return ImageOps.exif_transpose(im) or im


def open_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode and EXIF-orient an image file.

    Raises ``ImageReadError`` with a one-line message for a missing, corrupt, non-image or
    too-large file. The returned image keeps its mode (use ``split_alpha`` for RGB).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a directory, not an image")
    try:
        with Image.open(path) as im:
            return _checked_load(im, str(path), max_pixels, ImageReadError)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: not a readable image ({type(e).__name__})") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{path}: corrupt or truncated image ({e})") from e


def load_rgb(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image as RGB (EXIF-oriented, alpha dropped)."""
    return split_alpha(open_image(path, max_pixels))[0]


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB or L PIL image → float tensor (C, H, W) in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """Float tensor (3, H, W) or (1, 3, H, W) in [0, 1] → RGB PIL image (rounded, clamped)."""
    if x.dim() == 4:
        x = x[0]
    arr = x.detach().float().clamp(0, 1).mul(255.0).add_(0.5).to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy())


def load_tensor(
    path: str | os.PathLike,
    long_side: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Read an image as a (1, 3, H, W) tensor in [0, 1], optionally resized to ``long_side``."""
    img = load_rgb(path, max_pixels)
    if long_side is not None:
        img = resize_long_side(img, long_side)
    return pil_to_tensor(img).unsqueeze(0)


def resize_long_side(img: Image.Image, long_side: int) -> Image.Image:
    """Resize so that max(W, H) == long_side, keeping the aspect ratio (Lanczos)."""
    w, h = img.size
    scale = long_side / max(w, h)
    if scale == 1:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


def pad_to_multiple(
    x: torch.Tensor, multiple: int = 4, min_size: int = 8
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) on the bottom/right to a multiple of ``multiple`` and at least ``min_size``.

    Reflection padding where the image is large enough, replicate otherwise (a 1-pixel image
    cannot be reflected). Returns the padded tensor and the original ``(H, W)`` for ``crop_to``.
    """
    h, w = x.shape[-2:]
    th = max(min_size, -(-h // multiple) * multiple)
    tw = max(min_size, -(-w // multiple) * multiple)
    ph, pw = th - h, tw - w
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo ``pad_to_multiple``: keep the top-left ``size = (H, W)``."""
    h, w = size
    return x[..., :h, :w]


def save_image(
    x: torch.Tensor | Image.Image,
    path: str | os.PathLike,
    alpha: Image.Image | None = None,
    quality: int = 95,
) -> Path:
    """Write an image; the format follows the extension (jpg, png, webp, …).

    ``alpha`` (an L image of the same size) is re-attached for formats that carry it.
    """
    path = Path(path)
    img = tensor_to_pil(x) if isinstance(x, torch.Tensor) else x
    ext = path.suffix.lower()
    if alpha is not None and ext in (".png", ".webp", ".tif", ".tiff"):
        img = img.convert("RGBA")
        img.putalpha(alpha.resize(img.size) if alpha.size != img.size else alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"quality": quality} if ext in (".jpg", ".jpeg", ".webp") else {}
    try:
        img.save(path, **kwargs)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: cannot write this image format ({e})") from e
    return path


def cover_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale (B, C, H, W) to cover ``size`` (keeping the aspect ratio), then centre-crop to it."""
    scale = max(size[0] / x.shape[-2], size[1] / x.shape[-1])
    x = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
    top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def image_grid(rows: Sequence[Iterable[torch.Tensor]], pad: int = 2) -> torch.Tensor:
    """Tile equally sized (3, H, W) images into one (3, H', W') grid, row by row (white padding)."""
    rows = [list(r) for r in rows]
    h, w = rows[0][0].shape[-2:]
    ncol = max(len(r) for r in rows)
    grid = torch.ones(3, len(rows) * (h + pad) + pad, ncol * (w + pad) + pad)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y : y + h, x : x + w] = img.detach().float().cpu().clamp(0, 1)
    return grid


# ---------------------------------------------------------------------------------------------
# Uploads: the same rules as ``open_image`` (pixel limit before decoding, full decode, EXIF
# orientation), for bytes that never touch the disk (fast_style.serve).

# Pillow formats accepted from untrusted uploads: raster formats only (no EPS/PDF, which would
# call Ghostscript, no exotic plugins). MPO is how Pillow opens many phone JPEGs.
UPLOAD_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")


class NotAnImageError(ImageReadError):
    """Bytes that are not an image of an accepted format."""


class ImageTooLargeError(ImageReadError):
    """An image whose pixel count exceeds the limit (checked before decoding)."""


def open_image_bytes(
    data: bytes,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    name: str = "upload",
    formats: Sequence[str] | None = UPLOAD_FORMATS,
) -> Image.Image:
    """Decode an image held in memory with ``open_image``'s rules; ``formats`` restricts the
    Pillow decoders tried (None: all). Raises ``NotAnImageError``, ``ImageTooLargeError`` or
    ``ImageReadError`` (corrupt or truncated) with a one-line message naming ``name``."""
    import io

    if formats:
        Image.init()  # register every plugin, then keep the accepted ones this Pillow has
        formats = [f for f in formats if f in Image.OPEN]
    try:
        with Image.open(io.BytesIO(data), formats=formats or None) as im:
            return _checked_load(im, name, max_pixels, ImageTooLargeError)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name}: too many pixels ({e})") from e
    except UnidentifiedImageError as e:
        accepted = ", ".join(formats) if formats else "any Pillow format"
        raise NotAnImageError(f"{name}: not an image of an accepted type ({accepted})") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{name}: corrupt or truncated image ({e})") from e
