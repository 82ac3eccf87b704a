"""Tiled inference of images too large for memory: statistics pass, frozen norms, feathering.

Tiling for images too large for memory
--------------------------------------
Instance norm normalises every channel with the mean and variance of the *whole* image, so
stylising tiles independently gives each tile its own statistics and visibly different colours
and contrast. The tiled path therefore runs in two stages:

1. **Statistics pass.** The image is downscaled to a thumbnail of at most ``stats_pixels``
   (1024² by default; an image that fits is not downscaled, and its statistics are exact) and run
   through the network once, recording every instance norm's per-channel mean and variance,
   by layer name (``fast_style.core.network.named_norms``). This is the "thumbnail instance
   normalization" of URST (Chen et al. 2022, "Towards Ultra-Resolution Neural Style Transfer
   via Thumbnail Instance Normalization").
   Means and variances are averages over the whole picture, so a thumbnail that sees all of
   it estimates them far better than any set of full-resolution crops (measured: crops covering
   the same number of pixels gave 10 dB lower PSNR against the untiled result). The same pass
   fits the global parameters of colour matching.
2. **Tile pass.** Tiles of ``tile`` pixels overlapping by at least ``overlap`` (origins on
   multiples of 4, so the stride-2 grids line up with the whole image's) run with every instance
   norm *frozen* to the recorded statistics, i.e. as one and the same affine map everywhere.
   Tile outputs are blended with separable weights, normalised by their sum: across each
   overlap a tile's weight is ~0 over the outer quarter (its border, where the network saw
   reflection padding instead of the neighbours) and rises as sin² over the middle half, so
   seams are feathered and border artefacts get almost no weight.

Tiles are processed one row at a time; finished rows are post-processed and written straight to
the output, so memory holds one strip of float accumulators plus the 8-bit input and output, and
the network never sees more than a tile (``tile + 3`` pixels a side) or the thumbnail, however
large the image. For an image within the thumbnail budget, tiled and untiled outputs agree to
about 60 dB PSNR; above it, the thumbnail statistics are an approximation (about 30-35 dB
against an untiled run at 2-3× downscale), the same for every tile, so no seams appear.

Styles (multi-style networks). A conditional norm's statistics depend on the style (every
earlier layer's γ/β do), so the statistics pass runs with the tiles' style: the same weights,
or a painted mask's thumbnail. The tile pass then applies each layer's frozen normalisation
followed by the style's γ/β: folded into one per-channel map for weights
(``pack_norm_affine``, the ``norm_affine`` input of the fused and ONNX Runtime tiles), or per
pixel from the tile's crop of the mask (PyTorch: ``frozen_norm_stats`` with the map; fused: a
(2, 2, ΣC) ``norm_affine`` of both styles plus the mask).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from fast_style.core.network import (
    MIN_SIZE,
    SIZE_MULTIPLE,
    ConditionalInstanceNorm,
    Style,
    named_norms,
    norm_affine,
    norm_params,
)
from fast_style.infer.deploy import PaintedStyle

STATS_PIXELS = 1024 * 1024  # largest thumbnail for the statistics pass of tiled inference


# --------------------------------------------------------------------------------------------
# Instance-norm statistics: record on one pass, freeze for the tiles.


@dataclass
class NormStats:
    """Per-layer norm statistics of one pass, in forward order: ``names`` as in
    ``fast_style.core.network.named_norms``, each mean and variance (1, C)."""

    means: list[torch.Tensor]
    variances: list[torch.Tensor]
    names: list[str] = field(default_factory=list)


def _norms(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """``net``'s norms by name (``TransformerNet`` or ``DeployNet``), each an instance norm
    (plain, or conditional: γ/β from the style input)."""
    norms = named_norms(net)
    for name, m in norms:
        if not isinstance(m, nn.InstanceNorm2d | ConditionalInstanceNorm):
            raise TypeError(f"{name}: tiled inference needs instance norms, not {type(m).__name__}")
    return norms


def _check_stats(norms: list[tuple[str, nn.Module]], stats: NormStats) -> None:
    """The statistics must be of these layers, all of them, in this order."""
    names = [n for n, _ in norms]
    if stats.names != names or not len(stats.means) == len(names) == len(stats.variances):
        raise ValueError(
            f"statistics of {len(stats.names)} layers do not fit this network's {len(names)} "
            "norms (recorded on another network, or without a forward pass?)"
        )


@contextlib.contextmanager
def _patched_norms(
    norms: list[tuple[str, nn.Module]], make_forward: Callable[[str, nn.Module], Callable]
) -> Iterator[None]:
    """Temporarily replace each norm's forward (instance attribute, removed after)."""
    try:
        for name, m in norms:
            m.forward = make_forward(name, m)
        yield
    finally:
        for _, m in norms:
            m.__dict__.pop("forward", None)


