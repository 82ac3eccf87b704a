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


def transfer_luminance(stylized: torch.Tensor, content: torch.Tensor, match_stats: bool = False) -> torch.Tensor:
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
