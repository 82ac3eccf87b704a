"""The one source of pre- and post-processing: reading images, value range, normalisation, padding.

Conventions used everywhere in fast_style (training, inference, Gatys, evaluation):

* an image tensor is float32 RGB, shape ``(3, H, W)`` or ``(B, 3, H, W)``, values in ``[0, 1]``;
* the loss network sees ``normalize_imagenet(x)`` (torchvision's ImageNet mean/std);
* the transform network pads its input to a multiple of 4 and crops its output back.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from fast_style.core.fileio import atomic_write

# torchvision's ImageNet statistics. Both torchvision's VGG weights and the Caffe-converted
# file in ../shared expect RGB in [0, 1] normalised with these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
)

# The one pixel limit of fast_style (a 100 MP photo must go through tiled inference); callers
# may lower or raise it. Pillow's own decompression-bomb check (a warning above
# Image.MAX_IMAGE_PIXELS ≈ 89 MP, an error above twice that) is switched off while fast_style
# opens an image, so that this number, and only this one, applies.
DEFAULT_MAX_PIXELS = 200_000_000

# A mask may differ from its image in resolution, not in shape: aspect ratios within 2 %.
MASK_ASPECT_TOLERANCE = 0.02


class ImageReadError(ValueError):
    """An image file that is missing, unreadable, corrupt or too large."""


def normalize_imagenet(x: torch.Tensor) -> torch.Tensor:
    """Map RGB ``x`` in [0, 1], shape (B, 3, H, W), to the loss network's input convention."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(
    root: str | os.PathLike, recursive: bool = True, notes: list[str] | None = None
) -> list[Path]:
    """All image files under ``root`` (sorted, by extension), searched recursively by default.

    Symlinked sub-folders are followed, but every real folder is searched once: a link back to
    an ancestor (a loop) or a second path to a folder already searched is skipped, with one line
    appended to ``notes`` (when given) for each."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not recursive:
        return sorted(p for p in root.iterdir() if _is_image_file(p))
    found: list[Path] = []
    visited = {os.path.realpath(root): root}  # real folder → the first path it was reached by
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        found += [here / f for f in filenames if _is_image_file(here / f)]
        # Real sub-folders before links, so that a folder and a link to it keep the real name.
        order = sorted(dirnames, key=lambda d: (os.path.islink(here / d), d))
        dirnames[:] = _unvisited(here, order, visited, notes)
    return sorted(found)


def _unvisited(
    parent: Path, names: list[str], visited: dict[str, Path], notes: list[str] | None
) -> list[str]:
    """The sub-folders of ``parent`` not searched yet (marking them visited); notes the others."""
    keep = []
    parent_real = os.path.realpath(parent)
    for name in names:
        real = os.path.realpath(parent / name)
        if real not in visited:
            visited[real] = parent / name
            keep.append(name)
        elif notes is not None:
            # A folder that contains the current one is a loop; anything else is a duplicate.
            loop = parent_real == real or parent_real.startswith(real.rstrip(os.sep) + os.sep)
            why = "links back to" if loop else "is the same folder as"
            notes.append(f"{parent / name}: skipped, it {why} {visited[real]}")
    return keep


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


class _PillowLimitLift:
    """Switch Pillow's decompression-bomb check off (``Image.MAX_IMAGE_PIXELS = None``) while
    fast_style opens images, so that fast_style's own ``max_pixels`` is the only limit.

    Pillow reads that module global at every check, so the lift must last from ``Image.open``
    to the end of decoding (GIF, TIFF and MPO check again while loading). The server decodes in
    threads: overlapping opens share one lift (a counter under a lock), and the last one out
    restores the previous value, so neither pre-empts nor leaks the lift. Pillow calls made
    elsewhere in the process during a lift are unchecked too; every read of an untrusted image
    in fast_style goes through ``open_image`` / ``open_image_bytes``, which apply the limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: int | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    Image.MAX_IMAGE_PIXELS = self._saved


_pillow_limit_lifted = _PillowLimitLift()


def _megapixels(n: int) -> str:
    """``185.0 MP``; small limits (tests, tight servers) in pixels rather than ``0.0 MP``."""
    return f"{n / 1e6:.1f} MP" if n >= 100_000 else f"{n} pixels"


