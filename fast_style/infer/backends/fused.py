"""The ``fused`` CPU backend: PyTorch (oneDNN) convolutions + fused C kernels for the rest.

Between two convolutions the transform network does instance norm, ReLU, a residual add and a
reflection pad (and, in ``DeployNet``'s decoder, a sub-pixel interleave; at the end, the
row-split sum and the scaled tanh). ONNX Runtime and eager PyTorch run these as 4-8 separate
passes, several single-threaded, and they took a third of the time of the slim network on the
2-core reference CPU (docs/benchmarks.md). Here each gap is two passes of a small C kernel
(``csrc/fused_glue.c``): statistics, then normalise + activation + skip + pad written straight
into the next convolution's padded NHWC input. The convolutions are ``DeployNet``'s (same
weights), so the output equals ``TransformerNet``'s to float rounding.

The C file is compiled at first use with the system C compiler (``$CC``, ``cc`` or ``gcc``;
``-O3 -march=native -fopenmp``) into ``$FAST_STYLE_CACHE/ext`` (default
``~/.cache/fast_style/ext``), keyed by the source, the flags, the compiler and the CPU, and
loaded with ``ctypes`` (no Python headers needed). Without a working compiler the backend is
unavailable and ``Stylizer``'s ``auto`` falls back to ONNX Runtime. ``FAST_STYLE_NO_FUSED=1``
switches it off.

Allocator: the activations of a 512² image are tens of MB. glibc returns freed blocks of that
size to the OS and page-faults them back in on the next image, which cost this backend 18% of
the slim network's time and eager PyTorch more (docs/benchmarks.md). ``tune_malloc`` (called
when the backend is built, and by ``Stylizer`` on CPU; ``FAST_STYLE_MALLOC_TUNING=0`` skips it)
raises glibc's mmap and trim thresholds to 1 GiB so that they are reused. It is process-wide
and keeps up to that much freed memory in the heap.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

from fast_style.core.imaging import pad_to_multiple
from fast_style.core.network import MIN_SIZE, SIZE_MULTIPLE, TransformerNet
from fast_style.infer.export import DeployNet

SOURCE = Path(__file__).with_name("csrc") / "fused_glue.c"
CFLAGS = (
    "-O3",
    "-march=native",
    "-fopenmp",
    "-fPIC",
    "-shared",
    "-std=gnu99",
    # no errno or FP-trap side effects: lets the compiler vectorise floor/fmax and if-convert
    # selects (the output sigmoid); unlike -ffast-math, keeps IEEE semantics otherwise
    "-fno-math-errno",
    "-fno-trapping-math",
)
_CL = torch.channels_last
_MALLOC_THRESHOLD = 1 << 30  # bytes (glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD)


class FusedUnavailableError(RuntimeError):
    """The fused backend cannot run here (no compiler, failed build, switched off)."""


class _Src(ctypes.Structure):
    """``fs_src`` of fused_glue.c: how a kernel reads an NHWC image."""

    _fields_ = [
        ("p", ctypes.c_void_p),
        ("bs", ctypes.c_int64),
        ("rs", ctypes.c_int64),
        ("cs", ctypes.c_int64),
        ("C", ctypes.c_int64),
        ("sub", ctypes.c_int32),
    ]


def _src(t: torch.Tensor, *, channels: int | None = None, sub: bool = False, offset: int = 0):
    """A kernel's view of ``t`` (B, C, H, W) in channels_last memory, optionally starting
    ``offset`` pixels down and right (the interior of a padded buffer)."""
    sb, sc, sh, sw = t.stride()
    if sc != 1:
        raise ValueError("fused kernels need channels_last tensors")
    ptr = t.data_ptr() + t.element_size() * offset * (sh + sw)
    return _Src(ptr, sb, sh, sw, channels or t.shape[1], int(sub))


# --- building and loading the kernels ----------------------------------------------------------


def ext_cache_dir() -> Path:
    """``$FAST_STYLE_CACHE`` or ``~/.cache/fast_style``, sub-folder ``ext``."""
    root = os.environ.get("FAST_STYLE_CACHE") or Path.home() / ".cache" / "fast_style"
    return Path(root) / "ext"


def find_compiler() -> str | None:
    """``$CC``, else ``cc``, else ``gcc`` on PATH; None if there is none."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or (cc if Path(cc).is_file() else None)
    return shutil.which("cc") or shutil.which("gcc")


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the machine and its CPU flags."""
    sig = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    sig += line
    except OSError:
        sig += platform.processor()
    return sig


def _library_path(cc: str) -> Path:
    """Where the build of this source, with these flags, compiler and CPU, is cached."""
    try:
        version = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.split("\n")[0]
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FusedUnavailableError(f"{cc} failed to run: {e}") from None
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(CFLAGS).encode(), version.encode()):
        key.update(part)
    key.update(_cpu_signature().encode())
    return ext_cache_dir() / f"fused_glue-{key.hexdigest()[:24]}.so"


def _check_switch() -> None:
    """Raise ``FusedUnavailableError`` when ``FAST_STYLE_NO_FUSED`` switches the backend off."""
    if os.environ.get("FAST_STYLE_NO_FUSED", "") not in ("", "0"):
        raise FusedUnavailableError("switched off by FAST_STYLE_NO_FUSED")


def build_library(force: bool = False) -> Path:
    """Compile ``csrc/fused_glue.c`` (about 2 s) unless a cached build exists; returns
    the shared library's path. Raises ``FusedUnavailableError`` with the reason."""
    _check_switch()
    cc = find_compiler()
    if cc is None:
        raise FusedUnavailableError("no C compiler found (set CC or install gcc)")
    path = _library_path(cc)
    if path.is_file() and not force:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        out_dir = path.parent
    except OSError:
        out_dir = Path(tempfile.mkdtemp(prefix="fast_style_ext_"))
        path = out_dir / path.name
    tmp = out_dir / f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.so"
    cmd = [cc, *CFLAGS, "-o", str(tmp), str(SOURCE), "-lm"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FusedUnavailableError(f"{cc} failed to run: {e}") from None
    if res.returncode != 0:
        first = (res.stderr.strip().splitlines() or ["no message"])[0]
        raise FusedUnavailableError(f"{cc} could not build the fused kernels: {first}")
    tmp.replace(path)  # atomic: a concurrent process never loads a half-written file
    return path


_LIB: ctypes.CDLL | None = None
_LIB_ERROR: str | None = None
_LIB_LOCK = threading.Lock()


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, ptr, src = ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(_Src)
    i32, f32 = ctypes.c_int, ctypes.c_float
    lib.fs_norm_stats.argtypes = [src, i64, i64, i64, ptr, ptr, f32, ptr, ptr, i32]
    lib.fs_norm_apply.argtypes = [src, src, i64, i64, i64, ptr, ptr, i64, i32, i64, i32, ptr, i32]
    lib.fs_rowsplit_tail.argtypes = [ptr, i64, i64, i64, i64, i64, i64, i64, i64, ptr, i32]
    for fn in (lib.fs_norm_stats, lib.fs_norm_apply, lib.fs_rowsplit_tail):
        fn.restype = None
    return lib


def load_library() -> ctypes.CDLL:
    """The compiled kernels (built on first use, once per process). A cached build that does
    not load (damaged file) is rebuilt once. Raises ``FusedUnavailableError``."""
    global _LIB, _LIB_ERROR
    _check_switch()
    with _LIB_LOCK:
        if _LIB is not None:
            return _LIB
        if _LIB_ERROR is not None:
            raise FusedUnavailableError(_LIB_ERROR)
        try:
            try:
                lib = ctypes.CDLL(str(build_library()))
            except OSError:
                lib = ctypes.CDLL(str(build_library(force=True)))
            _LIB = _declare(lib)
            return _LIB
        except (FusedUnavailableError, OSError, AttributeError) as e:
            _LIB_ERROR = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise FusedUnavailableError(_LIB_ERROR) from None


def fused_available() -> bool:
    """True when the kernels build and load on this machine (CPU only)."""
    try:
        load_library()
    except FusedUnavailableError:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why ``fused_available()`` is False (None when it is True)."""
    try:
        load_library()
    except FusedUnavailableError as e:
        return str(e)
    return None


def tune_malloc() -> bool:
    """Raise glibc's mmap/trim thresholds so that large freed activations are reused instead
    of being unmapped and page-faulted back in on every image. No-op (False) off glibc or with
    ``FAST_STYLE_MALLOC_TUNING=0``."""
    if os.environ.get("FAST_STYLE_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith(
        "linux"
    ):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    ok = libc.mallopt(m_mmap_threshold, _MALLOC_THRESHOLD)
    return bool(ok and libc.mallopt(m_trim_threshold, _MALLOC_THRESHOLD))


# --- the network ------------------------------------------------------------------------------


class _Norm:
    """One instance norm's affine parameters and epsilon."""

    def __init__(self, m: torch.nn.InstanceNorm2d):
        self.channels = m.num_features
        self.gamma = m.weight.detach().float().contiguous()
        self.beta = m.bias.detach().float().contiguous()
        self.eps = float(m.eps)


def _cl(t: torch.Tensor) -> torch.Tensor:
    """A 4-D weight as float32 channels_last (oneDNN's preferred layout for NHWC inputs)."""
    return t.detach().float().contiguous(memory_format=_CL)


def _vec(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().contiguous()


def _conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int = 1
) -> torch.Tensor:
    """``F.conv2d`` with a channels_last result (oneDNN's is already; this guards the kernels'
    layout assumption for any torch version or shape)."""
    return F.conv2d(x, weight, bias, stride).contiguous(memory_format=_CL)


def _conv(conv: torch.nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv's (weight, bias), ready for ``F.conv2d`` on channels_last inputs."""
    return _cl(conv.weight), _vec(conv.bias)


class FusedRunner:
    """``TransformerNet`` on CPU with the fused kernels: ``(B, 3, H, W)`` float in [0, 1], any
    H, W ≥ 1 → the same shape in [0, 1], equal to ``net(x)`` to float rounding.

    ``norm_affine`` (2, ΣC), as built by ``fast_style.infer.stylizer.pack_norm_affine``, freezes
    every instance norm to a given affine map (the tiles of tiled inference), as
    ``fast_style.infer.export.FrozenNormNet`` does. The weights are a snapshot of ``net``'s."""

    def __init__(self, net: TransformerNet, threads: int | None = None):
        self.lib = load_library()
        tune_malloc()
        self.threads = int(threads or torch.get_num_threads())
        d = DeployNet(copy.deepcopy(net).float().cpu().eval())
        self.encoder = [
            (*_conv(layer[1]), layer[1].stride[0], _Norm(layer[2])) for layer in d.encoder
        ]
        self.residuals = [
            ((*_conv(b.body[0][1]), _Norm(b.body[0][2])), (*_conv(b.body[2]), _Norm(b.body[3])))
            for b in d.residuals
        ]
        self.ups = [(_cl(u.weight), _vec(u.bias), _Norm(u.norm)) for u in (d.up1, d.up2)]
        # Output layer: RowSplitConv's 1 x k conv with its channels padded to a multiple of 8
        # (oneDNN's AVX2 block; 27 → 32 measured 10% faster); the padding channels are unread.
        w, b = d.out.weight, d.out.bias
        k = -(-w.shape[0] // 8) * 8
        self.out_weight = _cl(F.pad(w, (0, 0, 0, 0, 0, 0, 0, k - w.shape[0])))
        self.out_bias = _vec(F.pad(b, (0, k - b.shape[0])))
        self.out_pad, self.cout, self.rows = d.out.pad, d.out.cout, d.out.rows
        self.norms = [n for *_, n in self.encoder]
        for pair in self.residuals:
            self.norms += [pair[0][2], pair[1][2]]
        self.norms += [n for *_, n in self.ups]

    @property
    def total_channels(self) -> int:
        """ΣC of the instance norms: the width of ``norm_affine``."""
        return sum(n.channels for n in self.norms)

    # -- one gap between convolutions --------------------------------------------------------

    def _norm(
        self,
        src: _Src,
        size: tuple[int, int, int],
        norm: _Norm,
        affine: tuple[torch.Tensor, torch.Tensor] | None,
        *,
        relu: bool,
        pad: int,
        replicate: bool = False,
        skip: _Src | None = None,
    ) -> torch.Tensor:
        """Instance norm (or the frozen ``affine``) → [+ skip] → [ReLU] → pad; returns the next
        convolution's input (B, C, H + 2 pad, W + 2 pad), channels_last."""
        b, h, w = size
        c = src.C
        if affine is None:
            scale, shift = torch.empty(b, c), torch.empty(b, c)
            self.lib.fs_norm_stats(
                ctypes.byref(src), b, h, w, norm.gamma.data_ptr(), norm.beta.data_ptr(),
                norm.eps, scale.data_ptr(), shift.data_ptr(), self.threads,
            )  # fmt: skip
            stride = c
        else:
            scale, shift = affine
            stride = 0
        out = torch.empty(b, h + 2 * pad, w + 2 * pad, c)
        self.lib.fs_norm_apply(
            ctypes.byref(src), ctypes.byref(skip) if skip is not None else None, b, h, w,
            scale.data_ptr(), shift.data_ptr(), stride, int(relu), pad, int(replicate),
            out.data_ptr(), self.threads,
        )  # fmt: skip
        return out.permute(0, 3, 1, 2)  # (B, C, H', W') view, channels_last in memory

    def _affines(self, norm_affine: torch.Tensor | None) -> list:
        """Per-layer (scale, shift) slices of ``norm_affine``, or None per layer."""
        if norm_affine is None:
            return [None] * len(self.norms)
        a = norm_affine.detach().float().cpu().contiguous()
        if a.shape != (2, self.total_channels):
            raise ValueError(
                f"norm_affine must be (2, {self.total_channels}), got {tuple(a.shape)}"
            )
        out, off = [], 0
        for n in self.norms:
            out.append((a[0, off : off + n.channels].clone(), a[1, off : off + n.channels].clone()))
            off += n.channels
        return out

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, norm_affine: torch.Tensor | None = None) -> torch.Tensor:
        device = x.device
        x, (h, w) = pad_to_multiple(x.detach().float().cpu(), SIZE_MULTIPLE, MIN_SIZE)
        affines = iter(self._affines(norm_affine))
        b = x.shape[0]
        p = self.out_pad
        y = F.pad(x, (p, p, p, p), mode="reflect").contiguous(memory_format=_CL)
        for weight, bias, stride, norm in self.encoder:
            t = _conv2d(y, weight, bias, stride)
            size = (b, t.shape[2], t.shape[3])
            y = self._norm(_src(t), size, norm, next(affines), relu=True, pad=1)
        for i, ((wa, ba, na), (wb, bb, nb)) in enumerate(self.residuals):
            t = _conv2d(y, wa, ba)
            size = (b, t.shape[2], t.shape[3])
            mid = self._norm(_src(t), size, na, next(affines), relu=True, pad=1)
            u = _conv2d(mid, wb, bb)
            # the last block's output feeds the sub-pixel stage, which pads by replication
            last = i == len(self.residuals) - 1
            y = self._norm(
                _src(u), size, nb, next(affines), relu=False, pad=1, replicate=last,
                skip=_src(y, offset=1),
            )  # fmt: skip
        for j, (weight, bias, norm) in enumerate(self.ups):
            t = _conv2d(y, weight, bias)  # (B, 4 C, h + 1, w + 1): the four phases
            size = (b, 2 * (t.shape[2] - 1), 2 * (t.shape[3] - 1))
            src = _src(t, channels=t.shape[1] // 4, sub=True)
            last = j == len(self.ups) - 1
            y = self._norm(
                src, size, norm, next(affines), relu=True, pad=p if last else 1,
                replicate=not last,
            )  # fmt: skip
        t = _conv2d(y, self.out_weight, self.out_bias)
        out = torch.empty(b, self.cout, h, w)
        self.lib.fs_rowsplit_tail(
            t.data_ptr(), b, t.shape[2], t.shape[3], t.shape[1], self.cout, self.rows, h, w,
            out.data_ptr(), self.threads,
        )  # fmt: skip
        return out.to(device)
