"""The feed-forward image transform network of Johnson et al. 2016 (supplementary, Table 1).

Changes from the paper, all standard since: instance norm instead of batch norm (Ulyanov et al.
2016, "Instance Normalization"), reflection padding instead of zero padding (no border
artifacts), and nearest-neighbour upsampling + conv instead of fractionally strided conv
(Odena et al. 2016, "Deconvolution and Checkerboard Artifacts").

One description, walked by name
-------------------------------
This file is the only definition of the architecture: three groups of *named stages* and the
output stage, in forward order::

    encoder.conv1 … conv3      kind "conv":      pad → conv → norm → ReLU   (ConvNormAct)
    residuals.res1 … resN      kind "residual":  x + units(x), units conv1, conv2
                                                 (block "dwsep": dw1, pw1, dw2, pw2)
    decoder.up1, up2           kind "upsample":  nearest ×2 → ConvNormAct ("layer")
    output                     kind "output":    pad → conv, then the scaled tanh

``named_stages(net)`` lists them and ``named_norms(net)`` every normalisation layer by its
qualified name (``encoder.conv1.norm``, ``residuals.res2.conv2.norm``, ``decoder.up1.layer.norm``).
The derived forms (``fast_style.infer.deploy.DeployNet`` and its frozen-norm form, the fused CPU
runner, tiled inference's statistics) walk these names and dispatch on each stage's ``kind``;
none of them finds a layer by its position. A conv unit (``ConvNormAct``) is the one building
block the derived forms know: a new block (say a depthwise-separable residual block) is a new
stage class here whose ``units()`` are ``ConvNormAct``s, and a new normalisation (say
conditional instance norm, Dumoulin et al. 2017, where each style owns only γ/β) is a new
``norm`` factory plus its case in ``norm_params``.

Model files written before these names existed use positional keys (``encoder.0.1.weight``);
``upgrade_state_dict`` maps them to today's, in this one place.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
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
MAX_STYLES = 256  # styles of one conditional network
MAX_KERNEL = 15  # first and last conv kernels: odd, 1..15 (the paper's are 9)
# Residual block kinds (``BLOCKS``): "basic", Johnson et al.'s two 3×3 convs; "dwsep", each 3×3
# conv replaced by a depthwise 3×3 + pointwise 1×1 pair (Howard et al. 2017, "MobileNets"),
# ~8x fewer multiply-adds per block at 64 channels.
BLOCKS = ("basic", "dwsep")
# The groups of named stages (nn.Sequential), in forward order; the output stage follows them.
STAGE_GROUPS = ("encoder", "residuals", "decoder")

NormFactory = Callable[[int], nn.Module]
Style = torch.Tensor | None  # the style input of every stage (see ``style_affine``)


@dataclass(frozen=True)
class TransformerConfig:
    """Everything needed to rebuild a ``TransformerNet`` (stored in every saved model).

    A later architecture variant (a ``norm`` or ``block`` kind) is a new field here, selecting
    the factories of this file; ``to_dict``/``from_dict`` then carry it."""

    channels: tuple[int, int, int] = (32, 64, 128)
    num_residual: int = 5
    # 1: one style, plain instance norm (every single-style model file); more: conditional
    # instance norm, every convolution shared and each style owning its γ/β rows.
    num_styles: int = 1
    # The residual block kind (``BLOCKS``) and the (first, last) conv kernel sizes: the knobs
    # of the lightweight variants (model=nano); "basic" and (9, 9) are the paper's.
    block: str = "basic"
    kernels: tuple[int, int] = (9, 9)

    def __post_init__(self) -> None:
        if not 1 <= self.num_styles <= MAX_STYLES:
            raise ValueError(f"num_styles must be in 1..{MAX_STYLES}, got {self.num_styles}")
        if len(self.channels) != 3 or not all(1 <= c <= MAX_CHANNELS for c in self.channels):
            raise ValueError(
                f"channels must be 3 widths in 1..{MAX_CHANNELS}, got {list(self.channels)}"
            )
        if not 0 <= self.num_residual <= MAX_RESIDUAL:
            raise ValueError(f"num_residual must be in 0..{MAX_RESIDUAL}, got {self.num_residual}")
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {self.block!r}")
        if len(self.kernels) != 2 or not all(
            isinstance(k, int) and k % 2 == 1 and 1 <= k <= MAX_KERNEL for k in self.kernels
        ):
            raise ValueError(
                f"kernels must be 2 odd sizes in 1..{MAX_KERNEL}, got {list(self.kernels)}"
            )

    def to_dict(self) -> dict:
        return {
            "architecture": ARCHITECTURE,
            **asdict(self),
            "channels": list(self.channels),
            "kernels": list(self.kernels),
        }

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        arch = d.get("architecture", ARCHITECTURE)
        if arch != ARCHITECTURE:
            raise ValueError(f"unknown transform architecture {arch!r} (expected {ARCHITECTURE!r})")
        channels, num_residual = d["channels"], d["num_residual"]
        num_styles = d.get("num_styles", 1)  # absent in files written before multi-style
        if not isinstance(channels, list | tuple) or not all(
            isinstance(c, int) and not isinstance(c, bool)
            for c in [*channels, num_residual, num_styles]
        ):
            raise ValueError(
                f"channels, num_residual and num_styles must be integers, got {channels!r}"
            )
        # absent in files written before the lightweight variants: the paper's block, kernels
        block, kernels = d.get("block", "basic"), d.get("kernels", [9, 9])
        if not isinstance(block, str) or not isinstance(kernels, list | tuple):
            raise ValueError(f"block must be a name and kernels a list, got {block!r}, {kernels!r}")
        return cls(
            channels=tuple(channels),
            num_residual=num_residual,
            num_styles=num_styles,
            block=block,
            kernels=cast("tuple[int, int]", tuple(kernels)),
        )

    @property
    def conditional(self) -> bool:
        """True for a multi-style network (conditional instance norm)."""
        return self.num_styles > 1


# ---------------------------------------------------------------------------------------------
# Normalisation: the one factory every conv unit uses, and what derived forms read from it.


class InstanceNorm(nn.InstanceNorm2d):
    """Instance norm with learned per-channel γ/β (Ulyanov et al. 2016), no running stats:
    (B, C, H, W) → same shape. Takes (and ignores) the style input every stage passes on."""

    def __init__(self, channels: int):
        super().__init__(channels, affine=True)

    def forward(self, x: torch.Tensor, style: Style = None) -> torch.Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)


class ConditionalInstanceNorm(nn.Module):
    """Conditional instance norm (Dumoulin, Shlens & Kudlur 2017, "A Learned Representation for
    Artistic Style"): normalise, then scale and shift with γ/β mixed from per-style rows.

    ``weight`` and ``bias`` are (S, C); ``forward(x, style)`` with ``style`` (B, S) weights
    (one style: a one-hot row; a blend: convex weights) or a (B, S, h, w) map of them (each
    pixel its own mix; pooled to this layer's resolution). See ``style_affine``."""

    def __init__(self, channels: int, num_styles: int, eps: float = 1e-5):
        super().__init__()
        self.num_features, self.num_styles, self.eps = channels, num_styles, eps
        self.weight = nn.Parameter(torch.ones(num_styles, channels))
        self.bias = nn.Parameter(torch.zeros(num_styles, channels))

    def forward(self, x: torch.Tensor, style: Style = None) -> torch.Tensor:
        gamma, beta = style_affine(self.weight, self.bias, style, x.shape[-2], x.shape[-1])
        return F.instance_norm(x, eps=self.eps) * gamma + beta


def style_affine(
    weight: torch.Tensor, bias: torch.Tensor, style: Style, h: int, w: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """γ, β of a conditional norm for ``style``: (B, C, 1, 1) for (B, S) weights, (B, C, h, w)
    for a (B, S, H', W') map (average-pooled to h × w: exact at the network's /2, /4 scales).
    ``style`` None means the first style (the only one of a one-style network)."""
    if style is None:
        return weight[0].view(1, -1, 1, 1), bias[0].view(1, -1, 1, 1)
    if style.dim() == 2:
        return (style @ weight)[:, :, None, None], (style @ bias)[:, :, None, None]
    if style.shape[-2] != h or style.shape[-1] != w:
        style = F.adaptive_avg_pool2d(style, (h, w))
    return (
        torch.einsum("bshw,sc->bchw", style, weight),
        torch.einsum("bshw,sc->bchw", style, bias),
    )


def norm_factory(num_styles: int) -> NormFactory:
    """The normalisation of a network with ``num_styles`` styles."""
    if num_styles == 1:
        return InstanceNorm
    return lambda channels: ConditionalInstanceNorm(channels, num_styles)


def instance_norm(channels: int) -> nn.Module:
    """The one-style normalisation (``InstanceNorm``)."""
    return InstanceNorm(channels)


def norm_params(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(γ, β, eps) of a normalisation layer made by a factory of this file: γ/β are (C,) for
    instance norm and (S, C), one row per style, for conditional instance norm."""
    if isinstance(m, nn.InstanceNorm2d) and m.affine:
        return m.weight, m.bias, float(m.eps)
    if isinstance(m, ConditionalInstanceNorm):
        return m.weight, m.bias, m.eps
    raise TypeError(f"unsupported normalisation layer {type(m).__name__}")


def norm_affine(m: nn.Module, style: Style, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """γ, β that layer ``m`` applies for ``style`` at resolution h × w: (1, C, 1, 1) for one
    style, else as ``style_affine`` returns them. What every derived form folds in."""
    gamma, beta, _ = norm_params(m)
    if gamma.dim() == 1:
        return gamma.view(1, -1, 1, 1), beta.view(1, -1, 1, 1)
    return style_affine(gamma, beta, style, h, w)


# ---------------------------------------------------------------------------------------------
# Stages. Class attributes and methods (not properties, which TorchScript would compile) so
# that ``DeployNet``, which holds them, stays scriptable.


class Stage(nn.Module):
    """A named stage of the network: its ``kind`` tells the derived forms how to convert it."""

    kind = ""

    def units(self) -> list[tuple[str, ConvNormAct]]:
        """The conv units of a "conv" or "residual" stage, by name, in order."""
        return []

    def named_norms(self) -> list[tuple[str, nn.Module]]:
        """Its normalisation layers by name relative to the stage, in forward order."""
        return []


class ConvNormAct(Stage):
    """Reflection pad k//2 → k×k conv (stride) → norm → ReLU or identity, k odd:
    (B, Cin, H, W) → (B, Cout, ⌈H / stride⌉, ⌈W / stride⌉); values ≥ 0 after a ReLU.

    Named children ``pad``, ``conv``, ``norm``, ``act``: the unit every derived form knows."""

    kind = "conv"

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        relu: bool = True,
        norm: NormFactory = instance_norm,
        groups: int = 1,
    ):
        super().__init__()
        self.pad = nn.ReflectionPad2d(k // 2)
        # groups = cin: a depthwise conv (the depthwise-separable blocks of a lighter variant)
        self.conv = nn.Conv2d(cin, cout, k, stride, groups=groups)
        self.norm = norm(cout)
        self.act: nn.Module = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor, style: Style = None) -> torch.Tensor:
        return self.act(self.norm(self.conv(self.pad(x)), style))

    def units(self) -> list[tuple[str, ConvNormAct]]:
        return [("", self)]

    def named_norms(self) -> list[tuple[str, nn.Module]]:
        return [("norm", self.norm)]


class ResidualBlock(Stage):
    """Two 3×3 conv/IN units with an identity skip, no ReLU after the second (Johnson et al.,
    supplementary Fig. 1): (B, C, H, W) → same shape."""

    kind = "residual"

    def __init__(self, ch: int, norm: NormFactory = instance_norm):
        super().__init__()
        self.conv1 = ConvNormAct(ch, ch, 3, norm=norm)
        self.conv2 = ConvNormAct(ch, ch, 3, relu=False, norm=norm)

    def forward(self, x: torch.Tensor, style: Style = None) -> torch.Tensor:
        return x + self.conv2(self.conv1(x, style), style)

    def units(self) -> list[tuple[str, ConvNormAct]]:
        """The conv units of the body, in order; the skip adds the block input to the last."""
        return [("conv1", self.conv1), ("conv2", self.conv2)]

    def named_norms(self) -> list[tuple[str, nn.Module]]:
        return [(f"{name}.norm", u.norm) for name, u in self.units()]


class DWSepResidualBlock(Stage):
    """``ResidualBlock`` with each 3×3 conv split into a depthwise 3×3 and a pointwise 1×1
    unit (Howard et al. 2017), each with its own norm: dw1 → pw1 (ReLU) → dw2 → pw2, plus the
    identity skip, no ReLU after the add. (B, C, H, W) → same shape; 2·(9C + C²) weights
    instead of 2·9C². Each dw/pw pair factorises one 3×3 conv of the basic block, so there is
    no ReLU between its halves (Chollet 2017, "Xception", §4.7: better without one)."""

    kind = "residual"

    def __init__(self, ch: int, norm: NormFactory = instance_norm):
        super().__init__()
        self.dw1 = ConvNormAct(ch, ch, 3, relu=False, norm=norm, groups=ch)
        self.pw1 = ConvNormAct(ch, ch, 1, norm=norm)
        self.dw2 = ConvNormAct(ch, ch, 3, relu=False, norm=norm, groups=ch)
        self.pw2 = ConvNormAct(ch, ch, 1, relu=False, norm=norm)

    def forward(self, x: torch.Tensor, style: Style = None) -> torch.Tensor:
        y = self.pw1(self.dw1(x, style), style)
        return x + self.pw2(self.dw2(y, style), style)

    def units(self) -> list[tuple[str, ConvNormAct]]:
        """The conv units of the body, in order; the skip adds the block input to the last."""
        return [("dw1", self.dw1), ("pw1", self.pw1), ("dw2", self.dw2), ("pw2", self.pw2)]

    def named_norms(self) -> list[tuple[str, nn.Module]]:
        return [(f"{name}.norm", u.norm) for name, u in self.units()]


def residual_block(block: str, ch: int, norm: NormFactory) -> Stage:
    """A residual stage of kind ``block`` (``BLOCKS``) at ``ch`` channels."""
    return DWSepResidualBlock(ch, norm) if block == "dwsep" else ResidualBlock(ch, norm)


class Upsample2x(nn.Module):
    """Nearest-neighbour ×2 by reshape/expand: (B, C, H, W) → (B, C, 2H, 2W).

    Exports to ONNX and TorchScript as plain shape ops with dynamic H, W (no ``scale_factor``
    Resize, which several converters mishandle).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b, c, h, 1, w, 1).expand(b, c, h, 2, w, 2)
        return x.reshape(b, c, h * 2, w * 2)


class UpsampleConv(Stage):
    """Nearest ×2 upsample (``up``) → 3×3 ``ConvNormAct`` (``layer``); replaces the paper's
    stride-1/2 deconvolution. (B, Cin, H, W) → (B, Cout, 2H, 2W), values ≥ 0."""

    kind = "upsample"

    def __init__(self, cin: int, cout: int, norm: NormFactory = instance_norm):
        super().__init__()
        self.up = Upsample2x()
        self.layer = ConvNormAct(cin, cout, 3, norm=norm)

    def forward(self, x: torch.Tensor, style: Style = None) -> torch.Tensor:
        return self.layer(self.up(x), style)

    def named_norms(self) -> list[tuple[str, nn.Module]]:
        return [("layer.norm", self.layer.norm)]


class OutputConv(Stage):
    """Reflection pad k//2 → k×k conv to RGB, no norm: (B, C, H, W) → (B, 3, H, W) logits
    (``TransformerNet`` maps them into [0, 1] with its scaled tanh)."""

    kind = "output"

    def __init__(self, cin: int, cout: int = 3, k: int = 9):
        super().__init__()
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv = nn.Conv2d(cin, cout, k)

    def forward(self, x: torch.Tensor, style: Style = None) -> torch.Tensor:
        return self.conv(self.pad(x))


def stage_group(prefix: str, stages: Sequence[nn.Module]) -> nn.Sequential:
    """Stages as an ``nn.Sequential`` whose children are named ``prefix1``, ``prefix2``, …"""
    return nn.Sequential(OrderedDict((f"{prefix}{i + 1}", s) for i, s in enumerate(stages)))


class TransformerNet(nn.Module):
    """Image (B, 3, H, W) in [0, 1] → stylised image (B, 3, H, W) in [0, 1], for any H, W ≥ 1.

    Default widths 32/64/128 are the paper's (``model=johnson``); ``model=slim`` halves them;
    ``model=nano`` (``block="dwsep"``, smaller first/last ``kernels``) is the lightweight one.
    ``num_styles`` > 1 makes one network for several styles (``model=multi``): conditional
    instance norm everywhere, all convolutions shared (Dumoulin et al. 2017).
    Stages (module docstring): ``encoder`` (conv1: k_in × k_in, default 9×9, to c1; conv2,
    conv3: 3×3 stride 2 to c2, c3), ``residuals`` (res1 … resN at c3, 1/4 resolution),
    ``decoder`` (up1 to c2, up2 to c1) and ``output`` (k_out × k_out, default 9×9, to RGB).
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128),
        num_residual: int = 5,
        norm: NormFactory | None = None,
        num_styles: int = 1,
        block: str = "basic",
        kernels: Sequence[int] = (9, 9),
    ):
        super().__init__()
        widths = cast("tuple[int, int, int]", tuple(int(c) for c in channels))  # length checked
        ks = cast("tuple[int, int]", tuple(int(k) for k in kernels))
        self.config = TransformerConfig(widths, int(num_residual), int(num_styles), block, ks)
        self.num_styles = self.config.num_styles
        norm = norm or norm_factory(self.num_styles)
        c1, c2, c3 = self.config.channels
        k_in, k_out = self.config.kernels
        # Registration order = parameter order: the same as the positional layout of format
        # version 1, so optimizer states of old checkpoints still line up.
        self.encoder = stage_group(
            "conv",
            [
                ConvNormAct(3, c1, k_in, norm=norm),
                ConvNormAct(c1, c2, 3, stride=2, norm=norm),
                ConvNormAct(c2, c3, 3, stride=2, norm=norm),
            ],
        )
        self.residuals = stage_group(
            "res", [residual_block(block, c3, norm) for _ in range(num_residual)]
        )
        self.decoder = stage_group("up", [UpsampleConv(c3, c2, norm), UpsampleConv(c2, c1, norm)])
        self.output = OutputConv(c1, 3, k_out)

    @classmethod
    def from_config(cls, cfg: TransformerConfig | dict) -> TransformerNet:
        if isinstance(cfg, dict):
            cfg = TransformerConfig.from_dict(cfg)
        return cls(
            cfg.channels,
            cfg.num_residual,
            num_styles=cfg.num_styles,
            block=cfg.block,
            kernels=cfg.kernels,
        )

    def forward(self, x: torch.Tensor, style: Style = None) -> torch.Tensor:
        """``x`` (B, 3, H, W) in [0, 1]; ``style`` for a multi-style network: (B, S) weights
        (rows: a one-hot style or a convex mix) or a (B, S, H, W) map of them, None for the
        first style. Returns (B, 3, H, W) in [0, 1]."""
        x, size = pad_to_multiple(x, SIZE_MULTIPLE, MIN_SIZE)
        if style is not None and style.dim() == 4:
            style, _ = pad_to_multiple(style, SIZE_MULTIPLE, MIN_SIZE)  # as the image
        for group in (self.encoder, self.residuals, self.decoder):
            for stage in group:
                x = stage(x, style)
        y = self.output(x)
        # Scaled tanh (Johnson et al. §3: "scaled tanh to ensure the output image has pixels in
        # the range [0, 255]"); here mapped onto fast_style's [0, 1] range.
        y = 0.5 * (torch.tanh(y) + 1.0)
        return crop_to(y, size)


# ---------------------------------------------------------------------------------------------
# Walking the description (TransformerNet and every derived form with the same groups).


def named_stages(net: nn.Module) -> list[tuple[str, Stage]]:
    """(qualified name, stage) of every stage, in forward order: ``encoder.conv1``, …,
    ``residuals.resN``, ``decoder.up1``, ``decoder.up2``, ``output``. ``net`` is a
    ``TransformerNet`` or a derived form that keeps its groups (``DeployNet``)."""
    try:
        groups = [(g, getattr(net, g)) for g in STAGE_GROUPS]
        stages: list[tuple[str, object]] = [
            (f"{g}.{n}", s) for g, group in groups for n, s in group.named_children()
        ]
        stages.append(("output", net.output))
    except AttributeError:
        raise TypeError(
            f"{type(net).__name__} is not a transform network (no {'/'.join(STAGE_GROUPS)}/output "
            "stages)"
        ) from None
    for name, stage in stages:
        if not isinstance(stage, Stage) or not stage.kind:
            raise TypeError(f"stage {name} ({type(stage).__name__}) is not a Stage with a kind")
    return cast("list[tuple[str, Stage]]", stages)


def named_norms(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, layer) of every normalisation layer, in forward order; e.g.
    ``encoder.conv1.norm``, ``residuals.res1.conv2.norm``, ``decoder.up2.layer.norm``."""
    return [
        (f"{name}.{sub}", m) for name, stage in named_stages(net) for sub, m in stage.named_norms()
    ]


# ---------------------------------------------------------------------------------------------
# Model files of format version 1: positional nn.Sequential keys.

T = TypeVar("T")

_LEGACY_KEYS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(p), f)
    for p, f in [
        (r"encoder\.([0-2])\.1\.", lambda m: f"encoder.conv{int(m[1]) + 1}.conv."),
        (r"encoder\.([0-2])\.2\.", lambda m: f"encoder.conv{int(m[1]) + 1}.norm."),
        (r"residuals\.(\d+)\.body\.0\.1\.", lambda m: f"residuals.res{int(m[1]) + 1}.conv1.conv."),
        (r"residuals\.(\d+)\.body\.0\.2\.", lambda m: f"residuals.res{int(m[1]) + 1}.conv1.norm."),
        (r"residuals\.(\d+)\.body\.2\.", lambda m: f"residuals.res{int(m[1]) + 1}.conv2.conv."),
        (r"residuals\.(\d+)\.body\.3\.", lambda m: f"residuals.res{int(m[1]) + 1}.conv2.norm."),
        (r"decoder\.([01])\.1\.1\.", lambda m: f"decoder.up{int(m[1]) + 1}.layer.conv."),
        (r"decoder\.([01])\.1\.2\.", lambda m: f"decoder.up{int(m[1]) + 1}.layer.norm."),
        (r"decoder\.2\.1\.", lambda m: "output.conv."),
    ]
]


def upgrade_key(key: str) -> str:
    """Today's name of a format-1 (positional) parameter name; other names unchanged.
    ``encoder.0.1.weight`` → ``encoder.conv1.conv.weight``, ``decoder.2.1.bias`` →
    ``output.conv.bias``, ``residuals.0.body.3.weight`` → ``residuals.res1.conv2.norm.weight``."""
    for pattern, new in _LEGACY_KEYS:
        m = pattern.match(key)
        if m is not None and key[m.end() :] in ("weight", "bias"):
            return new(m) + key[m.end() :]
    return key


def upgrade_state_dict(state: Mapping[str, T], prefix: str = "") -> dict[str, T]:
    """``state`` with every positional key under ``prefix`` (``""`` for a bare network,
    ``"net."`` or ``"extra_nets.1."`` inside a Lightning checkpoint) renamed to today's; other
    keys, and keys already in today's layout, pass unchanged (so it is idempotent). Order kept.
    Raises ``ValueError`` when two keys would collide (a mix of both layouts)."""
    out: dict[str, T] = {}
    for key, value in state.items():
        new = prefix + upgrade_key(key[len(prefix) :]) if key.startswith(prefix) else key
        if new in out:
            raise ValueError(f"state dict holds both {key!r} and {new!r}")
        out[new] = value
    return out
