"""Colour preservation (Gatys, Bethge, Hertzmann & Shechtman 2016, "Preserving Color in Neural
Artistic Style Transfer"), shared by inference and the Gatys baseline.

All functions take and return RGB tensors (B, 3, H, W) in [0, 1].
"""

from __future__ import annotations

import torch

# ITU-R BT.601 RGB → YIQ (the paper's luminance-only transfer uses YIQ).
_RGB2YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _apply(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", m.to(x.device, x.dtype), x)


def rgb_to_yiq(x: torch.Tensor) -> torch.Tensor:
    return _apply(_RGB2YIQ, x)


def yiq_to_rgb(x: torch.Tensor) -> torch.Tensor:
    return _apply(_YIQ2RGB, x)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma (B, 1, H, W)."""
    return rgb_to_yiq(x)[:, :1]


def transfer_luminance(
    stylized: torch.Tensor, content: torch.Tensor, match_stats: bool = False
) -> torch.Tensor:
    """Luminance-only transfer: the stylised image's Y with the content's I and Q (chroma).

    ``match_stats`` first matches the stylised luminance's mean and std to the content's
    (the paper's luminance histogram matching, to first and second moments).
    """
    ys, yc = rgb_to_yiq(stylized.float()), rgb_to_yiq(content.float())
    y = ys[:, :1]
    if match_stats:
        mu_s, sd_s = y.mean((2, 3), keepdim=True), y.std((2, 3), keepdim=True).clamp_min(1e-6)
        mu_c, sd_c = yc[:, :1].mean((2, 3), keepdim=True), yc[:, :1].std((2, 3), keepdim=True)
        y = (y - mu_s) / sd_s * sd_c + mu_c
    return yiq_to_rgb(torch.cat([y, yc[:, 1:]], 1)).clamp(0, 1)


def match_color(source: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Colour histogram matching to first and second moments: an affine map of ``source``'s RGB
    so that its mean and covariance equal ``reference``'s (the paper's §2.1, using the
    symmetric matrix square roots, i.e. the "Image Analogies" colour transfer)."""
    out = []
    for s, r in zip(source.float(), reference.float(), strict=True):
        xs, xr = s.reshape(3, -1), r.reshape(3, -1)
        mu_s, mu_r = xs.mean(1, keepdim=True), xr.mean(1, keepdim=True)
        eye = torch.eye(3, device=s.device)
        cov_s = torch.cov(xs) + eps * eye
        cov_r = torch.cov(xr) + eps * eye
        a = _sqrtm(cov_r) @ torch.linalg.inv(_sqrtm(cov_s))
        out.append((a @ (xs - mu_s) + mu_r).reshape_as(s))
    return torch.stack(out).clamp(0, 1)


def _sqrtm(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive-definite 3×3 matrix."""
    vals, vecs = torch.linalg.eigh(m)
    return vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T


# --- Helpers for inference: affine colour maps fitted once, applied tile by tile, and the Oklab
# blend behind ``--strength``. All take and return (B, 3, H, W) RGB in [0, 1] unless stated.


def luminance_match_params(
    stylized: torch.Tensor, content: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, each (B, 1, 1, 1), with ``Y' = Y * scale + shift`` matching the
    stylised luminance's mean and std to the content's (``transfer_luminance(match_stats=True)``).

    Fitted on a small pass and applied to every tile, so tiled output matches untiled output."""
    ys, yc = luminance(stylized.float()), luminance(content.float())
    mu_s, sd_s = ys.mean((2, 3), keepdim=True), ys.std((2, 3), keepdim=True).clamp_min(1e-6)
    mu_c, sd_c = yc.mean((2, 3), keepdim=True), yc.std((2, 3), keepdim=True)
    scale = sd_c / sd_s
    return scale, mu_c - mu_s * scale


def transfer_luminance_affine(
    stylized: torch.Tensor,
    content: torch.Tensor,
    scale: torch.Tensor | float = 1.0,
    shift: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Luminance-only transfer with a given luminance map ``Y' = Y * scale + shift``."""
    ys, yc = rgb_to_yiq(stylized.float()), rgb_to_yiq(content.float())
    y = ys[:, :1] * scale + shift
    return yiq_to_rgb(torch.cat([y, yc[:, 1:]], 1)).clamp(0, 1)


def fit_color_match(
    source: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map of ``match_color`` as ``(A (B, 3, 3), b (B, 3, 1))``: ``x' = A x + b``."""
    mats, offsets = [], []
    for s, r in zip(source.float(), reference.float(), strict=True):
        xs, xr = s.reshape(3, -1), r.reshape(3, -1)
        mu_s, mu_r = xs.mean(1, keepdim=True), xr.mean(1, keepdim=True)
        eye = torch.eye(3, device=s.device)
        a = _sqrtm(torch.cov(xr) + eps * eye) @ torch.linalg.inv(_sqrtm(torch.cov(xs) + eps * eye))
        mats.append(a)
        offsets.append(mu_r - a @ mu_s)
    return torch.stack(mats), torch.stack(offsets)


def apply_color_affine(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Apply per-image affine colour maps from ``fit_color_match`` (clamped to [0, 1])."""
    out = torch.einsum("bij,bjhw->bihw", a.to(x.device, torch.float32), x.float())
    return (out + b.to(x.device, torch.float32)[..., None]).clamp(0, 1)


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0) + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


# Oklab (B. Ottosson 2020): linear sRGB → LMS, cube root, → Lab. A perceptually uniform space.
_RGB2LMS = torch.tensor(
    [
        [0.4122214708, 0.5363325363, 0.0514459929],
        [0.2119034982, 0.6806995451, 0.1073969566],
        [0.0883024619, 0.2817188376, 0.6299787005],
    ],
    dtype=torch.float64,
)
_LMS2LAB = torch.tensor(
    [
        [0.2104542553, 0.7936177850, -0.0040720468],
        [1.9779984951, -2.4285922050, 0.4505937099],
        [0.0259040371, 0.7827717662, -0.8086757660],
    ],
    dtype=torch.float64,
)
_LMS2RGB = torch.linalg.inv(_RGB2LMS)
_LAB2LMS = torch.linalg.inv(_LMS2LAB)


def rgb_to_oklab(x: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] → Oklab (L in [0, 1], a and b roughly in [-0.4, 0.4])."""
    lms = _apply(_RGB2LMS.float(), _srgb_to_linear(x.float()))
    return _apply(_LMS2LAB.float(), torch.sign(lms) * lms.abs().pow(1 / 3))


def oklab_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Oklab → sRGB in [0, 1] (clamped to the gamut)."""
    lms = _apply(_LAB2LMS.float(), x.float()) ** 3
    return _linear_to_srgb(_apply(_LMS2RGB.float(), lms))


def mix_oklab(photo: torch.Tensor, stylized: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Interpolate from ``photo`` (t = 0) to ``stylized`` (t = 1) in Oklab.

    ``t`` is a float or a (B, 1, H, W) map in [0, 1]. Straight lines in a perceptually uniform
    space make the perceived change proportional to ``t`` and avoid the dark, desaturated
    midpoints of mixing gamma-encoded RGB. Where ``t`` is exactly 0 or 1 the input is returned
    bit-exact (no colour-space round trip).
    """
    if isinstance(t, float | int):
        if t <= 0:
            return photo.float().clone()
        if t >= 1:
            return stylized.float().clone()
    lab = torch.lerp(rgb_to_oklab(photo), rgb_to_oklab(stylized), t)
    out = oklab_to_rgb(lab)
    if isinstance(t, torch.Tensor):
        out = torch.where(t <= 0, photo.float(), torch.where(t >= 1, stylized.float(), out))
    return out
