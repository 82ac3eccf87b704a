"""One-pass stylisation of tensors and images of any size: the engine behind the CLI and the server.

``Stylizer`` loads a model (``.ckpt``, ``.safetensors``, a bare style name or a live
``TransformerNet``), picks a device and a backend (``fast_style.infer.backends``), and applies
the network plus the optional post-processing (``fast_style.infer.postprocess``: colour
preservation, a strength blend and a soft mask). Images too large for memory, or above
``AUTO_TILE_PIXELS``, are tiled (``fast_style.infer.tiling``).

On CPU every backend runs ``fast_style.infer.deploy.DeployNet``, the network re-parameterised
for speed (same outputs); on GPUs the plain network is faster and is used. Constructing a
``Stylizer`` changes no process-wide state; the command-line tools and the server tune the
allocator for CPU inference once (``fast_style.infer.allocator.tune_malloc``).

Styles of a multi-style model (``num_styles`` > 1, ``style_names``)
-------------------------------------------------------------------
``style``: (S,) weights (one style: one-hot; a mix: any weights ≥ 0), or (B, S) one row per
image in ``stylize_tensor``. Each row is normalised to sum 1 here (``check_style_weights``), so
(2, 1, 0) means (2/3, 1/3, 0); the derived forms below use weights as given. ``style_mask``
(``stylize_image``) paints two styles: ``style`` (2, S), row 0 where the mask is white, row 1
where black, grey levels in between (feathered as ``mask``). A one-style model checks ``style``
and ignores it. How each backend runs them, all in one forward pass:

* ``eager``/``compile`` (``DeployNet``; the plain network on GPUs): weights, or the mask as a
  per-pixel (1, S, H, W) map, pooled to each layer by the conditional norms;
* ``fused``: weights folded into the statistics kernel; the painted mask in the apply kernel
  (``fast_style.infer.backends.fused``);
* ``onnxruntime``, ``ort-int8``: weights are the export's ``style`` input; a painted mask runs
  in PyTorch (``DeployNet``, as ``eager``, float): per-pixel maps are no ONNX input.

Tiled inference records the statistics with the same style (weights, or the mask's thumbnail)
and applies each tile's affine map: weights folded into ``norm_affine`` (fused, ONNX Runtime
fp32 and int8), a painted tile with its crop of the mask (fused: both maps and the mask;
PyTorch: the map; ONNX Runtime falls back to the PyTorch frozen path).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fast_style.core.device import resolve_device
from fast_style.core.imaging import (
    check_mask_size,
    crop_to,
    pad_to_multiple,
    pil_to_tensor,
    resize_long_side,
    split_alpha,
    tensor_to_pil,
)
from fast_style.core.model_io import describe, load_model, resolve_model
from fast_style.core.network import MIN_SIZE, SIZE_MULTIPLE, TransformerNet
from fast_style.core.resources import model_dirs
from fast_style.infer.backends import pick_backend
from fast_style.infer.backends.ort import OrtRunner
from fast_style.infer.backends.ort_int8 import Int8Runner
from fast_style.infer.deploy import DeployNet, PaintedStyle
from fast_style.infer.postprocess import PostProcess, attach_alpha, check_strength, feather_mask
from fast_style.infer.tiling import (
    STATS_PIXELS,
    NormStats,
    StatsHook,
    as_float,
    check_tiling,
    frozen_norm_stats,
    hooked_norm_stats,
    pack_norm_affine,
    record_norm_stats,
    run_tiled,
    thumbnail_size,
)

Runner = Callable[..., torch.Tensor]  # (B, 3, H, W) [, norm_affine][, style=] → (B, 3, H, W)
StyleArg = torch.Tensor | PaintedStyle | None  # checked weights (R, S), a painted pair, default
AUTO_TILE_PIXELS = 2048 * 2048  # stylize_image tiles larger images even without tile=
AUTO_TILE = 1024
_ONNX_BACKENDS = ("onnxruntime", "ort-int8")  # no per-pixel style input in their exports


def _load(
    model: str | os.PathLike | TransformerNet, meta: dict | None, search_dirs: list | None
) -> tuple[TransformerNet, dict[str, Any], Path | None]:
    """(network, metadata, file) of a model file, a bare style name or a live network."""
    if isinstance(model, TransformerNet):
        if meta:
            return model, dict(meta), None
        # a live multi-style network without metadata: its styles are style1, style2, …
        n = model.num_styles
        styles: dict[str, Any] = {}
        if n > 1:
            styles["styles"] = [{"name": f"style{i + 1}"} for i in range(n)]
        return model, describe(model, style="unnamed", **styles), None
    path = resolve_model(model, model_dirs(search_dirs or []))
    net, file_meta = load_model(path, "cpu")
    return net, {**file_meta, **(meta or {})}, path


def _row_writer(out: torch.Tensor, b: int) -> Callable[[int, int, torch.Tensor], None]:
    """Writes finished rows ``y0:y1`` of image ``b`` of ``out`` (B, 3, H, W)."""

    def write(y0: int, y1: int, rows: torch.Tensor) -> None:
        out[b : b + 1, :, y0:y1].copy_(rows)

    return write


def check_style_weights(
    style: object, num_styles: int, names: Sequence[str] = (), rows: Sequence[int] = ()
) -> torch.Tensor:
    """``style`` as float32 CPU rows (R, S), each normalised to sum 1; (S,) becomes (1, S).

    Raises ``ValueError`` with one line unless it is a tensor (or a sequence of numbers) of S
    finite weights ≥ 0 per row with a positive sum, and R is in ``rows`` (when given)."""
    if isinstance(style, list | tuple):
        style = torch.as_tensor(style, dtype=torch.float32)
    if not isinstance(style, torch.Tensor):
        raise ValueError(f"style must be a tensor of style weights, got {type(style).__name__}")
    t = style.detach().float().cpu()
    t = t[None] if t.dim() == 1 else t
    listed = f" ({', '.join(names[:8])}{', …' if len(names) > 8 else ''})" if names else ""
    if t.dim() != 2 or t.shape[1] != num_styles or t.shape[0] == 0:
        raise ValueError(
            f"style must hold {num_styles} weights per row, one per style of this model{listed}; "
            f"got shape {tuple(style.shape)}"
        )
    if rows and t.shape[0] not in rows:
        want = " or ".join(str(r) for r in rows)
        raise ValueError(f"style must have {want} row(s) here, got {t.shape[0]}")
    if not torch.isfinite(t).all():
        raise ValueError("style weights must be finite numbers")
    if (t < 0).any():
        raise ValueError(f"style weights must be ≥ 0, got {float(t.min()):g}")
    sums = t.sum(1, keepdim=True)
    if (sums <= 0).any():
        raise ValueError("every row of style weights needs a positive weight (got all zeros)")
    return t / sums


@dataclass(frozen=True)
class _TiledStyle:
    """The style of one image in tiled inference: ``weights`` (1, S) (None: the model's
    default), or two ``rows`` (2, S) painted by ``mask`` (1, 1, H, W) uint8 (the whole image,
    kept as compact as the image) with its ``thumb`` (1, 1, h, w) float for the statistics."""

    weights: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    thumb: torch.Tensor | None = None

    def at_thumb(self) -> StyleArg:
        if self.rows is None or self.thumb is None:
            return self.weights
        return PaintedStyle(self.rows, self.thumb)

    def split(self, t: torch.Tensor) -> tuple[torch.Tensor, StyleArg]:
        """A tile as read (``_stylize_tiled``) → (image (1, 3, h, w), its style)."""
        if self.rows is None:
            return t, self.weights
        return t[:, :3], PaintedStyle(self.rows, t[:, 3:])


def _half_dtype(half: bool | str, device: torch.device) -> torch.dtype | None:
    if not half or device.type == "cpu":
        return None  # fp16/bf16 convs are slower than fp32 on CPUs without AMX/AVX-512
    if half == "bf16" or half == "bfloat16":
        return torch.bfloat16
    return torch.float16


# --------------------------------------------------------------------------------------------


class Stylizer:
    """A loaded style model ready to stylise tensors or PIL images.

    ``model``: a path (``.ckpt``/``.safetensors``), a bare style name looked up in
    ``search_dirs`` (then ``fast_style.core.resources.model_dirs``), or a ``TransformerNet``
    (with ``meta``).
    ``half``: fp16 (``True``/``"fp16"``) or ``"bf16"`` autocast on GPU; ignored on CPU.
    ``backend``: ``auto`` | ``eager`` | ``compile`` | ``onnxruntime`` | ``fused`` |
    ``ort-int8`` (``fast_style.infer.backends``; ``auto`` reads the model's metadata for int8).
    Thread-safe: PyTorch forwards are serialised with a lock.
    """

    def __init__(
        self,
        model: str | os.PathLike | TransformerNet,
        device: str = "auto",
        half: bool | str = False,
        channels_last: bool = True,
        search_dirs: list | None = None,
        meta: dict | None = None,
        backend: str = "auto",
        stats_pixels: int = STATS_PIXELS,
    ):
        self.device = resolve_device(device)
        if backend != "auto":
            self.backend = pick_backend(backend, self.device.type)  # fails before loading
        net, self.meta, self.path = _load(model, meta, search_dirs)
        if backend == "auto":  # int8 only where the model's metadata records it is close
            self.backend = pick_backend(backend, self.device.type, self.meta)
        self.net: TransformerNet = net.float().eval().requires_grad_(False).to(self.device)
        # The network as run. CPU: DeployNet, the same function re-parameterised for speed; it
        # shares the instance norms with self.net, so tiled inference can patch them. GPU: the
        # plain network, faster there (cuDNN has no tensor-core kernel for DeployNet's
        # 27-channel row-split output conv; docs/benchmarks.md).
        plain = self.device.type != "cpu"
        self.deploy: nn.Module = (self.net if plain else DeployNet(self.net)).eval()
        self.channels_last = channels_last
        if channels_last:
            self.deploy = self.deploy.to(memory_format=torch.channels_last)
        self.dtype = _half_dtype(half, self.device)
        self.stats_pixels = stats_pixels
        self._lock = threading.RLock()
        self._runner, self._tile_runner = self._make_runners()

    def _make_runners(
        self,
    ) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor] | None]:
        """The forward of the chosen backend, and the one that takes frozen statistics for the
        tiles of tiled inference (None: built on first use, or PyTorch's frozen norms)."""
        if self.backend == "onnxruntime":
            return OrtRunner(self.net), None
        if self.backend == "ort-int8":
            return Int8Runner(self.net), None
        if self.backend == "fused":
            from fast_style.infer.backends.fused import FusedRunner

            runner = FusedRunner(self.net)  # it takes the frozen statistics too
            return runner, runner
        if self.backend == "compile":
            self._compiled = torch.compile(self.deploy, dynamic=True)
            return self._compiled_forward, None
        return self._torch_forward, None

    @property
    def style(self) -> str:
        return str(self.meta.get("style", "unnamed"))

    @property
    def num_styles(self) -> int:
        """S: the styles of the model (1 for a one-style model)."""
        return self.net.num_styles

    @property
    def style_names(self) -> list[str]:
        """The name of each style, in weight order: the ``"name"`` of each entry of the
        metadata's ``styles`` list (multi-style files), else ``[meta["style"]]``; a style
        without a name is ``style<i>`` (1-based), so the list always has ``num_styles`` names."""
        entries = self.meta.get("styles")
        if isinstance(entries, list) and entries:
            names = [e.get("name") if isinstance(e, dict) else None for e in entries]
        else:
            names = [self.meta.get("style")]
        names = (names + [None] * self.num_styles)[: self.num_styles]
        return [str(n) if n else f"style{i + 1}" for i, n in enumerate(names)]

    def _weights(self, style: object, batch: int | None = None) -> torch.Tensor | None:
        """Checked, normalised (1 | batch, S) style weights; None for no style or a one-style
        model (which ignores it once checked)."""
        if style is None:
            return None
        rows = (1, batch) if batch is not None else (1,)
        w = check_style_weights(style, self.num_styles, self.style_names, rows)
        return None if self.num_styles == 1 else w

    # -- forwards: (B, 3, H, W) float in [0, 1] on any device → float32 on self.device -------

    def _run_net(
        self,
        x: torch.Tensor,
        net: Callable[..., torch.Tensor] | None = None,
        style: StyleArg = None,
    ) -> torch.Tensor:
        """(B, 3, H, W) → ``net`` (default: the deploy net) → float32, any H, W ≥ 1; with
        ``style`` (weights, or a painted mask given to the network as its per-pixel map).

        Pads with ``imaging.pad_to_multiple`` (replicate for tiny images) and crops back,
        exactly as ``TransformerNet.forward`` does; a style map is padded the same way."""
        x = x.to(self.device, torch.float32, non_blocking=True)
        xp, size = pad_to_multiple(x, SIZE_MULTIPLE, MIN_SIZE)
        if self.channels_last:
            xp = xp.contiguous(memory_format=torch.channels_last)
        net = self.deploy if net is None else net
        if style is None:
            return crop_to(net(xp), size).float().contiguous()
        if isinstance(style, PaintedStyle):
            smap = pad_to_multiple(style.to_map().to(self.device), SIZE_MULTIPLE, MIN_SIZE)[0]
        else:
            smap = style.to(self.device)
        return crop_to(net(xp, smap), size).float().contiguous()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _torch_forward(self, x: torch.Tensor, style: StyleArg = None) -> torch.Tensor:
        with self._lock, torch.inference_mode(), self._autocast():
            return self._run_net(x, style=style)

    def _compiled_forward(self, x: torch.Tensor, style: StyleArg = None) -> torch.Tensor:
        with self._lock, torch.inference_mode(), self._autocast():
            return self._run_net(x, self._compiled, style)

    def _forward(self, x: torch.Tensor, style: StyleArg) -> torch.Tensor:
        """The selected backend with a checked style (None: the unchanged one-style path)."""
        if style is None:
            return self._runner(x).to(self.device)
        if isinstance(style, PaintedStyle) and self.backend in _ONNX_BACKENDS:
            return self._torch_forward(x, style)  # no per-pixel maps in the ONNX export
        return self._runner(x, style=style).to(self.device)

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """The bare network with the selected backend: (B, 3, H, W) in [0, 1] → same shape;
        ``style`` (S,) or (B, S) weights (normalised per row), None: the first style."""
        return self._forward(x, self._weights(style, x.shape[0]))

    # -- tensors ---------------------------------------------------------------------------

    def stylize_tensor(
        self,
        x: torch.Tensor,
        *,
        style: torch.Tensor | None = None,
        strength: float = 1.0,
        preserve_color: bool = False,
        match_histogram: bool = False,
        tile: int | None = None,
        overlap: int = 32,
    ) -> torch.Tensor:
        """Stylise a batch (B, 3, H, W) or one image (3, H, W), float in [0, 1]; returns the
        same shape, float32 in [0, 1], on ``x``'s device. ``style``: (S,) weights for every
        image or (B, S) one row per image, each normalised to sum 1; None: the first style."""
        squeeze = x.dim() == 3
        if squeeze:
            x = x.unsqueeze(0)
        _check_batch(x)
        weights = self._weights(style, x.shape[0])
        post = PostProcess(check_strength(strength), preserve_color, match_histogram)
        h, w = x.shape[-2:]
        if tile is not None and max(h, w) > check_tiling(tile, overlap) + SIZE_MULTIPLE - 1:
            out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
            for b in range(x.shape[0]):
                xb = x[b : b + 1]
                thumb = xb.float()
                th, tw = thumbnail_size((h, w), self.stats_pixels)
                if (th, tw) != (h, w):
                    thumb = F.interpolate(thumb, size=(th, tw), mode="bilinear", antialias=True)
                row = None if weights is None else weights[min(b, weights.shape[0] - 1)][None]
                self._stylize_tiled(
                    xb, thumb.clamp(0, 1), post, tile, overlap, _row_writer(out, b),
                    style=_TiledStyle(weights=row),
                )  # fmt: skip
        else:
            content = x.to(self.device, torch.float32)
            y = self._forward(content, weights)
            out = y if post.is_identity else post.fit(y, content)(y, content)
            out = out.to(x.device)
        return out[0] if squeeze else out

    def _stylize_tiled(
        self,
        src: torch.Tensor,
        thumb: torch.Tensor,
        post: PostProcess,
        tile: int,
        overlap: int,
        write: Callable[[int, int, torch.Tensor], None],
        mask_rows: Callable[[int, int], torch.Tensor | None] = lambda y0, y1: None,
        style: _TiledStyle = _TiledStyle(),  # frozen: a shared default is safe
    ) -> None:
        """Tiled inference of one image ``src`` (1, 3, H, W): float in [0, 1] or uint8.

        ``thumb`` (1, 3, h, w) in [0, 1] is the image downscaled for the statistics pass.
        ``write(y0, y1, rows)`` receives the final rows (1, 3, y1 - y0, W) in [0, 1], in order.
        A painted ``style`` travels with each tile as a 4th channel (its crop of the mask)."""
        size = (src.shape[-2], src.shape[-1])

        def read_image(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
            return as_float(src[:, :, y0:y1, x0:x1]).to(self.device)

        def read(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
            if style.mask is None:
                return read_image(y0, y1, x0, x1)
            m = as_float(style.mask[:, :, y0:y1, x0:x1]).to(self.device)
            return torch.cat([read_image(y0, y1, x0, x1), m], 1)

        with self._lock, torch.inference_mode():
            # 1. statistics pass on the thumbnail (also fits the global colour statistics),
            # with the tiles' style (a painted mask: its thumbnail).
            thumb = thumb.to(self.device, torch.float32)
            with record_norm_stats(self.deploy) as stats, self._autocast():
                post.fit(self._run_net(thumb, style=style.at_thumb()), thumb)

            def emit(y0: int, y1: int, rows: torch.Tensor) -> None:
                m = mask_rows(y0, y1)
                if not post.is_identity or m is not None:
                    content = read_image(y0, y1, 0, size[1])
                    rows = post(rows, content, None if m is None else m.to(rows))
                write(y0, y1, rows)

            # 2. tile pass with every instance norm frozen to the image's statistics.
            with contextlib.ExitStack() as stack:
                forward = self._tile_forward(stats, style, stack)
                run_tiled(forward, read, emit, size, tile, overlap)

    def _tile_forward(
        self, stats: NormStats, style: _TiledStyle, stack: contextlib.ExitStack
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The tile pass's forward (a tile as ``read`` returns it → stylised (1, 3, h, w)):
        frozen statistics with the tile's style, by backend; contexts entered on ``stack``."""
        painted = style.rows is not None and self.num_styles > 1
        if self.backend == "fused" or (self.backend in _ONNX_BACKENDS and not painted):
            if self._tile_runner is None:
                frozen = Int8Runner if self.backend == "ort-int8" else OrtRunner
                self._tile_runner = frozen(self.net, frozen_norms=True)
            runner: Runner = self._tile_runner
            affine = pack_norm_affine(self.deploy, stats, style.at_thumb())  # style folded in

            def frozen_forward(t: torch.Tensor) -> torch.Tensor:
                img, tile_style = style.split(t)
                if isinstance(tile_style, PaintedStyle):  # fused: both maps and the mask
                    return runner(img, affine, style=tile_style).to(self.device)
                return runner(img, affine).to(self.device)  # the style is in ``affine``

            return frozen_forward
        # PyTorch's frozen norms (also ONNX Runtime's painted tiles: no map input in ONNX)
        stack.enter_context(frozen_norm_stats(self.deploy, stats))
        stack.enter_context(self._autocast())

        def torch_forward(t: torch.Tensor) -> torch.Tensor:
            img, tile_style = style.split(t)
            return self._run_net(img, style=tile_style)

        return torch_forward

    # -- clips: norms with smoothed statistics (``fast_style.infer.temporal``) ---------------

    def check_style(self, style: object) -> torch.Tensor | None:
        """One image's style as checked (1, S) weights; None: the default (or a one-style
        model). Raises ``ValueError`` with one line on bad weights."""
        return self._weights(style)

    def hooked_forward(
        self, x: torch.Tensor, hook: StatsHook, style: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → stylised float32 on ``self.device``, every instance norm
        normalising with the statistics ``hook`` makes of the measured ones (one pass). The
        fused CPU backend runs it; other backends run PyTorch (ONNX has no such input)."""
        _check_batch(x)
        if self.backend == "fused":
            return self._runner(x, style=style, stats_hook=hook).to(self.device)
        norms = hooked_norm_stats(self.deploy, hook)
        with self._lock, torch.inference_mode(), norms, self._autocast():
            return self._run_net(x, style=style)

    # -- images ----------------------------------------------------------------------------

    def stylize_image(
        self,
        img: Image.Image,
        *,
        style: torch.Tensor | None = None,
        style_mask: Image.Image | None = None,
        strength: float = 1.0,
        preserve_color: bool = False,
        match_histogram: bool = False,
        max_size: int | None = None,
        tile: int | None = None,
        overlap: int = 32,
        mask: Image.Image | None = None,
    ) -> Image.Image:
        """Stylise a PIL image of any mode; returns RGB (or RGBA when the input has alpha) of
        the input's size, or of the size after ``max_size`` (long side) downscaling.

        ``style``: (S,) weights (normalised to sum 1; None: the first style). With
        ``style_mask`` (L image; other modes are converted) ``style`` is (2, S): row 0 where the
        mask is white (255), row 1 where black, grey levels interpolating; resized and
        feathered as ``mask``. ``mask``: L image, 255 = full style, 0 = the original photo;
        resized and feathered. Each mask's aspect ratio must be ``img``'s within 2 %
        (``imaging.check_mask_size`` raises ``MaskSizeError``, a ValueError, rather than
        stretch it). Images above ``AUTO_TILE_PIXELS`` are tiled (``AUTO_TILE``) even when
        ``tile`` is None.
        """
        _check_masks(img, mask, style_mask)
        weights, rows = self._image_style(style, style_mask)
        rgb, alpha = self._prepare_image(img, max_size)
        post = PostProcess(check_strength(strength), preserve_color, match_histogram)
        soft = feather_mask(mask, rgb.size) if mask is not None else None
        painted = None  # the feathered style mask, where two different styles are painted
        if rows is not None and style_mask is not None:
            painted = feather_mask(style_mask, rgb.size)
        w, h = rgb.size
        if tile is None and w * h > AUTO_TILE_PIXELS:
            tile = AUTO_TILE
        if tile is not None and max(w, h) > check_tiling(tile, overlap) + SIZE_MULTIPLE - 1:
            args = (soft, weights, rows, painted)
            return attach_alpha(self._stylize_image_tiled(rgb, post, tile, overlap, *args), alpha)
        x = pil_to_tensor(rgb).unsqueeze(0).to(self.device)
        st: StyleArg = weights
        if rows is not None and painted is not None:
            st = PaintedStyle(rows, pil_to_tensor(painted).unsqueeze(0).to(self.device))
        y = self._forward(x, st)
        m = pil_to_tensor(soft).unsqueeze(0).to(self.device) if soft is not None else None
        if not post.is_identity or m is not None:
            y = post.fit(y, x)(y, x, m)
        return attach_alpha(tensor_to_pil(y), alpha)

    def _image_style(
        self, style: object, style_mask: Image.Image | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(weights (1, S), painted rows (2, S)) of ``stylize_image``'s style options, checked
        and normalised; None where not used (a one-style model uses neither)."""
        if style_mask is None:
            return self._weights(style), None
        if style is None:
            raise ValueError(
                "style_mask needs style (2, S): row 0 where the mask is white, row 1 where black"
            )
        rows = check_style_weights(style, self.num_styles, self.style_names, rows=(2,))
        if self.num_styles == 1:
            return None, None
        if torch.equal(rows[0], rows[1]):  # the same style on both sides: no mask needed
            return rows[:1], None
        return None, rows

    def stylize_images(self, imgs: list[Image.Image], **opts: Any) -> list[Image.Image]:
        """Stylise several images with the options of ``stylize_image`` (``style`` included);
        images of equal size (after ``max_size``) run as one batch (instance norm is per
        image, so this is exact)."""
        one_by_one = any(opts.get(k) is not None for k in ("tile", "mask", "style_mask"))
        if one_by_one or len(imgs) < 2:
            return [self.stylize_image(im, **opts) for im in imgs]
        prepared = [self._prepare_image(im, opts.get("max_size")) for im in imgs]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (rgb, _) in enumerate(prepared):
            groups.setdefault(rgb.size, []).append(i)
        out: list[Image.Image | None] = [None] * len(imgs)
        keys = ("style", "strength", "preserve_color", "match_histogram")
        kw = {k: opts[k] for k in keys if k in opts}
        for (w, h), idx in groups.items():
            if len(idx) == 1 or w * h > AUTO_TILE_PIXELS:
                for i in idx:
                    out[i] = attach_alpha(self.stylize_image(prepared[i][0], **kw), prepared[i][1])
                continue
            x = torch.stack([pil_to_tensor(prepared[i][0]) for i in idx]).to(self.device)
            y = self.stylize_tensor(x, **kw)
            for i, yi in zip(idx, y, strict=True):
                out[i] = attach_alpha(tensor_to_pil(yi), prepared[i][1])
        return out  # type: ignore[return-value]

    @staticmethod
    def _prepare_image(
        img: Image.Image, max_size: int | None
    ) -> tuple[Image.Image, Image.Image | None]:
        rgb, alpha = split_alpha(img)
        if max_size is not None and max(rgb.size) > max_size:
            rgb = resize_long_side(rgb, max_size)
            if alpha is not None:
                alpha = alpha.resize(rgb.size, Image.Resampling.LANCZOS)
        return rgb, alpha

    def _stylize_image_tiled(
        self,
        rgb: Image.Image,
        post: PostProcess,
        tile: int,
        overlap: int,
        soft: Image.Image | None,
        weights: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        painted: Image.Image | None = None,
    ) -> Image.Image:
        """``stylize_image`` in tiles: ``soft`` the feathered strength mask, ``weights`` the
        style, or ``rows`` painted by the feathered ``painted`` mask."""
        # Keep the full-size image as uint8 (3 bytes/pixel); tiles are converted on the fly.
        src = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)
        out = np.empty((rgb.size[1], rgb.size[0], 3), dtype=np.uint8)
        mask_arr = np.asarray(soft) if soft is not None else None

        def write(y0: int, y1: int, rows: torch.Tensor) -> None:
            rows = rows[0].clamp(0, 1).mul(255).add_(0.5).to(torch.uint8)
            out[y0:y1] = rows.permute(1, 2, 0).cpu().numpy()

        def mask_rows(y0: int, y1: int) -> torch.Tensor | None:
            if mask_arr is None:
                return None
            return torch.from_numpy(mask_arr[y0:y1].astype(np.float32) / 255.0)[None, None]

        th, tw = thumbnail_size((rgb.size[1], rgb.size[0]), self.stats_pixels)
        thumb = pil_to_tensor(rgb.resize((tw, th), Image.Resampling.LANCZOS)).unsqueeze(0)
        style = _TiledStyle(weights=weights)
        if rows is not None and painted is not None:  # the mask kept as uint8, as the image
            full = torch.from_numpy(np.array(painted, dtype=np.uint8))[None, None]
            small = pil_to_tensor(painted.resize((tw, th), Image.Resampling.BILINEAR))[None]
            style = _TiledStyle(rows=rows, mask=full, thumb=small)
        self._stylize_tiled(src, thumb, post, tile, overlap, write, mask_rows, style)
        return Image.fromarray(out)


def _check_masks(img: Image.Image, *masks: Image.Image | None) -> None:
    """Each mask given must be a PIL image of ``img``'s aspect ratio (``check_mask_size``)."""
    for mask in masks:
        if mask is not None:
            if not isinstance(mask, Image.Image):
                raise ValueError(f"a mask must be a PIL image, got {type(mask).__name__}")
            check_mask_size(mask.size, img.size)  # the rule of stylize.py and the server


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an RGB batch (B, 3, H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"empty image of shape {tuple(x.shape)}")
