"""A flow-free temporal regulariser: consistency of the network under small camera motions.

After Wang, Wang, Zhong and Wang (AAAI 2020, "Consistent Video Style Transfer via Compound
Regularization"): no video and no optical flow are needed. From one still ``x`` a second
"frame" is made by a random smooth warp ``W`` plus noise ``n``; a network ``S`` that is stable
in time should commute with the warp:

    L_temporal = mean over valid pixels of ‖S(W(x) + n) − W(S(x))‖²

where the valid pixels are those the warp keeps inside the frame (the rest of ``W(·)`` is
padding, not picture). ``W`` is a random similarity transform (shift, rotation, zoom: what a
moving camera does between frames) plus a smooth random displacement field (the parallax of a
scene at several depths), sampled bilinearly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TemporalConfig:
    """The regulariser's weight and the distribution of the warps (``loss.temporal``).

    Shifts are in pixels of the training crop; the defaults are the motion between two video
    frames of a moving camera at 256 px, within the ranges Wang et al. 2020 sample."""

    weight: float = 0.0  # 0: off
    max_shift: float = 4.0  # px, uniform in [-max, max] per axis
    max_rotation: float = 2.0  # degrees
    max_zoom: float = 0.03  # relative scale change, uniform in [-max, max]
    flow_std: float = 1.0  # px, standard deviation of the smooth displacement field
    flow_grid: int = 4  # the displacement field is bicubic on a grid × grid lattice
    noise_std: float = 0.02  # Gaussian noise added to the warped frame, [0, 1] units


def random_warp_grid(
    b: int, h: int, w: int, cfg: TemporalConfig, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:  # fmt: skip
    """A sampling grid (B, H, W, 2) for ``F.grid_sample`` (normalised [-1, 1], x then y):
    output pixel p reads the input at A·p + d(p), A a random similarity, d a smooth field."""
    r = lambda *shape: torch.rand(*shape, generator=generator) * 2 - 1  # noqa: E731
    angle = r(b) * math.radians(cfg.max_rotation)
    zoom = 1 + r(b) * cfg.max_zoom
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    shift = torch.stack([r(b) * cfg.max_shift * 2 / w, r(b) * cfg.max_shift * 2 / h], -1)
    theta = torch.stack(
        [torch.stack([cos, -sin * h / w, shift[:, 0]], -1),
         torch.stack([sin * w / h, cos, shift[:, 1]], -1)], 1,
    )  # fmt: skip
    # The random numbers are drawn on the CPU (``generator`` reproduces them anywhere); the
    # (B, H, W, 2) grid is built on ``device``: no full-size host-to-device copy per step.
    grid = F.affine_grid(theta.to(device), [b, 3, h, w], align_corners=False)
    if cfg.flow_std > 0:
        coarse = torch.randn(b, 2, cfg.flow_grid, cfg.flow_grid, generator=generator)
        field = F.interpolate(coarse.to(device), size=(h, w), mode="bicubic", align_corners=True)
        scale = torch.tensor([2 / w, 2 / h], device=device).view(1, 2, 1, 1) * cfg.flow_std
        grid = grid + (field * scale).permute(0, 2, 3, 1)
    return grid


def warp(x: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (B, C, H, W) sampled at ``grid``; and the mask (B, 1, H, W) of output pixels whose
    source lies inside the frame (1) or outside it (0)."""
    out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros",
                        align_corners=False)  # fmt: skip
    inside = (grid.abs() <= 1).all(-1, keepdim=True).permute(0, 3, 1, 2)
    return out, inside.to(x.dtype)


def warped_frame(
    x: torch.Tensor, cfg: TemporalConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The second "frame" ``W(x) + n`` (clamped to [0, 1]) of stills ``x`` (B, 3, H, W), the
    warp's grid and its mask of valid pixels (``warp``): the input of ``warp_consistency``."""
    b, _, h, w = x.shape
    grid = random_warp_grid(b, h, w, cfg, generator, x.device)
    moved, inside = warp(x, grid)
    if generator is None:  # on x's device: no full-size host-to-device copy per step
        noise = torch.randn_like(moved)
    else:
        noise = torch.randn(moved.shape, generator=generator).to(moved)
    return (moved + noise * cfg.noise_std).clamp(0, 1), grid, inside


def warp_consistency(
    second: torch.Tensor, stylized: torch.Tensor, grid: torch.Tensor, inside: torch.Tensor
) -> torch.Tensor:
    """Mean over valid pixels of ‖S(W(x) + n) − W(S(x))‖², from ``second`` = S(W(x) + n) and
    ``stylized`` = S(x); a scalar, in float32 (a bf16 grid would be off by up to a pixel)."""
    target, _ = warp(stylized.float(), grid.float())
    err = ((second.float() - target) ** 2 * inside).sum()
    return err / (inside.sum() * second.shape[1]).clamp_min(1)


def temporal_loss(
    net: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    cfg: TemporalConfig,
    stylized: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L_temporal of ``net`` on stills ``x`` (B, 3, H, W) in [0, 1] (module docstring), a
    scalar. ``stylized`` = ``net(x)`` when the caller has it already (training does)."""
    second, grid, inside = warped_frame(x, cfg, generator)
    return warp_consistency(net(second), net(x) if stylized is None else stylized, grid, inside)
