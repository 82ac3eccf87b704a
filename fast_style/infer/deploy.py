"""``DeployNet``: ``TransformerNet`` re-parameterised for inference and export (same outputs).

Used by every CPU backend and by the ONNX and TorchScript exports; ``FrozenNormNet`` is its
form with every instance norm frozen to given statistics (the tiles of tiled inference).

Both walk the network's named stages (``fast_style.core.network.named_stages``) and convert
each by its ``kind``: "conv" and "residual" stages are shared as they are, "upsample" becomes
``SubPixelConvLayer`` and "output" ``RowSplitConv``. The result keeps the stage names, so
``named_norms`` lists the same layers under the same names for ``TransformerNet`` and
``DeployNet``.

Styles
------
A multi-style network (conditional instance norm, ``num_styles`` S > 1) takes a *style input*
everywhere: ``None`` (the first style), (B, S) weights per image (a one-hot row or a mix), or a
(B, S, H, W) map of weights per pixel (``DeployNet.forward``, the TorchScript export, eager).
Every form uses the weights as given: a row summing to 2 doubles γ and β. ``Stylizer``
normalises rows to sum 1 before they get here. ``PaintedStyle`` is the painted two-style form
of a map (two rows and a mask), which the fused kernels run in one pass; ``to_map`` gives the
map for everything else. A one-style network has no style input and ignores it.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fast_style.core.network import (
    SIZE_MULTIPLE,
    OutputConv,
    Stage,
    Style,
    TransformerNet,
    UpsampleConv,
    named_norms,
    named_stages,
    norm_params,
)

NORM_INPUT_NAME = "norm_affine"  # FrozenNormNet's second input (ONNX name too)
STYLE_INPUT_NAME = "style"  # a multi-style DeployNet's second input (ONNX name too)
DEPLOY_VERSION = 5  # bump when DeployNet's graph changes (invalidates cached exports)


@dataclass(frozen=True)
class PaintedStyle:
    """Two styles painted by a soft mask: ``rows`` (2, S) style weights, row 0 where ``mask``
    is 1 (white) and row 1 where it is 0 (black); ``mask`` (1 | B, 1, H, W) float in [0, 1],
    grey levels interpolating. The per-pixel style map is ``rows[1] + mask · (rows[0] − rows[1])``
    (``to_map``), so each layer's γ/β are ``γ_B + m · (γ_A − γ_B)``, with m the mask average-
    pooled to that layer's resolution: what the fused kernels apply directly."""

    rows: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        r, m = self.rows, self.mask
        if r.dim() != 2 or r.shape[0] != 2:
            raise ValueError(f"a painted style has 2 style rows (2, S), got {tuple(r.shape)}")
        if m.dim() != 4 or m.shape[1] != 1 or m.numel() == 0:
            raise ValueError(f"a painted style's mask is (B, 1, H, W), got {tuple(m.shape)}")

    @staticmethod
    def from_map(style: torch.Tensor, tol: float = 1e-5) -> torch.Tensor | PaintedStyle | None:
        """A (B, S, H, W) style map in the painted form where it has one: (1, S) weights when
        one style is in use, a ``PaintedStyle`` when two are and their weights sum to the same
        total c > 0 at every pixel (within ``tol`` · c: any normalised map of two styles; then
        ``rows`` are c · one-hot and the mask is the first style's share), None otherwise
        (three or more styles in use, or varying totals)."""
        if style.dim() != 4 or style.numel() == 0:
            raise ValueError(f"a style map is (B, S, H, W), got {tuple(style.shape)}")
        style = style.float()
        used = (style != 0).flatten(2).any(2).any(0).nonzero().flatten().tolist()
        total = style.sum(1, keepdim=True)
        c = float(total.flatten()[0])
        if len(used) > 2 or not c > 0 or float((total - c).abs().max()) > tol * c:
            return None
        rows = torch.zeros(2, style.shape[1])
        rows[0, used[0]], rows[1, used[-1]] = c, c
        if len(used) == 1:
            return rows[:1]
        return PaintedStyle(rows, style[:, used[0] : used[0] + 1] / c)

    def to_map(self) -> torch.Tensor:
        """The per-pixel style map (B, S, H, W), float32, on the mask's device."""
        rows = self.rows.to(self.mask.device, torch.float32)
        a, b = rows[0].view(1, -1, 1, 1), rows[1].view(1, -1, 1, 1)
        return b + self.mask.float() * (a - b)

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> PaintedStyle:
        """The same rows with the mask cropped to rows y0:y1, columns x0:x1."""
        return PaintedStyle(self.rows, self.mask[:, :, y0:y1, x0:x1])

    def with_mask(self, mask: torch.Tensor) -> PaintedStyle:
        return PaintedStyle(self.rows, mask)


