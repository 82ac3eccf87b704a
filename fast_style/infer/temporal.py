"""Video without flicker, no retraining: instance-norm statistics smoothed across frames.

Instance norm normalises every frame with its own per-channel mean and variance, and those jump
with the content (an object entering, the camera panning): the stylisation changes from frame
to frame even where the picture does not. ``TemporalStylizer`` runs each frame with every norm
normalising by an exponential moving average of the statistics of the frames so far:

    μ̄_t = m · μ̄_{t-1} + (1 − m) · μ_t,    σ̄²_t = m · σ̄²_{t-1} + (1 − m) · σ²_t

with μ_t, σ²_t the statistics the norm measures on frame t's features in this same pass (whose
earlier layers already normalised with smoothed statistics), and ``m`` the momentum. It is one
forward pass per frame on the fused CPU kernels or in PyTorch (``Stylizer.hooked_forward``), so
it costs what per-frame stylisation does. ``m = 0`` is per-frame stylisation exactly.
"""

from __future__ import annotations

import torch

from fast_style.infer.stylizer import Stylizer

DEFAULT_MOMENTUM = 0.8  # chosen on held-out clips, docs/video.md


class _MovingAverage:
    """The stats hook of one frame: blends each layer's measured (1, C) mean and variance
    into the running ones of the previous frames and records the result."""

    def __init__(self, state: dict[int, tuple[torch.Tensor, torch.Tensor]], momentum: float):
        self.state, self.momentum = state, momentum

    def __call__(
        self, i: int, mean: torch.Tensor, var: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prev = self.state.get(i)
        if prev is not None and prev[0].shape == mean.shape:
            m = self.momentum
            mean = m * prev[0].to(mean) + (1 - m) * mean
            var = m * prev[1].to(var) + (1 - m) * var
        self.state[i] = (mean, var)
        return mean, var


class TemporalStylizer:
    """A clip's frame function: (B, 3, H, W) consecutive frames in [0, 1] → stylised, the
    same shape, float32 on ``frames``' device, with the norm statistics smoothed across frames
    (module docstring). Stateful: feed one clip's frames in order; ``reset()`` between clips.
    ``style``: (S,) weights of a multi-style model (None: its first style)."""

    def __init__(
        self, stylizer: Stylizer, momentum: float = DEFAULT_MOMENTUM, style: object = None
    ):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.stylizer, self.momentum = stylizer, momentum
        self.style = stylizer.check_style(style)
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def reset(self) -> None:
        self.state = {}

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        hook = _MovingAverage(self.state, self.momentum)
        out = [
            self.stylizer.hooked_forward(frame, hook, self.style).clamp(0, 1)
            for frame in frames.split(1)
        ]
        return torch.cat(out).to(frames.device)
