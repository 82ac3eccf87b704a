"""One-pass stylisation of tensors and images of any size: the engine behind the CLI and the server.

``Stylizer`` loads a model (``.ckpt``, ``.safetensors``, a bare style name or a live
``TransformerNet``), picks a device and a backend, and applies the network plus the optional
post-processing: colour preservation (``fast_style.color``), a strength blend and a soft mask.

On CPU all backends run ``fast_style.export.DeployNet``, the network re-parameterised for speed
(same outputs); on GPUs the plain network is faster and is used. Backends (``backend=``):
``eager`` PyTorch (channels_last by default), ``compile`` (``torch.compile``), ``onnxruntime``
(the ONNX export, cached on disk by weight hash, run by ONNX Runtime with all graph
optimisations; tiles of tiled inference use a second export whose instance norms take the
frozen statistics as an input), ``fused`` (CPU: PyTorch's convolutions with the layers between
them fused into C kernels compiled at first use, ``fast_style.fused_cpu``). ``auto`` picks, on
CPU, ``fused`` when a C compiler can build it, else ONNX Runtime when it is installed, else
PyTorch (the fastest first, see docs/benchmarks.md); on GPUs, PyTorch. On CPU, ``Stylizer``
also raises glibc's malloc thresholds (``fast_style.fused_cpu.tune_malloc``, process-wide) so
that large activations are reused rather than page-faulted in again for every image.

Tiling for images too large for memory
--------------------------------------
Instance norm normalises every channel with the mean and variance of the *whole* image, so
stylising tiles independently gives each tile its own statistics and visibly different colours
and contrast. The tiled path therefore runs in two stages:

1. **Statistics pass.** The image is downscaled to a thumbnail of at most ``stats_pixels``
   (1024² by default; an image that fits is not downscaled, and its statistics are exact) and run
   through the network once, recording every ``InstanceNorm2d`` layer's per-channel mean and
   variance. This is the "thumbnail instance normalization" of URST (Chen et al. 2022,
   "Towards Ultra-Resolution Neural Style Transfer via Thumbnail Instance Normalization").
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
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import nn

from fast_style import color
from fast_style.config import PROJECT_ROOT
from fast_style.export import NORM_INPUT_NAME, DeployNet
from fast_style.imaging import (
    check_mask_size,
    crop_to,
    pad_to_multiple,
    pil_to_tensor,
    resize_long_side,
    split_alpha,
    tensor_to_pil,
)
from fast_style.model_io import describe, load_model, resolve_model
from fast_style.transformer import MIN_SIZE, SIZE_MULTIPLE, TransformerNet

DEFAULT_MODEL_DIRS: list[Path] = [PROJECT_ROOT / "checkpoints"]
BACKENDS = ("auto", "eager", "compile", "onnxruntime", "fused")

STATS_PIXELS = 1024 * 1024  # largest thumbnail for the statistics pass of tiled inference
AUTO_TILE_PIXELS = 2048 * 2048  # stylize_image tiles larger images even without tile=
AUTO_TILE = 1024
MASK_FEATHER = 0.01  # Gaussian feather of a mask: this fraction of the image's long side

_ORT_AVAILABLE: bool | None = None


def onnxruntime_available() -> bool:
    """True when onnxruntime (and the onnx exporter's dependencies) can be imported."""
    global _ORT_AVAILABLE
    if _ORT_AVAILABLE is None:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401

            _ORT_AVAILABLE = True
        except ImportError:
            _ORT_AVAILABLE = False
    return _ORT_AVAILABLE


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → cuda if available, else mps, else cpu; ``cuda`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available (use --device cpu)")
    return dev


# --------------------------------------------------------------------------------------------
# Instance-norm statistics: record on one pass, freeze for the tiles.


@dataclass
class NormStats:
    """Per-layer instance-norm statistics, in module order: each (1, C) mean and variance."""

    means: list[torch.Tensor]
    variances: list[torch.Tensor]


def _instance_norms(net: nn.Module) -> list[nn.InstanceNorm2d]:
    return [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]


@contextlib.contextmanager
def _patched_norms(
    net: nn.Module, make_forward: Callable[[int, nn.InstanceNorm2d], Callable]
) -> Iterator[None]:
    """Temporarily replace each InstanceNorm2d's forward (instance attribute, removed after)."""
    norms = _instance_norms(net)
    try:
        for i, m in enumerate(norms):
            m.forward = make_forward(i, m)  # type: ignore[method-assign]
        yield
    finally:
        for m in norms:
            m.__dict__.pop("forward", None)


@contextlib.contextmanager
def record_norm_stats(net: nn.Module) -> Iterator[NormStats]:
    """Run ``net`` with *joint* instance norm over the batch, recording each layer's statistics.

    Every layer normalises with the per-channel mean/variance over (B, H, W) together, i.e.
    the batch is treated as pieces of one image. For B = 1 this is exactly instance norm."""
    stats = NormStats([], [])

    def make_forward(_i: int, m: nn.InstanceNorm2d) -> Callable:
        def forward(x: torch.Tensor) -> torch.Tensor:
            xf = x.float()
            mean = xf.mean((0, 2, 3), keepdim=True)
            var = xf.var((0, 2, 3), unbiased=False, keepdim=True)
            stats.means.append(mean[:, :, 0, 0])
            stats.variances.append(var[:, :, 0, 0])
            y = (xf - mean) * torch.rsqrt(var + m.eps)
            if m.affine:
                y = y * m.weight[:, None, None] + m.bias[:, None, None]
            return y.to(x.dtype)

        return forward

    with _patched_norms(net, make_forward):
        yield stats


def _norm_affine(
    m: nn.InstanceNorm2d, mean: torch.Tensor, var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance norm ``m`` with fixed statistics as ``x * scale + shift``; each (1, C)."""
    scale = torch.rsqrt(var + m.eps)
    shift = -mean * scale
    if m.affine:
        scale, shift = scale * m.weight, shift * m.weight + m.bias
    return scale.detach(), shift.detach()


def pack_norm_affine(net: nn.Module, stats: NormStats) -> torch.Tensor:
    """The ``norm_affine`` input (2, ΣC) of ``fast_style.export.FrozenNormNet``."""
    pairs = [
        _norm_affine(m, stats.means[i], stats.variances[i])
        for i, m in enumerate(_instance_norms(net))
    ]
    return torch.stack([torch.cat([p[0][0] for p in pairs]), torch.cat([p[1][0] for p in pairs])])


@contextlib.contextmanager
def frozen_norm_stats(net: nn.Module, stats: NormStats) -> Iterator[None]:
    """Run every instance norm as a fixed affine map with the given statistics."""

    def make_forward(i: int, m: nn.InstanceNorm2d) -> Callable:
        scale, shift = _norm_affine(m, stats.means[i], stats.variances[i])
        scale, shift = scale[..., None, None], shift[..., None, None]

        def forward(x: torch.Tensor) -> torch.Tensor:
            return x * scale.to(x.dtype) + shift.to(x.dtype)

        return forward

    with _patched_norms(net, make_forward):
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

    ``read(y0, y1, x0, x1)`` returns the (1, 3, h, w) float input tile; ``forward`` maps it to
    the stylised tile; ``emit(y0, y1, rows)`` receives finished output rows (1, 3, y1 - y0, W),
    top to bottom. Only one strip of rows is held in memory.
    """
    h, w = size
    ys, xs = tile_spans(h, tile, overlap), tile_spans(w, tile, overlap)
    wx = [feather_weights(xs, i) for i in range(len(xs))]
    col_sum = torch.zeros(w)
    for (x0, x1), wi in zip(xs, wx, strict=True):
        col_sum[x0:x1] += wi
    acc: torch.Tensor | None = None  # rows [top, top + acc height) of the weighted sum
    row_sum: torch.Tensor | None = None
    top = 0
    for j, (y0, y1) in enumerate(ys):
        wy = feather_weights(ys, j)
        for (x0, x1), wi in zip(xs, wx, strict=True):
            out = forward(read(y0, y1, x0, x1))
            if acc is None:
                acc = out.new_zeros(1, 3, 0, w)
                row_sum = torch.zeros(0)
            need = y1 - top - acc.shape[2]
            if need > 0:
                acc = torch.cat([acc, acc.new_zeros(1, 3, need, w)], 2)
                row_sum = torch.cat([row_sum, torch.zeros(need)])
            weight = (wy[:, None] * wi[None, :]).to(out)
            acc[:, :, y0 - top : y1 - top, x0:x1] += out * weight
        row_sum[y0 - top : y1 - top] += wy
        done = ys[j + 1][0] if j + 1 < len(ys) else h  # rows no later tile touches
        n = done - top
        norm = (row_sum[:n, None] * col_sum[None, :]).to(acc)
        emit(top, done, acc[:, :, :n] / norm)
        acc, row_sum, top = acc[:, :, n:], row_sum[n:], done


# --------------------------------------------------------------------------------------------
# Post-processing: colour preservation, strength and mask.


@dataclass
class PostProcess:
    """Per-pixel post-processing with its global parameters fitted once (whole image or the
    statistics pass of tiled inference). Tensors are (B, 3, H, W) in [0, 1]."""

    strength: float = 1.0
    preserve_color: bool = False
    match_histogram: bool = False
    lum: tuple[torch.Tensor, torch.Tensor] | None = None
    affine: tuple[torch.Tensor, torch.Tensor] | None = None

    def fit(self, stylized: torch.Tensor, content: torch.Tensor) -> PostProcess:
        if self.preserve_color and self.match_histogram:
            self.lum = color.luminance_match_params(stylized, content)
        elif self.match_histogram:
            self.affine = color.fit_color_match(stylized, content)
        return self

    def __call__(
        self, stylized: torch.Tensor, content: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``mask``: (B, 1, H, W) in [0, 1], 1 = full style; multiplies ``strength``."""
        out = stylized.float()
        if self.preserve_color:
            scale, shift = self.lum if self.lum is not None else (1.0, 0.0)
            out = color.transfer_luminance_affine(out, content, scale, shift)
        elif self.affine is not None:
            out = color.apply_color_affine(out, *self.affine)
        t: torch.Tensor | float = self.strength
        if mask is not None:
            t = mask.to(out) * self.strength
        return color.mix_oklab(content, out, t)

    @property
    def is_identity(self) -> bool:
        return self.strength >= 1 and not self.preserve_color and not self.match_histogram


def feather_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An L mask (255 = full style) resized to ``size = (W, H)`` with soft edges: blurred at
    ≤ 1024 px with a radius of ``MASK_FEATHER`` × long side, then upscaled bilinearly."""
    m = mask.convert("L")
    small = resize_long_side(m, min(1024, max(size)))
    radius = max(1.0, MASK_FEATHER * max(small.size))
    small = small.filter(ImageFilter.GaussianBlur(radius))
    return small.resize(size, Image.Resampling.BILINEAR)


# --------------------------------------------------------------------------------------------
# Backends.


def onnx_cache_dir() -> Path:
    """``$FAST_STYLE_CACHE`` or ``~/.cache/fast_style``, sub-folder ``onnx``."""
    root = os.environ.get("FAST_STYLE_CACHE") or Path.home() / ".cache" / "fast_style"
    return Path(root) / "onnx"


def cached_onnx(net: TransformerNet, refresh: bool = False, frozen_norms: bool = False) -> bytes:
    """The ONNX export of ``net``, cached on disk by a hash of its weights and the exporter's
    versions (exporting takes 1-2 s on a small CPU; loading the cached file, milliseconds).
    An unwritable cache is skipped silently."""
    from fast_style import __version__
    from fast_style.export import DEPLOY_VERSION, to_onnx_bytes

    key = f"{__version__}/{DEPLOY_VERSION}/{torch.__version__}/{frozen_norms}"
    h = hashlib.sha256(key.encode())
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    path = onnx_cache_dir() / f"{h.hexdigest()[:32]}.onnx"
    if not refresh:
        try:
            return path.read_bytes()
        except OSError:
            pass
    data = to_onnx_bytes(net, frozen_norms=frozen_norms)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: concurrent processes never read a half-written file
    except OSError:
        pass
    return data


class _OrtRunner:
    """The network exported to ONNX (``DeployNet``, or ``FrozenNormNet`` with ``frozen_norms``
    for the tiles of tiled inference), run by ONNX Runtime on CPU."""

    def __init__(self, net: TransformerNet, threads: int | None = None, frozen_norms: bool = False):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = ["CPUExecutionProvider"]
        try:
            data = cached_onnx(net, frozen_norms=frozen_norms)
            self.session = ort.InferenceSession(data, opts, providers=providers)
        except Exception:  # a damaged cache file (ORT raises its own exception types)
            data = cached_onnx(net, refresh=True, frozen_norms=frozen_norms)
            self.session = ort.InferenceSession(data, opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor, norm_affine: torch.Tensor | None = None) -> torch.Tensor:
        # Pad here (one source: imaging.pad_to_multiple, also for tiny images) so the graph
        # always sees H, W multiples of 4 and ≥ 8.
        xp, size = pad_to_multiple(x.float().cpu(), SIZE_MULTIPLE, MIN_SIZE)
        feed = {self.input_name: np.ascontiguousarray(xp.numpy())}
        if norm_affine is not None:
            feed[NORM_INPUT_NAME] = norm_affine.float().cpu().numpy()
        y = self.session.run(None, feed)[0]
        return crop_to(torch.from_numpy(y), size).to(x.device)


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
    ``search_dirs`` (default ``DEFAULT_MODEL_DIRS``), or a ``TransformerNet`` (with ``meta``).
    ``half``: fp16 (``True``/``"fp16"``) or ``"bf16"`` autocast on GPU; ignored on CPU.
    ``backend``: ``auto`` | ``eager`` | ``compile`` | ``onnxruntime`` | ``fused`` (see the module
    docstring).
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
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
        self.device = resolve_device(device)
        if isinstance(model, TransformerNet):
            net, self.meta = model, dict(meta or describe(model, style="unnamed"))
            self.path: Path | None = None
        else:
            self.path = resolve_model(model, list(search_dirs or []) + DEFAULT_MODEL_DIRS)
            net, self.meta = load_model(self.path, "cpu")
            if meta:
                self.meta.update(meta)
        self.net: TransformerNet = net.float().eval().requires_grad_(False).to(self.device)
        # The network as run. CPU: DeployNet, the same function re-parameterised for speed (see
        # fast_style.export); it shares the instance norms with self.net, so tiled inference can
        # patch them. GPU: the plain network, faster than DeployNet on an H100 at 1920x1080 with
        # bf16 weights (7.3 vs 9.2 ms compiled; 28.3 vs 29.6 ms of kernel time eager): cuDNN
        # has no tensor-core kernel for DeployNet's 27-channel row-split output conv
        # (docs/benchmarks.md).
        plain = self.device.type != "cpu"
        self.deploy: nn.Module = (self.net if plain else DeployNet(self.net)).eval()
        self.channels_last = channels_last
        if channels_last:
            self.deploy = self.deploy.to(memory_format=torch.channels_last)
        self.dtype = _half_dtype(half, self.device)
        self.stats_pixels = stats_pixels
        self._lock = threading.RLock()
        self.backend = self._pick_backend(backend)
        if self.device.type == "cpu":
            from fast_style.fused_cpu import tune_malloc

            # Every CPU backend reuses large freed activations instead of page-faulting them back
            # in (fused_cpu.tune_malloc: up to 30% of an eager forward here).
            tune_malloc()
        self._runner: Callable[[torch.Tensor], torch.Tensor] = self._torch_forward
        self._tile_runner: Callable[..., torch.Tensor] | None = None  # for tiled images
        if self.backend == "onnxruntime":
            self._runner = _OrtRunner(self.net)
        elif self.backend == "fused":
            from fast_style.fused_cpu import FusedRunner

            # the same runner takes the frozen statistics of tiled inference
            self._runner = self._tile_runner = FusedRunner(self.net)
        elif self.backend == "compile":
            self._compiled = torch.compile(self.deploy, dynamic=True)
            self._runner = self._compiled_forward

    def _pick_backend(self, backend: str) -> str:
        from fast_style.fused_cpu import fused_available, unavailable_reason

        cpu = self.device.type == "cpu"
        if backend == "auto":
            if cpu and fused_available():
                return "fused"
            return "onnxruntime" if cpu and onnxruntime_available() else "eager"
        if backend == "fused":
            if not cpu:
                raise ValueError("backend 'fused' runs on CPU only (use --device cpu)")
            if not fused_available():
                raise ValueError(f"backend 'fused' is unavailable here: {unavailable_reason()}")
        if backend == "onnxruntime":
            if self.device.type != "cpu":
                raise ValueError("backend 'onnxruntime' runs on CPU only (use --device cpu)")
            if not onnxruntime_available():
                raise ValueError("backend 'onnxruntime' needs: pip install 'fast_style[export]'")
        return backend

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
        post = PostProcess(_check_strength(strength), preserve_color, match_histogram)
        h, w = x.shape[-2:]
        if tile is not None and max(h, w) > _check_tiling(tile, overlap) + SIZE_MULTIPLE - 1:
            out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
            for b in range(x.shape[0]):
                xb = x[b : b + 1]
                thumb = xb.float()
                th, tw = thumbnail_size((h, w), self.stats_pixels)
                if (th, tw) != (h, w):
                    thumb = F.interpolate(thumb, size=(th, tw), mode="bilinear", antialias=True)
                self._stylize_tiled(
                    xb,
                    thumb.clamp(0, 1),
                    post,
                    tile,
                    overlap,
                    lambda y0, y1, rows, b=b: out[b : b + 1, :, y0:y1].copy_(rows),
                )
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
            return _as_float(src[:, :, y0:y1, x0:x1]).to(self.device)

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
                    self._tile_runner = _OrtRunner(self.net, frozen_norms=True)
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
        post = PostProcess(_check_strength(strength), preserve_color, match_histogram)
        soft = feather_mask(mask, rgb.size) if mask is not None else None
        w, h = rgb.size
        if tile is None and w * h > AUTO_TILE_PIXELS:
            tile = AUTO_TILE
        if tile is not None and max(w, h) > _check_tiling(tile, overlap) + SIZE_MULTIPLE - 1:
            out_img = self._stylize_image_tiled(rgb, post, tile, overlap, soft)
        else:
            x = pil_to_tensor(rgb).unsqueeze(0).to(self.device)
            y = self.forward(x)
            m = pil_to_tensor(soft).unsqueeze(0).to(self.device) if soft is not None else None
            if not post.is_identity or m is not None:
                y = post.fit(y, x)(y, x, m)
            out_img = tensor_to_pil(y)
        return _attach_alpha(out_img, alpha)

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
                    out[i] = self.stylize_image(prepared[i][0], **kw)
                    out[i] = _attach_alpha(out[i], prepared[i][1])
                continue
            x = torch.stack([pil_to_tensor(prepared[i][0]) for i in idx]).to(self.device)
            y = self.stylize_tensor(x, **kw)
            for i, yi in zip(idx, y, strict=True):
                out[i] = _attach_alpha(tensor_to_pil(yi), prepared[i][1])
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


def _attach_alpha(img: Image.Image, alpha: Image.Image | None) -> Image.Image:
    if alpha is None:
        return img
    out = img.convert("RGBA")
    out.putalpha(alpha if alpha.size == img.size else alpha.resize(img.size))
    return out


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an RGB batch (B, 3, H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"empty image of shape {tuple(x.shape)}")


def _check_strength(strength: float) -> float:
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return float(strength)


def _check_tiling(tile: int, overlap: int) -> int:
    if tile < 64 or tile % SIZE_MULTIPLE:
        raise ValueError(f"tile must be a multiple of {SIZE_MULTIPLE} and at least 64, got {tile}")
    if not 0 <= overlap <= tile // 4:
        raise ValueError(f"overlap must be between 0 and tile/4 = {tile // 4}, got {overlap}")
    return tile