def _phase_kernels(k: torch.Tensor) -> torch.Tensor:
    """Nearest ×2 upsampling → reflection pad 1 → 3×3 conv ``k`` (Cout, Cin, 3, 3), rewritten as
    four 2×2 convs on the low-resolution input padded by 1 (replicate), one per output phase.

    Output row 2i + a reads upsampled rows 2i + a - 1 … 2i + a + 1, i.e. low-res rows
    (i - 1, i, i) for a = 0 and (i, i, i + 1) for a = 1 (at the borders the reflection of the
    upsampled image is the replicate padding of the low-res one). So row taps k0, k1, k2 merge
    into (k0, k1 + k2) at offset 0 and (k0 + k1, k2) at offset 1; likewise for columns.
    Returns (4, Cout, Cin, 2, 2), phase index 2a + b.
    """
    merge = k.new_tensor([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], dtype=torch.float64)
    kk = k.detach().double()
    out = [torch.einsum("ru,oiuv,sv->oirs", merge[a], kk, merge[b]) for a in (0, 1) for b in (0, 1)]
    return torch.stack(out).to(k.dtype)


class SubPixelConvLayer(Stage):
    """An "upsample" stage (``UpsampleConv``: nearest ×2 → reflect pad 1 → 3×3 conv → norm →
    act) computed at low resolution: (B, Cin, h, w) → (B, Cout, 2h, 2w), the same values.

    The 4 phase convs with 2×2 kernels (16 instead of 36 multiply-adds per input pixel and
    channel pair) run as *one* conv to 4 · Cout channels over the replicate-padded input;
    phase (a, b) is that output shifted by (a, b). One conv over the whole input instead of
    four over shifted input slices moves half the bytes (the shifts act on Cout rather than
    Cin = 2 · Cout channels) and needs one layout reorder instead of four in ONNX Runtime.

    The phases are interleaved by two stacks and free reshapes (columns within each row
    phase, then the two row phases) rather than ``pixel_shuffle``: ONNX Runtime's
    ``DepthToSpace`` was the slowest copy of the network (A/B in docs/benchmarks.md). Same
    result. The norm and activation are the stage's own modules (shared, not copied)."""

    kind = "upsample"

    def __init__(self, stage: UpsampleConv):
        super().__init__()
        unit = stage.layer
        conv = unit.conv
        pad = unit.pad.padding if isinstance(unit.pad, nn.ReflectionPad2d) else None
        if (
            pad != (1, 1, 1, 1)
            or conv.kernel_size != (3, 3)
            or conv.stride != (1, 1)
            or conv.groups != 1
            or conv.dilation != (1, 1)
            or conv.bias is None
        ):
            raise NotImplementedError(
                "SubPixelConvLayer needs nearest x2 → reflect pad 1 → 3x3 conv (stride 1, one "
                "group, with bias)"
            )
        self.norm, self.act = unit.norm, unit.act
        # Buffers, declared for the type checker (not as class annotations: TorchScript would
        # read those and cannot resolve them under postponed evaluation).
        self.weight: torch.Tensor
        self.bias: torch.Tensor
        # (4 · Cout, Cin, 2, 2), phase-major: a 4-D buffer, so .to(channels_last) works.
        self.register_buffer("weight", _phase_kernels(conv.weight).flatten(0, 1))
        self.register_buffer("bias", conv.bias.detach().repeat(4))

    def forward(self, x: torch.Tensor, style: Style = None) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        co = self.weight.shape[0] // 4
        # (B, 4 · Cout, h + 1, w + 1): output (i, j) of phase (a, b) is at (i + a, j + b)
        y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.weight, self.bias)
        rows: list[torch.Tensor] = []
        for a in range(2):
            left = y[:, (2 * a) * co : (2 * a + 1) * co, a : a + h, 0:w]
            right = y[:, (2 * a + 1) * co : (2 * a + 2) * co, a : a + h, 1 : 1 + w]
            # (B, Cout, h, w, 2) → (B, Cout, h, 2w): output row 2i + a
            rows.append(torch.stack([left, right], -1).reshape(y.shape[0], co, h, 2 * w))
        # (B, Cout, h, 2, 2w) → (B, Cout, 2h, 2w)
        up = torch.stack(rows, 3).reshape(y.shape[0], co, 2 * h, 2 * w)
        return self.act(self.norm(up, style))  # a conditional norm pools a style map to 2h x 2w

    def named_norms(self) -> list[tuple[str, nn.Module]]:
        return [("layer.norm", self.norm)]  # named as in the UpsampleConv it derives from


