"""The feed-forward image transform network of Johnson et al. 2016 (supplementary, Table 1).

Changes from the paper, all standard since: instance norm instead of batch norm (Ulyanov et al.
2016, "Instance Normalization"), reflection padding instead of zero padding (no border
artifacts), and nearest-neighbour upsampling + conv instead of fractionally strided conv
(Odena et al. 2016, "Deconvolution and Checkerboard Artifacts").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from fast_style.core.imaging import crop_to, pad_to_multiple

ARCHITECTURE = "johnson2016"

# Two stride-2 stages: the network's internal size must be a multiple of 4. The 3×3 reflection
# pads at 1/4 resolution need at least 2 pixels there, hence a minimum input of 8.
SIZE_MULTIPLE = 4
MIN_SIZE = 8
# Bounds on what a model file may ask for, checked before anything is built: 1024 channels is
# 8x the paper's widest layer, 64 residual blocks 13x its 5.
MAX_CHANNELS = 1024
MAX_RESIDUAL = 64


@dataclass(frozen=True)
class TransformerConfig:
    """Everything needed to rebuild a ``TransformerNet`` (stored in every saved model)."""

    channels: tuple[int, int, int] = (32, 64, 128)
    num_residual: int = 5

    def __post_init__(self) -> None:
        if len(self.channels) != 3 or not all(1 <= c <= MAX_CHANNELS for c in self.channels):
            raise ValueError(
                f"channels must be 3 widths in 1..{MAX_CHANNELS}, got {list(self.channels)}"
            )
        if not 0 <= self.num_residual <= MAX_RESIDUAL:
            raise ValueError(f"num_residual must be in 0..{MAX_RESIDUAL}, got {self.num_residual}")

    def to_dict(self) -> dict:
        return {"architecture": ARCHITECTURE, **asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        arch = d.get("architecture", ARCHITECTURE)
        if arch != ARCHITECTURE:
            raise ValueError(f"unknown transform architecture {arch!r} (expected {ARCHITECTURE!r})")
        channels, num_residual = d["channels"], d["num_residual"]
        if not isinstance(channels, list | tuple) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in [*channels, num_residual]
        ):
            raise ValueError(f"channels and num_residual must be integers, got {channels!r}")
        return cls(channels=tuple(channels), num_residual=num_residual)


class ConvLayer(nn.Sequential):
    """Reflection pad → conv (k×k, stride) → [instance norm → ReLU]."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, norm_act: bool = True):
        layers: list[nn.Module] = [nn.ReflectionPad2d(k // 2), nn.Conv2d(cin, cout, k, stride)]
        if norm_act:
            layers += [nn.InstanceNorm2d(cout, affine=True), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Two 3×3 conv/IN layers with an identity skip (Johnson et al., supplementary Fig. 1)."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            ConvLayer(ch, ch, 3),
            nn.ReflectionPad2d(1),
            nn.Conv2d(ch, ch, 3),
            nn.InstanceNorm2d(ch, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsample2x(nn.Module):
    """Nearest-neighbour ×2 by reshape/expand.

    Exports to ONNX and TorchScript as plain shape ops with dynamic H, W (no ``scale_factor``
    Resize, which several converters mishandle).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b, c, h, 1, w, 1).expand(b, c, h, 2, w, 2)
        return x.reshape(b, c, h * 2, w * 2)


class UpsampleConv(nn.Sequential):
    """Nearest ×2 upsample → ConvLayer (replaces the paper's stride-1/2 deconvolution)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(Upsample2x(), ConvLayer(cin, cout, 3))


class TransformerNet(nn.Module):
    """Image (B, 3, H, W) in [0, 1] → stylised image (B, 3, H, W) in [0, 1], for any H, W ≥ 1.

    Default widths 32/64/128 are the paper's (``model=johnson``); ``model=slim`` halves them.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128), num_residual: int = 5):
        super().__init__()
        c1, c2, c3 = channels
        self.config = TransformerConfig(tuple(int(c) for c in channels), int(num_residual))
        self.encoder = nn.Sequential(
            ConvLayer(3, c1, 9), ConvLayer(c1, c2, 3, stride=2), ConvLayer(c2, c3, 3, stride=2)
        )
        self.residuals = nn.Sequential(*[ResidualBlock(c3) for _ in range(num_residual)])
        self.decoder = nn.Sequential(
            UpsampleConv(c3, c2), UpsampleConv(c2, c1), ConvLayer(c1, 3, 9, norm_act=False)
        )

    @classmethod
    def from_config(cls, cfg: TransformerConfig | dict) -> TransformerNet:
        if isinstance(cfg, dict):
            cfg = TransformerConfig.from_dict(cfg)
        return cls(cfg.channels, cfg.num_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, SIZE_MULTIPLE, MIN_SIZE)
        y = self.decoder(self.residuals(self.encoder(x)))
        # Scaled tanh (Johnson et al. §3: "scaled tanh to ensure the output image has pixels in
        # the range [0, 255]"); here mapped onto fast_style's [0, 1] range.
        y = 0.5 * (torch.tanh(y) + 1.0)
        return crop_to(y, size)