def _checked_load(
    im: Image.Image,
    name: str,
    max_pixels: int | None,
    too_large: type[ImageReadError],
    hint: str | None = None,
) -> Image.Image:
    """Refuse more than ``max_pixels`` before decoding (header only), then decode and apply
    the EXIF orientation. ``hint`` (how to raise the limit) ends the too-large message."""
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        raise too_large(
            f"{name}: {w}x{h} = {_megapixels(w * h)} exceeds the limit of "
            f"{_megapixels(max_pixels)}" + (f"; {hint}" if hint else "")
        )
    im.load()
    return ImageOps.exif_transpose(im) or im


def open_image(
    path: str | os.PathLike,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    hint: str | None = None,
) -> Image.Image:
    """Open, fully decode and EXIF-orient an image file.

    Raises ``ImageReadError`` with a one-line message for a missing, corrupt, non-image or
    too-large file (more than ``max_pixels``, None: no limit; ``hint`` ends that message, e.g.
    the option that raises the limit). The returned image keeps its mode (use ``split_alpha``
    for RGB).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a directory, not an image")
    try:
        with _pillow_limit_lifted(), Image.open(path) as im:
            return _checked_load(im, str(path), max_pixels, ImageReadError, hint)
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

    ``alpha`` (an L image of the same size) is re-attached for formats that carry it. The file
    is written crash-safely (``fileio.atomic_write``): a killed run never leaves a half-written
    image under ``path``.
    """
    path = Path(path)
    img = tensor_to_pil(x) if isinstance(x, torch.Tensor) else x
    ext = path.suffix.lower()
    # The temporary file's name has no image extension, so the format is named explicitly.
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise ValueError(f"{path}: cannot write this image format ({ext or 'no extension'})")
    if alpha is not None and ext in (".png", ".webp", ".tif", ".tiff"):
        img = img.convert("RGBA")
        img.putalpha(alpha.resize(img.size) if alpha.size != img.size else alpha)
    kwargs = {"quality": quality} if ext in (".jpg", ".jpeg", ".webp") else {}
    try:
        with atomic_write(path) as tmp:
            img.save(tmp, format=fmt, **kwargs)
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
    table = [list(r) for r in rows]
    h, w = table[0][0].shape[-2:]
    ncol = max(len(r) for r in table)
    grid = torch.ones(3, len(table) * (h + pad) + pad, ncol * (w + pad) + pad)
    for i, row in enumerate(table):
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
    hint: str | None = None,
) -> Image.Image:
    """Decode an image held in memory with ``open_image``'s rules; ``formats`` restricts the
    Pillow decoders tried (None: all). Raises ``NotAnImageError``, ``ImageTooLargeError`` or
    ``ImageReadError`` (corrupt or truncated) with a one-line message naming ``name``."""
    import io

    accepted: list[str] | None = None
    if formats:
        Image.init()  # register every plugin, then keep the accepted ones this Pillow has
        accepted = [f for f in formats if f in Image.OPEN]
    try:
        with _pillow_limit_lifted(), Image.open(io.BytesIO(data), formats=accepted or None) as im:
            return _checked_load(im, name, max_pixels, ImageTooLargeError, hint)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name}: too many pixels ({e})") from e
    except UnidentifiedImageError as e:
        shown = ", ".join(accepted) if accepted else "any Pillow format"
        raise NotAnImageError(f"{name}: not an image of an accepted type ({shown})") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{name}: corrupt or truncated image ({e})") from e


# ---------------------------------------------------------------------------------------------
# Masks: one rule for the CLI, the library and the server.


class MaskSizeError(ValueError):
    """A mask whose aspect ratio differs from its image's (it would be stretched)."""

    def __init__(self, mask_size: tuple[int, int], image_size: tuple[int, int]):
        (mw, mh), (w, h) = mask_size, image_size
        super().__init__(f"mask is {mw}x{mh} but the image is {w}x{h}: aspect ratios differ")
        self.mask_size, self.image_size = (mw, mh), (w, h)


def check_mask_size(mask_size: tuple[int, int], image_size: tuple[int, int]) -> None:
    """Raise ``MaskSizeError`` unless a ``(W, H)`` mask has the image's aspect ratio within
    ``MASK_ASPECT_TOLERANCE`` (2 %); any resolution is fine, the mask is resized."""
    (mw, mh), (w, h) = mask_size, image_size
    # |mw/mh - w/h| > 2 % of w/h, multiplied out (no division by a zero height).
    if abs(mw * h - mh * w) > MASK_ASPECT_TOLERANCE * w * mh:
        raise MaskSizeError(mask_size, image_size)