class RowSplitConv(Stage):
    """The "output" stage (``OutputConv``: reflect pad k//2 → k×k conv to 3 channels) as a
    1×k conv to 3 · k channels, one per (output channel, kernel row), followed by the sum of
    the k row-shifted slices: (B, C, H, W) → (B, 3, H, W) logits, the same values. A 3-channel
    output wastes most lanes of a SIMD conv kernel (MLAS and oneDNN block output channels by 8
    or 16) and made this layer the slowest of the network; 27 channels fill them. Same
    multiply-adds, same result (measured 4× faster in ONNX Runtime)."""

    __constants__ = ("pad", "rows", "cout")
    kind = "output"

    def __init__(self, stage: OutputConv):
        super().__init__()
        conv = stage.conv
        k = conv.weight.detach()  # (Cout, Cin, kh, kw)
        self.cout, cin, self.rows, kw = k.shape
        self.pad = int(stage.pad.padding[0])
        if (
            not isinstance(stage.pad, nn.ReflectionPad2d)
            or tuple(stage.pad.padding) != (self.pad,) * 4
            or (self.rows, kw) != (2 * self.pad + 1,) * 2
            or conv.stride != (1, 1)
            or conv.groups != 1
            or conv.dilation != (1, 1)
            or conv.bias is None
        ):
            raise NotImplementedError(
                "RowSplitConv needs reflect pad k//2 → k×k conv, k odd (stride 1, one group, "
                "with bias)"
            )
        self.weight: torch.Tensor  # buffers, declared for the type checker (SubPixelConvLayer)
        self.bias: torch.Tensor
        # channel o * rows + dy holds kernel row dy of output channel o
        self.register_buffer("weight", k.permute(0, 2, 1, 3).reshape(-1, cin, 1, kw).contiguous())
        bias = torch.zeros(self.cout, self.rows, dtype=k.dtype)
        bias[:, 0] = conv.bias.detach()
        self.register_buffer("bias", bias.flatten())

    def forward(self, x: torch.Tensor, style: Style = None) -> torch.Tensor:
        h = x.shape[-2]
        p = self.pad
        t = F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), self.weight, self.bias)
        t = t.reshape(t.shape[0], self.cout, self.rows, t.shape[-2], t.shape[-1])
        out = t[:, :, 0, 0:h]
        for dy in range(1, self.rows):
            out = out + t[:, :, dy, dy : dy + h]
        return out


# The deployed form of each stage kind; kinds not listed run as they are (shared modules).
_SHARED_KINDS = ("conv", "residual")


def deploy_stage(name: str, stage: Stage) -> Stage:
    """The deployed form of one named stage, by its ``kind``."""
    if stage.kind == "upsample" and isinstance(stage, UpsampleConv):
        return SubPixelConvLayer(stage)
    if stage.kind == "output" and isinstance(stage, OutputConv):
        return RowSplitConv(stage)
    if stage.kind in _SHARED_KINDS:
        return stage
    raise NotImplementedError(f"stage {name}: no deployed form for kind {stage.kind!r}")


def _deploy_group(stages: list[tuple[str, Stage]], group: str) -> nn.Sequential:
    """The deployed stages of ``group`` (``encoder``, …), under their names."""
    picked = [(name, s) for name, s in stages if name.startswith(group + ".")]
    return nn.Sequential(OrderedDict((n.split(".", 1)[1], deploy_stage(n, s)) for n, s in picked))