@contextlib.contextmanager
def record_norm_stats(net: nn.Module) -> Iterator[NormStats]:
    """Run ``net`` with *joint* instance norm over the batch, recording each layer's statistics.

    Every layer normalises with the per-channel mean/variance over (B, H, W) together, i.e.
    the batch is treated as pieces of one image. For B = 1 this is exactly instance norm. The
    style input of each forward applies as in the network (``norm_affine``): a multi-style
    network's statistics depend on the style, so record them with the style of the tiles."""
    stats = NormStats([], [], [])

    def make_forward(name: str, m: nn.Module) -> Callable:
        eps = norm_params(m)[2]

        def forward(x: torch.Tensor, style: Style = None) -> torch.Tensor:
            xf = x.float()
            mean = xf.mean((0, 2, 3), keepdim=True)
            var = xf.var((0, 2, 3), unbiased=False, keepdim=True)
            stats.names.append(name)
            stats.means.append(mean[:, :, 0, 0])
            stats.variances.append(var[:, :, 0, 0])
            y = (xf - mean) * torch.rsqrt(var + eps)
            gamma, beta = norm_affine(m, style, x.shape[-2], x.shape[-1])
            return (y * gamma.float() + beta.float()).to(x.dtype)

        return forward

    with _patched_norms(_norms(net), make_forward):
        yield stats


# (layer index in ``named_norms`` order, mean (B, C), variance (B, C)) → the mean and variance
# to normalise with: ``hooked_norm_stats`` and ``FusedRunner(stats_hook=)`` call it per norm.
StatsHook = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@contextlib.contextmanager
def hooked_norm_stats(net: nn.Module, hook: StatsHook) -> Iterator[None]:
    """Run every instance norm with the statistics ``hook`` makes of each image's own (e.g. a
    moving average across the frames of a clip, ``fast_style.infer.temporal``); γ/β as usual."""
    norms = _norms(net)

    def make_forward(i: int, m: nn.Module) -> Callable:
        eps = norm_params(m)[2]

        def forward(x: torch.Tensor, style: Style = None) -> torch.Tensor:
            xf = x.float()
            mean, var = hook(i, xf.mean((2, 3)), xf.var((2, 3), unbiased=False))
            y = (xf - mean[..., None, None]) * torch.rsqrt(var[..., None, None] + eps)
            gamma, beta = norm_affine(m, style, x.shape[-2], x.shape[-1])
            return (y * gamma.float() + beta.float()).to(x.dtype)

        return forward

    index = {name: i for i, (name, _) in enumerate(norms)}
    with _patched_norms(norms, lambda name, m: make_forward(index[name], m)):
        yield


