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
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
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
from fast_style.infer.deploy import DeployNet
from fast_style.infer.postprocess import PostProcess, attach_alpha, check_strength, feather_mask
from fast_style.infer.tiling import (
    STATS_PIXELS,
    as_float,
    check_tiling,
    frozen_norm_stats,
    pack_norm_affine,
    record_norm_stats,
    run_tiled,
    thumbnail_size,
)

Runner = Callable[..., torch.Tensor]  # (B, 3, H, W) [, norm_affine] → (B, 3, H, W)
AUTO_TILE_PIXELS = 2048 * 2048  # stylize_image tiles larger images even without tile=
AUTO_TILE = 1024


def _load(
    model: str | os.PathLike | TransformerNet, meta: dict | None, search_dirs: list | None
) -> tuple[TransformerNet, dict[str, Any], Path | None]:
    """(network, metadata, file) of a model file, a bare style name or a live network."""
    if isinstance(model, TransformerNet):
        return model, dict(meta or describe(model, style="unnamed")), None
    path = resolve_model(model, model_dirs(search_dirs or []))
    net, file_meta = load_model(path, "cpu")
    return net, {**file_meta, **(meta or {})}, path


def _row_writer(out: torch.Tensor, b: int) -> Callable[[int, int, torch.Tensor], None]:
    """Writes finished rows ``y0:y1`` of image ``b`` of ``out`` (B, 3, H, W)."""

    def write(y0: int, y1: int, rows: torch.Tensor) -> None:
        out[b : b + 1, :, y0:y1].copy_(rows)

    return write


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
    ``backend``: ``auto`` | ``eager`` | ``compile`` | ``onnxruntime`` | ``fused``
    (``fast_style.infer.backends``).
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
        self.backend = pick_backend(backend, self.device.type)
        net, self.meta, self.path = _load(model, meta, search_dirs)
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

    # -- forwards: (B, 3, H, W) float in [0, 1] on any device → float32 on self.device -------

    def _run_net(
        self, x: torch.Tensor, net: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """(B, 3, H, W) → ``net`` (default: the deploy net) → float32, any H, W ≥ 1.

        Pads with ``imaging.pad_to_multiple`` (replicate for tiny images) and crops back,
        exactly as ``TransformerNet.forward`` does."""
        x = x.to(self.device, torch.float32, non_blocking=True)
        xp, size = pad_to_multiple(x, SIZE_MULTIPLE, MIN_SIZE)
        if self.channels_last:
            xp = xp.contiguous(memory_format=torch.channels_last)
        return crop_to((self.deploy if net is None else net)(xp), size).float().contiguous()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock, torch.inference_mode(), self._autocast():
            return self._run_net(x)

    def _compiled_forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock, torch.inference_mode(), self._autocast():
            return self._run_net(x, self._compiled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The bare network with the selected backend: (B, 3, H, W) in [0, 1] → same shape."""
        return self._runner(x).to(self.device)

    # -- tensors ---------------------------------------------------------------------------

    def stylize_tensor(
        self,
        x: torch.Tensor,
        *,
        strength: float = 1.0,
        preserve_color: bool = False,
        match_histogram: bool = False,
        tile: int | None = None,
        overlap: int = 32,
    ) -> torch.Tensor:
        """Stylise a batch (B, 3, H, W) or one image (3, H, W), float in [0, 1]; returns the
        same shape, float32 in [0, 1], on ``x``'s device."""
        squeeze = x.dim() == 3
        if squeeze:
            x = x.unsqueeze(0)
        _check_batch(x)
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
                self._stylize_tiled(xb, thumb.clamp(0, 1), post, tile, overlap, _row_writer(out, b))
        else:
            content = x.to(self.device, torch.float32)
            y = self.forward(content)
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
    ) -> None:
        """Tiled inference of one image ``src`` (1, 3, H, W): float in [0, 1] or uint8.

        ``thumb`` (1, 3, h, w) in [0, 1] is the image downscaled for the statistics pass.
        ``write(y0, y1, rows)`` receives the final rows (1, 3, y1 - y0, W) in [0, 1], in order."""
        size = (src.shape[-2], src.shape[-1])

        def read(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
            return as_float(src[:, :, y0:y1, x0:x1]).to(self.device)

        with self._lock, torch.inference_mode():
            # 1. statistics pass on the thumbnail (also fits the global colour statistics).
            thumb = thumb.to(self.device, torch.float32)
            with record_norm_stats(self.deploy) as stats, self._autocast():
                post.fit(self._run_net(thumb), thumb)

            def emit(y0: int, y1: int, rows: torch.Tensor) -> None:
                m = mask_rows(y0, y1)
                if not post.is_identity or m is not None:
                    rows = post(rows, read(y0, y1, 0, size[1]), None if m is None else m.to(rows))
                write(y0, y1, rows)

            # 2. tile pass with every instance norm frozen to the image's statistics.
            if self.backend in ("onnxruntime", "fused"):
                if self._tile_runner is None:
                    self._tile_runner = OrtRunner(self.net, frozen_norms=True)
                runner, affine = self._tile_runner, pack_norm_affine(self.deploy, stats)
                run_tiled(
                    lambda t: runner(t, affine).to(self.device), read, emit, size, tile, overlap
                )
                return
            with frozen_norm_stats(self.deploy, stats), self._autocast():
                run_tiled(self._run_net, read, emit, size, tile, overlap)

    # -- images ----------------------------------------------------------------------------

    def stylize_image(
        self,
        img: Image.Image,
        *,
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

        ``mask``: L image, 255 = full style, 0 = the original photo; resized and feathered. Its
        aspect ratio must be ``img``'s within 2 % (``imaging.check_mask_size`` raises
        ``MaskSizeError``, a ValueError, rather than stretch it).
        Images above ``AUTO_TILE_PIXELS`` are tiled (``AUTO_TILE``) even when ``tile`` is None.
        """
        if mask is not None:
            check_mask_size(mask.size, img.size)  # the rule of stylize.py and the server
        rgb, alpha = self._prepare_image(img, max_size)
        post = PostProcess(check_strength(strength), preserve_color, match_histogram)
        soft = feather_mask(mask, rgb.size) if mask is not None else None
        w, h = rgb.size
        if tile is None and w * h > AUTO_TILE_PIXELS:
            tile = AUTO_TILE
        if tile is not None and max(w, h) > check_tiling(tile, overlap) + SIZE_MULTIPLE - 1:
            out_img = self._stylize_image_tiled(rgb, post, tile, overlap, soft)
        else:
            x = pil_to_tensor(rgb).unsqueeze(0).to(self.device)
            y = self.forward(x)
            m = pil_to_tensor(soft).unsqueeze(0).to(self.device) if soft is not None else None
            if not post.is_identity or m is not None:
                y = post.fit(y, x)(y, x, m)
            out_img = tensor_to_pil(y)
        return attach_alpha(out_img, alpha)

    def stylize_images(self, imgs: list[Image.Image], **opts: Any) -> list[Image.Image]:
        """Stylise several images with the options of ``stylize_image``; images of equal size
        (after ``max_size``) run as one batch (instance norm is per image, so this is exact)."""
        if opts.get("tile") is not None or opts.get("mask") is not None or len(imgs) < 2:
            return [self.stylize_image(im, **opts) for im in imgs]
        prepared = [self._prepare_image(im, opts.get("max_size")) for im in imgs]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (rgb, _) in enumerate(prepared):
            groups.setdefault(rgb.size, []).append(i)
        out: list[Image.Image | None] = [None] * len(imgs)
        kw = {k: opts[k] for k in ("strength", "preserve_color", "match_histogram") if k in opts}
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
        self, rgb: Image.Image, post: PostProcess, tile: int, overlap: int, soft: Image.Image | None
    ) -> Image.Image:
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
        self._stylize_tiled(src, thumb, post, tile, overlap, write, mask_rows)
        return Image.fromarray(out)


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an RGB batch (B, 3, H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"empty image of shape {tuple(x.shape)}")