class DeployNet(nn.Module):
    """``TransformerNet`` re-parameterised for inference and export: equal outputs (to float
    rounding), (B, 3, H ≥ 8, W ≥ 8) in [0, 1] → same shape.

    * the pad to a multiple of 4 is branch-free (``(-h) % 4``), so tracing and scripting keep H
      and W symbolic (dynamic axes in ONNX, any size in TorchScript);
    * the decoder's upsample + conv stages run at low resolution (``SubPixelConvLayer``), with
      no upsampled tensor, no ``Resize``/``Upsample`` op and 12% fewer FLOPs in total;
    * the output conv runs as ``RowSplitConv``.
    * a multi-style network's style input (module docstring) reaches every stage: its
      TorchScript export takes ``(image, style)``, weights or per-pixel maps.

    Same groups and stage names as ``net`` (``named_stages``). The "conv" and "residual" stages
    and every norm are *shared* with ``net`` (not copied), so code that patches the norms
    (tiled inference) patches both. The derived weights are a snapshot: rebuild after changing
    ``net``'s weights.
    """

    __constants__ = ("multiple",)  # TorchScript: a constant, not a Python global

    def __init__(self, net: TransformerNet):
        super().__init__()
        stages = named_stages(net)
        self.encoder = _deploy_group(stages, "encoder")
        self.residuals = _deploy_group(stages, "residuals")
        self.decoder = _deploy_group(stages, "decoder")
        self.output = deploy_stage("output", stages[-1][1])
        self.multiple = SIZE_MULTIPLE

    def forward(self, x: torch.Tensor, style: Style = None) -> torch.Tensor:
        """``x`` (B, 3, H ≥ 8, W ≥ 8) in [0, 1]; ``style`` (multi-style networks): None (the
        first style), (B, S) weights or a (B, S, H, W) map, as ``TransformerNet.forward``."""
        h, w = x.shape[-2], x.shape[-1]
        # imaging.pad_to_multiple's padding for H, W ≥ 8 (reflect, bottom/right), branch-free.
        pad = [0, (-w) % self.multiple, 0, (-h) % self.multiple]
        x = F.pad(x, pad, mode="reflect")
        if style is not None and style.dim() == 4:
            style = F.pad(style, pad, mode="reflect")  # a style map is padded as the image
        # Stage by stage (not the Sequentials' forward, which takes one input): the style goes
        # to every stage. TorchScript unrolls these loops.
        for stage in self.encoder:
            x = stage(x, style)
        for stage in self.residuals:
            x = stage(x, style)
        for stage in self.decoder:
            x = stage(x, style)
        y = self.output(x)
        y = 0.5 * (torch.tanh(y) + 1.0)  # TransformerNet's scaled tanh
        return y[:, :, :h, :w]


class _AffineHolder:
    """Carries the ``norm_affine`` graph input to the ``_FrozenNorm`` layers during a forward."""

    affine: torch.Tensor | None = None


class _FrozenNorm(nn.Module):
    """A norm replaced by the per-channel affine map ``x * scale + shift`` whose parameters
    are columns ``offset … offset + C`` of the ``norm_affine`` input."""

    def __init__(self, holder: _AffineHolder, offset: int, channels: int):
        super().__init__()
        self.holder, self.offset, self.channels = holder, offset, channels

    def forward(self, x: torch.Tensor, style: Style = None) -> torch.Tensor:
        # The style is folded into norm_affine already (tiling.pack_norm_affine).
        if self.holder.affine is None:
            raise RuntimeError("a frozen norm runs only inside FrozenNormNet's forward")
        p = self.holder.affine[:, self.offset : self.offset + self.channels]
        return x * p[0].reshape(1, -1, 1, 1) + p[1].reshape(1, -1, 1, 1)


class FrozenNormNet(nn.Module):
    """``DeployNet`` with every norm frozen to given statistics, for tiled inference in ONNX
    Runtime: ``forward(image (B, 3, H, W), norm_affine (2, ΣC))``. Row 0 of ``norm_affine``
    holds the scales, row 1 the shifts, one block of C columns per layer in ``named_norms``
    order (``norm_names``; ``fast_style.infer.tiling.pack_norm_affine`` builds it). For a
    multi-style network ``norm_affine`` folds in the style's γ/β (weights, one per image batch):
    no style input, so the ONNX export of the tiles serves every style and mix too."""

    def __init__(self, net: TransformerNet):
        super().__init__()
        self.deploy = DeployNet(copy.deepcopy(net).float().cpu().eval()).eval()
        self.holder = _AffineHolder()
        frozen: dict[int, _FrozenNorm] = {}
        self.norm_names: list[str] = []
        offset = 0
        for name, m in named_norms(self.deploy):
            channels = norm_params(m)[0].shape[-1]  # γ: (C,), or (S, C) for conditional norms
            frozen[id(m)] = _FrozenNorm(self.holder, offset, channels)
            self.norm_names.append(name)
            offset += channels
        self.total_channels = offset
        # Swap by identity (the layers named_norms found), wherever they sit in the modules.
        for name, m in list(self.deploy.named_modules()):
            if id(m) in frozen:
                parent_name, _, child = name.rpartition(".")
                setattr(self.deploy.get_submodule(parent_name), child, frozen.pop(id(m)))
        if frozen:
            raise RuntimeError("FrozenNormNet: some norms were not found among the modules")

    def forward(self, x: torch.Tensor, norm_affine: torch.Tensor) -> torch.Tensor:
        self.holder.affine = norm_affine
        try:
            return self.deploy(x)
        finally:
            self.holder.affine = None