def _normalizer(
    m: nn.Module, mean: torch.Tensor, var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Norm ``m`` with fixed statistics before its γ/β: ``x * scale + shift``; each (1, C)."""
    scale = torch.rsqrt(var + norm_params(m)[2])
    return scale, -mean * scale


def _style_rows(style: Style | PaintedStyle, num_styles: int) -> torch.Tensor | None:
    """``style`` for ``pack_norm_affine``: None, or its weights as (1 | 2, S) rows."""
    if style is None or num_styles == 1:
        return None  # a one-style network has no style input
    rows = style.rows if isinstance(style, PaintedStyle) else style
    if rows.dim() == 1:
        rows = rows[None]
    want = 2 if isinstance(style, PaintedStyle) else 1
    if rows.dim() != 2 or rows.shape != (want, num_styles):
        raise ValueError(
            f"norm_affine folds in one style's (S,) = ({num_styles},) weights (or a painted "
            f"style's two rows), got {tuple(rows.shape)}"
        )
    return rows.float()


def _affines(
    net: nn.Module, stats: NormStats, rows: torch.Tensor | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the frozen norm as ``x * scale + shift`` with the γ/β of style ``rows``
    (None: the first style) folded in; each (R, C), R = 1, or 2 for a painted style's rows."""
    norms = _norms(net)
    _check_stats(norms, stats)
    out = []
    for (_, m), mean, var in zip(norms, stats.means, stats.variances, strict=True):
        scale, shift = _normalizer(m, mean, var)
        style = None if rows is None else rows.to(mean.device)  # weights of any device
        gamma, beta = (t[:, :, 0, 0] for t in norm_affine(m, style, 1, 1))
        out.append(((scale * gamma).detach(), (shift * gamma + beta).detach()))
    return out


def pack_norm_affine(
    net: nn.Module, stats: NormStats, style: Style | PaintedStyle = None
) -> torch.Tensor:
    """The ``norm_affine`` input of ``fast_style.infer.deploy.FrozenNormNet`` and ``FusedRunner``
    with the γ/β of ``style`` folded in: (2, ΣC), scales in row 0, shifts in row 1, layers in
    ``named_norms`` order. ``style``: None (the first style) or (S,) / (1, S) weights; a
    ``PaintedStyle`` gives (2, 2, ΣC), the maps where its mask is 1 (``[0]``) and 0 (``[1]``)
    (the fused runner's painted tiles). A one-style network ignores ``style``."""
    rows = _style_rows(style, _num_styles(net))
    pairs = _affines(net, stats, rows)
    packed = torch.stack([torch.cat([p[0] for p in pairs], 1), torch.cat([p[1] for p in pairs], 1)])
    if rows is not None and rows.shape[0] == 2:  # a painted style: (2 rows, 2, ΣC)
        return packed.transpose(0, 1).contiguous()
    return packed[:, 0]


def _num_styles(net: nn.Module) -> int:
    """S of ``net``'s norms (1 for plain instance norms)."""
    gamma = norm_params(_norms(net)[0][1])[0]
    return 1 if gamma.dim() == 1 else gamma.shape[0]


@contextlib.contextmanager
def frozen_norm_stats(net: nn.Module, stats: NormStats) -> Iterator[None]:
    """Run every norm as a fixed affine map with the given statistics (of the same layers).
    Plain norms fold γ/β in once; conditional norms apply the γ/β of each forward's style
    input, per image for (B, S) weights and per pixel for a (B, S, H, W) map (the tile of a
    painted mask, pooled to each layer as in the network)."""
    norms = _norms(net)
    _check_stats(norms, stats)
    fixed = {
        name: _normalizer(m, mean, var)
        for (name, m), mean, var in zip(norms, stats.means, stats.variances, strict=True)
    }
    folded = {name: p for (name, m), p in zip(norms, _affines(net, stats, None), strict=True)}

    def make_forward(name: str, m: nn.Module) -> Callable:
        if isinstance(m, nn.InstanceNorm2d):  # plain: γ/β folded in once
            scale, shift = (t[..., None, None] for t in folded[name])

            def forward(x: torch.Tensor, style: Style = None) -> torch.Tensor:
                return x * scale.to(x.dtype) + shift.to(x.dtype)

            return forward
        norm_scale, norm_shift = (t[..., None, None] for t in fixed[name])

        def conditional(x: torch.Tensor, style: Style = None) -> torch.Tensor:
            gamma, beta = norm_affine(m, style, x.shape[-2], x.shape[-1])
            k, t = norm_scale * gamma.float(), norm_shift * gamma.float() + beta.float()
            return x * k.to(x.dtype) + t.to(x.dtype)

        return conditional

    with _patched_norms(norms, make_forward):
        yield


def thumbnail_size(size: tuple[int, int], budget: int) -> tuple[int, int]:
    """``size = (H, W)`` scaled down (aspect kept) to at most ``budget`` pixels; unchanged if it
    fits already."""
    h, w = size
    if h * w <= budget:
        return h, w
    scale = math.sqrt(budget / (h * w))
    return max(MIN_SIZE, int(h * scale)), max(MIN_SIZE, int(w * scale))


# --------------------------------------------------------------------------------------------
# Tile geometry and feathering.


def tile_spans(n: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Cover ``[0, n)`` with intervals of length ``tile`` overlapping by at least ``overlap``.

    Starts are multiples of 4 (the network's stride), the last interval ends at ``n`` (it may be
    up to 3 pixels longer than ``tile``)."""
    if n <= tile + SIZE_MULTIPLE - 1:
        return [(0, n)]
    count = math.ceil((n - overlap) / (tile - overlap))
    last = (n - tile) // SIZE_MULTIPLE * SIZE_MULTIPLE
    starts = [round(i * last / (count - 1) / SIZE_MULTIPLE) * SIZE_MULTIPLE for i in range(count)]
    return [(s, s + tile) for s in starts[:-1]] + [(starts[-1], n)]


def feather_weights(spans: list[tuple[int, int]], i: int) -> torch.Tensor:
    """1-D blending weights (length of span ``i``): ``_ramp`` across the overlaps with the
    neighbouring spans, 1 elsewhere; never 0, so every pixel has weight."""
    s, e = spans[i]
    w = torch.ones(e - s)
    if i > 0 and spans[i - 1][1] > s:
        n = spans[i - 1][1] - s
        w[:n] = torch.minimum(w[:n], _ramp(n))
    if i + 1 < len(spans) and spans[i + 1][0] < e:
        n = e - spans[i + 1][0]
        w[-n:] = torch.minimum(w[-n:], _ramp(n).flip(0))
    return w


def _ramp(n: int) -> torch.Tensor:
    """0 → 1 across an overlap of ``n`` pixels: flat (1e-3) over the outer quarter, where the
    tile's own border effects are largest, a sin² ramp over the middle half, 1 after."""
    t = ((torch.arange(n, dtype=torch.float32) + 0.5) / n - 0.25) * 2
    return (torch.sin(0.5 * math.pi * t.clamp(0, 1)) ** 2).clamp_min(1e-3)


def run_tiled(
    forward: Callable[[torch.Tensor], torch.Tensor],
    read: Callable[[int, int, int, int], torch.Tensor],
    emit: Callable[[int, int, torch.Tensor], None],
    size: tuple[int, int],
    tile: int,
    overlap: int,
) -> None:
    """Stylise an image of ``size = (H, W)`` tile by tile and feather the tiles together.

    ``read(y0, y1, x0, x1)`` returns the (1, C, h, w) float input tile (the image's 3
    channels, and any per-pixel inputs ``forward`` needs after them: a painted style's mask);
    ``forward`` maps it to the stylised (1, 3, h, w) tile; ``emit(y0, y1, rows)`` receives
    finished output rows (1, 3, y1 - y0, W), top to bottom. Only one strip of rows is held in
    memory.
    """
    h, w = size
    ys, xs = tile_spans(h, tile, overlap), tile_spans(w, tile, overlap)
    wx = [feather_weights(xs, i) for i in range(len(xs))]
    col_sum = torch.zeros(w)
    for (x0, x1), wi in zip(xs, wx, strict=True):
        col_sum[x0:x1] += wi
    acc: torch.Tensor | None = None  # rows [top, top + acc height) of the weighted sum
    row_sum = torch.zeros(0)
    top = 0
    for j, (y0, y1) in enumerate(ys):
        wy = feather_weights(ys, j)
        for (x0, x1), wi in zip(xs, wx, strict=True):
            out = forward(read(y0, y1, x0, x1))
            if acc is None:  # dtype and device of the network's output
                acc = out.new_zeros(1, 3, 0, w)
            need = y1 - top - acc.shape[2]
            if need > 0:
                acc = torch.cat([acc, acc.new_zeros(1, 3, need, w)], 2)
                row_sum = torch.cat([row_sum, torch.zeros(need)])
            weight = (wy[:, None] * wi[None, :]).to(out)
            acc[:, :, y0 - top : y1 - top, x0:x1] += out * weight
        assert acc is not None  # every row of tiles has a tile
        row_sum[y0 - top : y1 - top] += wy
        done = ys[j + 1][0] if j + 1 < len(ys) else h  # rows no later tile touches
        n = done - top
        norm = (row_sum[:n, None] * col_sum[None, :]).to(acc)
        emit(top, done, acc[:, :, :n] / norm)
        acc, row_sum, top = acc[:, :, n:], row_sum[n:], done


def as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def check_tiling(tile: int, overlap: int) -> int:
    if tile < 64 or tile % SIZE_MULTIPLE:
        raise ValueError(f"tile must be a multiple of {SIZE_MULTIPLE} and at least 64, got {tile}")
    if not 0 <= overlap <= tile // 4:
        raise ValueError(f"overlap must be between 0 and tile/4 = {tile // 4}, got {overlap}")
    return tile
