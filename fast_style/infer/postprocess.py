"""Post-processing after the network: colour preservation, strength and a soft mask."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image, ImageFilter

from fast_style.core import color
from fast_style.core.imaging import resize_long_side

MASK_FEATHER = 0.01  # Gaussian feather of a mask: this fraction of the image's long side


# --------------------------------------------------------------------------------------------
# Post-processing: colour preservation, strength and mask.


@dataclass
class PostProcess:
    """Per-pixel post-processing with its global parameters fitted once (whole image or the
    statistics pass of tiled inference). Tensors are (B, 3, H, W) in [0, 1]."""

    strength: float = 1.0
    preserve_color: bool = False
    match_histogram: bool = False
    lum: tuple[torch.Tensor, torch.Tensor] | None = None
    affine: tuple[torch.Tensor, torch.Tensor] | None = None

    def fit(self, stylized: torch.Tensor, content: torch.Tensor) -> PostProcess:
        if self.preserve_color and self.match_histogram:
            self.lum = color.luminance_match_params(stylized, content)
        elif self.match_histogram:
            self.affine = color.fit_color_match(stylized, content)
        return self

    def __call__(
        self, stylized: torch.Tensor, content: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``mask``: (B, 1, H, W) in [0, 1], 1 = full style; multiplies ``strength``."""
        out = stylized.float()
        if self.preserve_color:
            scale, shift = self.lum if self.lum is not None else (1.0, 0.0)
            out = color.transfer_luminance_affine(out, content, scale, shift)
        elif self.affine is not None:
            out = color.apply_color_affine(out, *self.affine)
        t: torch.Tensor | float = self.strength
        if mask is not None:
            t = mask.to(out) * self.strength
        return color.mix_oklab(content, out, t)

    @property
    def is_identity(self) -> bool:
        return self.strength >= 1 and not self.preserve_color and not self.match_histogram


def feather_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An L mask (255 = full style) resized to ``size = (W, H)`` with soft edges: blurred at
    ≤ 1024 px with a radius of ``MASK_FEATHER`` × long side, then upscaled bilinearly."""
    m = mask.convert("L")
    small = resize_long_side(m, min(1024, max(size)))
    radius = max(1.0, MASK_FEATHER * max(small.size))
    small = small.filter(ImageFilter.GaussianBlur(radius))
    return small.resize(size, Image.Resampling.BILINEAR)


def attach_alpha(img: Image.Image, alpha: Image.Image | None) -> Image.Image:
    if alpha is None:
        return img
    out = img.convert("RGBA")
    out.putalpha(alpha if alpha.size == img.size else alpha.resize(img.size))
    return out


def check_strength(strength: float) -> float:
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return float(strength)
