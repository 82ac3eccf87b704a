"""The ``fused`` CPU backend: PyTorch (oneDNN) convolutions + fused C kernels for the rest.

Between two convolutions the transform network does instance norm, ReLU, a residual add and a
reflection pad (and, in ``DeployNet``'s decoder, a sub-pixel interleave; at the end, the
row-split sum and the scaled tanh). ONNX Runtime and eager PyTorch run these as 4-8 separate
passes, several single-threaded, and they took a third of the time of the slim network on the
2-core reference CPU (docs/benchmarks.md). Here each gap is two passes of a small C kernel
(``csrc/fused_glue.c``): statistics, then normalise + activation + skip + pad written straight
into the next convolution's padded NHWC input. The convolutions are ``DeployNet``'s (same
weights), so the output equals ``TransformerNet``'s to float rounding.

``FusedRunner`` walks ``DeployNet``'s named stages (``fast_style.core.network.named_stages``)
into a flat plan of conv units, each followed by one glue pass; it knows the stage kinds
"conv", "residual" (conv units + skip), "upsample" (sub-pixel) and "output" (row split), not
any layer's position.

Building: the C file is compiled at first use with the system C compiler (``$CC``, ``cc`` or
``gcc``; ``-O3 -march=native -fopenmp``) into ``$FAST_STYLE_CACHE/ext`` (default
``~/.cache/fast_style/ext``), keyed by the source, the flags, the compiler, the CPU and the
OpenMP runtime, and loaded with ``ctypes`` (no Python headers needed). It is linked against
the OpenMP runtime PyTorch already has in the process (``openmp_runtime``: the libgomp a pip
wheel bundles, say), so that the kernels and PyTorch's convolutions share one runtime and one
thread pool instead of two pools competing for the cores. The library reports an ABI version
that the loader checks (a stale build is rebuilt once). Without a working compiler the backend
is unavailable and ``Stylizer``'s ``auto`` falls back to ONNX Runtime. ``FAST_STYLE_NO_FUSED=1``
switches it off.

Styles (multi-style networks, conditional instance norm): ``FusedRunner(x, style=...)`` with
(B, S) weights folds each image's γ/β into the statistics kernel's output (one shared row: the
one-style kernels exactly; per-image rows: a (B, C) fold in Python), so a selected style or a
mix costs what one style does. A painted two-style mask (``PaintedStyle``, or a (B, S, H, W)
map that reduces to one) runs in the same single apply pass: the kernel takes the mask (at each
layer's resolution: full, 1/2, 1/4, average-pooled as ``style_affine`` pools a map) and a
second per-channel scale/shift, the change from mask 0 to mask 1, and applies
``x · (k + m · dk) + (t + m · dt)`` per pixel, i.e. γ_B + m(γ_A − γ_B) and β_B + m(β_A − β_B)
after the normalisation. A map with three or more styles in use (or whose weights do not sum
to the same total everywhere) has no such form: it runs in PyTorch (``DeployNet``, exact,
slower), with a ``RuntimeWarning`` once per runner.

Safety: every kernel call goes through a wrapper (``norm_stats``, ``norm_apply``,
``rowsplit_tail``) that checks dtypes, layouts, sizes, pads and buffer shapes in Python and
raises ``ValueError``; the C side re-checks its arguments and allocations and returns an error
code, raised as ``FusedKernelError`` (``MemoryError`` for a failed allocation). A bad call
never crashes the process.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fast_style.core.imaging import crop_to, pad_to_multiple
from fast_style.core.network import (
    MIN_SIZE,
    SIZE_MULTIPLE,
    ConditionalInstanceNorm,
    ConvNormAct,
    Stage,
    TransformerNet,
    named_norms,
    named_stages,
    norm_params,
)
from fast_style.infer.allocator import tune_malloc
from fast_style.infer.deploy import DeployNet, PaintedStyle, RowSplitConv, SubPixelConvLayer
from fast_style.infer.tiling import StatsHook

__all__ = [
    "ABI_VERSION",
    "AbiMismatchError",
    "FusedKernelError",
    "FusedRunner",
    "FusedUnavailableError",
    "Source",
    "build_library",
    "fused_available",
    "load_library",
    "mapped_openmp_runtimes",
    "norm_apply",
    "norm_stats",
    "openmp_runtime",
    "rowsplit_tail",
    "tune_malloc",  # re-exported from fast_style.infer.allocator (its old home)
    "unavailable_reason",
]

SOURCE = Path(__file__).with_name("csrc") / "fused_glue.c"
# fused_glue.c's FS_ABI_VERSION; the loader refuses a library reporting another. 3: the
# painted-mask arguments of fs_norm_apply.
ABI_VERSION = 3
CFLAGS = (
    "-O3",
    "-march=native",
    "-fopenmp",
    "-fPIC",
    "-std=gnu99",
    # no errno or FP-trap side effects: lets the compiler vectorise floor/fmax and if-convert
    # selects (the output sigmoid); unlike -ffast-math, keeps IEEE semantics otherwise
    "-fno-math-errno",
    "-fno-trapping-math",
)
_CL = torch.channels_last
_FS_ENOMEM = 2  # fused_glue.c's error code for a failed allocation (FS_EINVAL is 1)
# fused_glue.c's bounds (FS_MAX_THREADS, FS_MAX_CHANNELS): refused here first, with a message.
MAX_THREADS = 4096
MAX_CHANNELS = 1 << 20
# Shared-library names of the OpenMP runtimes GCC-compiled code can link against: GNU libgomp
# (also under a wheel's hashed name, libgomp-<hash>.so.1), Intel's libiomp5 and LLVM's libomp
# (both export the GOMP_* entry points GCC emits).
_OPENMP_NAME = re.compile(r"lib(gomp|iomp5|omp)([-.][^/]*)?\.so(\.\d+)*")


class FusedUnavailableError(RuntimeError):
    """The fused backend cannot run here (no compiler, failed build, switched off)."""


class AbiMismatchError(FusedUnavailableError):
    """The compiled library reports another ABI version than this Python code expects."""


class FusedKernelError(RuntimeError):
    """A fused kernel refused its arguments (an error code from fused_glue.c)."""


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


def mapped_openmp_runtimes() -> list[str]:
    """Real paths of the OpenMP runtimes mapped into this process (``/proc/self/maps``);
    empty off Linux. More than one means two thread pools competing for the cores."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = set()
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) == 6 and _OPENMP_NAME.fullmatch(Path(parts[5].strip()).name):
            found.add(os.path.realpath(parts[5].strip()))
    return sorted(found)


def openmp_runtime() -> Path | None:
    """The OpenMP runtime PyTorch runs on in this process (the kernels link against it):
    the one inside torch's installation if several are mapped. None off Linux, or when torch
    loaded none (then the compiler's own runtime is linked, the only one in the process)."""
    runtimes = [Path(p) for p in mapped_openmp_runtimes()]
    site = Path(torch.__file__).resolve().parent.parent  # torch/lib and torch.libs live here
    inside = [p for p in runtimes if site in p.parents]
    ranked = inside or runtimes
    return ranked[0] if ranked else None


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


def _library_path(cc: str, runtime: Path | None) -> Path:
    """Where the build of this source, with these flags, compiler, CPU and OpenMP runtime, is
    cached."""
    try:
        version = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.split("\n")[0]
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FusedUnavailableError(f"{cc} failed to run: {e}") from None
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(CFLAGS).encode(), version.encode()):
        key.update(part)
    key.update(f"{_cpu_signature()}|{runtime}|abi{ABI_VERSION}".encode())
    return ext_cache_dir() / f"fused_glue-{key.hexdigest()[:24]}.so"


def _check_switch() -> None:
    """Raise ``FusedUnavailableError`` when ``FAST_STYLE_NO_FUSED`` switches the backend off."""
    if os.environ.get("FAST_STYLE_NO_FUSED", "") not in ("", "0"):
        raise FusedUnavailableError("switched off by FAST_STYLE_NO_FUSED")


def _build_commands(cc: str, runtime: Path | None, out: Path) -> list[list[str]]:
    """Compiler invocations that build ``out``. With a known runtime: compile with -fopenmp,
    then link against that runtime by path with an rpath to its folder, not the compiler's
    ``-lgomp`` (which would map a second runtime next to PyTorch's)."""
    if runtime is None:
        return [[cc, *CFLAGS, "-shared", "-o", str(out), str(SOURCE), "-lm"]]
    obj = out.with_suffix(".o")
    link = [str(obj), str(runtime), f"-Wl,-rpath,{runtime.parent}", "-lm"]
    return [
        [cc, *CFLAGS, "-c", "-o", str(obj), str(SOURCE)],
        [cc, "-shared", "-pthread", "-o", str(out), *link],
    ]


def build_library(force: bool = False) -> Path:
    """Compile ``csrc/fused_glue.c`` (about 2 s) unless a cached build exists; returns
    the shared library's path. Raises ``FusedUnavailableError`` with the reason."""
    _check_switch()
    cc = find_compiler()
    if cc is None:
        raise FusedUnavailableError("no C compiler found (set CC or install gcc)")
    runtime = openmp_runtime()
    path = _library_path(cc, runtime)
    if path.is_file() and not force:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        out_dir = path.parent
    except OSError:
        out_dir = Path(tempfile.mkdtemp(prefix="fast_style_ext_"))
        path = out_dir / path.name
    tmp = out_dir / f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.so"
    try:
        for cmd in _build_commands(cc, runtime, tmp):
            _run_compiler(cc, cmd)
        tmp.replace(path)  # atomic: a concurrent process never loads a half-written file
    finally:
        tmp.with_suffix(".o").unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return path


def _run_compiler(cc: str, cmd: list[str]) -> None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FusedUnavailableError(f"{cc} failed to run: {e}") from None
    if res.returncode != 0:
        first = (res.stderr.strip().splitlines() or ["no message"])[0]
        raise FusedUnavailableError(f"{cc} could not build the fused kernels: {first}")


_LIB: ctypes.CDLL | None = None
_LIB_ERROR: str | None = None
_LIB_LOCK = threading.Lock()


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, ptr, src = ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(_Src)
    i32, f32 = ctypes.c_int, ctypes.c_float
    lib.fs_norm_stats.argtypes = [src, i64, i64, i64, ptr, ptr, f32, ptr, ptr, i32]
    lib.fs_norm_apply.argtypes = [
        src, src, i64, i64, i64, ptr, ptr, i64, ptr, ptr, ptr, i32, i64, i32, ptr, i32
    ]  # fmt: skip
    lib.fs_rowsplit_tail.argtypes = [ptr, i64, i64, i64, i64, i64, i64, i64, i64, ptr, i32]
    for fn in (lib.fs_norm_stats, lib.fs_norm_apply, lib.fs_rowsplit_tail):
        fn.restype = i32  # FS_OK (0) or an FS_E* code
    return lib


def _dlclose(lib: ctypes.CDLL) -> None:
    """Drop this handle's reference (the file stays mapped while others hold it)."""
    import _ctypes

    close = getattr(_ctypes, "dlclose", None)
    if close is not None:
        close(lib._handle)


def _open(path: Path) -> ctypes.CDLL:
    """Load the library at ``path`` and check its ABI version before declaring anything."""
    lib = ctypes.CDLL(str(path))
    try:
        fn = lib.fs_abi_version
    except AttributeError:
        found: int | None = None  # built before the library had a version
    else:
        fn.argtypes, fn.restype = [], ctypes.c_int
        found = int(fn())
    if found != ABI_VERSION:
        _dlclose(lib)
        raise AbiMismatchError(
            f"{path.name} has kernel ABI version {found}, this fast_style expects {ABI_VERSION}"
        )
    return _declare(lib)


def load_library() -> ctypes.CDLL:
    """The compiled kernels (built on first use, once per process). A cached build that does
    not load (damaged file) or reports another ABI version is rebuilt once. Raises
    ``FusedUnavailableError`` (``AbiMismatchError`` if the rebuild still mismatches)."""
    global _LIB, _LIB_ERROR
    _check_switch()
    with _LIB_LOCK:
        if _LIB is not None:
            return _LIB
        if _LIB_ERROR is not None:
            raise FusedUnavailableError(_LIB_ERROR)
        try:
            try:
                lib = _open(build_library())
            except (OSError, AttributeError, AbiMismatchError):
                lib = _open(build_library(force=True))
            _LIB = lib
            return _LIB
        except AbiMismatchError as e:
            _LIB_ERROR = str(e)
            raise
        except (FusedUnavailableError, OSError, AttributeError) as e:
            _LIB_ERROR = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise FusedUnavailableError(_LIB_ERROR) from None


def _lib() -> ctypes.CDLL:
    """The loaded library (kernel calls after the first load skip the lock and the switch)."""
    return _LIB if _LIB is not None else load_library()


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


# --- checked kernel calls ----------------------------------------------------------------------


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


def _check_f32(t: object, what: str, dim: int | None = None) -> torch.Tensor:
    """``t`` must be a non-empty float32 CPU tensor (of ``dim`` dimensions if given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float32 or t.device.type != "cpu":
        raise ValueError(f"{what} must be float32 on the CPU, got {t.dtype} on {t.device}")
    if (dim is not None and t.dim() != dim) or t.numel() == 0:
        raise ValueError(f"{what} must be a non-empty {dim}-D tensor, got {tuple(t.shape)}")
    return t


def _check_threads(threads: int) -> int:
    if not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an integer in 1..{MAX_THREADS}, got {threads!r}")
    return threads


@dataclass(frozen=True)
class Source:
    """A kernel's read-only view of a float32 CPU image whose channels are adjacent in memory
    (channels_last): ``tensor`` (B, C, H, W), or its interior ``offset`` pixels in from every
    side (a padded buffer), or with ``sub`` the 4-phase output (B, 4C, h + 1, w + 1) of a
    sub-pixel conv read as the image (B, C, 2h, 2w). Checked on construction."""

    tensor: torch.Tensor
    offset: int = 0
    sub: bool = False

    def __post_init__(self) -> None:
        t = _check_f32(self.tensor, "source", 4)
        if t.stride(1) != 1:
            raise ValueError(f"source must be channels_last (channel stride 1), got {t.stride()}")
        b, c, h, w = t.shape
        if self.sub and (self.offset != 0 or c % 4 or h < 2 or w < 2):
            raise ValueError(
                f"a sub-pixel source is (B, 4C, h + 1 ≥ 2, w + 1 ≥ 2), got {(b, c, h, w)}"
            )
        if not isinstance(self.offset, int) or self.offset < 0 or 2 * self.offset >= min(h, w):
            raise ValueError(f"offset {self.offset!r} leaves no interior in {h}x{w}")
        if self.size[1] > MAX_CHANNELS:
            raise ValueError(f"source has {self.size[1]} channels, at most {MAX_CHANNELS}")

    @property
    def size(self) -> tuple[int, int, int, int]:
        """The image read: (B, C, H, W)."""
        b, c, h, w = self.tensor.shape
        if self.sub:
            return b, c // 4, 2 * (h - 1), 2 * (w - 1)
        return b, c, h - 2 * self.offset, w - 2 * self.offset

    def struct(self) -> _Src:
        t = self.tensor
        sb, _, sh, sw = t.stride()
        ptr = t.data_ptr() + t.element_size() * self.offset * (sh + sw)
        return _Src(ptr, sb, sh, sw, self.size[1], int(self.sub))


def _vector(t: torch.Tensor, n: int, what: str) -> torch.Tensor:
    _check_f32(t, what, 1)
    if t.shape[0] != n or not t.is_contiguous():
        raise ValueError(f"{what} must be a contiguous ({n},) tensor, got {tuple(t.shape)}")
    return t


def _raise_for(code: int, kernel: str) -> None:
    """Python's error for a kernel's return code (0: none)."""
    if code == _FS_ENOMEM:
        raise MemoryError(f"{kernel}: out of memory")
    if code != 0:
        raise FusedKernelError(f"{kernel} refused its arguments (error {code})")


def norm_stats(
    src: Source, gamma: torch.Tensor, beta: torch.Tensor, eps: float, threads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance-norm statistics of ``src`` (B, C, H, W) folded with γ/β (C,): (scale, shift),
    each (B, C), such that the norm is ``x * scale + shift`` per image and channel."""
    b, c, h, w = src.size
    _vector(gamma, c, "gamma")
    _vector(beta, c, "beta")
    if not (isinstance(eps, float | int) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number ≥ 0, got {eps!r}")
    scale, shift = torch.empty(b, c), torch.empty(b, c)
    s = src.struct()
    code = _lib().fs_norm_stats(
        ctypes.byref(s), b, h, w, gamma.data_ptr(), beta.data_ptr(), float(eps),
        scale.data_ptr(), shift.data_ptr(), _check_threads(threads),
    )  # fmt: skip
    _raise_for(code, "fs_norm_stats")
    return scale, shift


def _check_affine(scale: torch.Tensor, shift: torch.Tensor, b: int, c: int) -> int:
    """(B, C) per image or (C,) for the whole batch; returns the row stride (C or 0)."""
    _check_f32(scale, "scale")
    _check_f32(shift, "shift")
    shapes = (tuple(scale.shape), tuple(shift.shape))
    if shapes[0] != shapes[1] or shapes[0] not in ((b, c), (c,)):
        raise ValueError(f"scale and shift must both be ({b}, {c}) or ({c},), got {shapes}")
    if not (scale.is_contiguous() and shift.is_contiguous()):
        raise ValueError("scale and shift must be contiguous")
    return c if scale.dim() == 2 else 0


def _check_mask(
    mask: torch.Tensor | None,
    mask_scale: torch.Tensor | None,
    mask_shift: torch.Tensor | None,
    scale: torch.Tensor,
    size: tuple[int, int, int, int],
) -> None:
    """A painted mask (B, H, W) of the output's interior, and its scale/shift changes shaped
    as ``scale``; all three or none."""
    if mask is None and mask_scale is None and mask_shift is None:
        return
    if mask is None or mask_scale is None or mask_shift is None:
        raise ValueError("mask, mask_scale and mask_shift come together")
    b, c, h, w = size
    m = _check_f32(mask, "mask", 3)
    if tuple(m.shape) != (b, h, w) or not m.is_contiguous():
        raise ValueError(f"mask must be a contiguous ({b}, {h}, {w}) tensor, got {tuple(m.shape)}")
    if _check_affine(mask_scale, mask_shift, b, c) != (c if scale.dim() == 2 else 0):
        raise ValueError(f"mask_scale/mask_shift must be shaped as scale {tuple(scale.shape)}")


def norm_apply(
    src: Source,
    scale: torch.Tensor,
    shift: torch.Tensor,
    *,
    relu: bool,
    pad: int,
    replicate: bool = False,
    skip: Source | None = None,
    threads: int = 1,
    mask: torch.Tensor | None = None,
    mask_scale: torch.Tensor | None = None,
    mask_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """``src * scale + shift`` (+ ``skip``) → ReLU if ``relu`` → padded by ``pad`` (reflect, or
    replicate): (B, C, H + 2 pad, W + 2 pad), a channels_last view. ``scale``/``shift``: (B, C)
    or (C,). A skip (same size as ``src``, not sub-pixel) excludes ``relu``.

    A painted two-style mask: ``mask`` (B, H, W), one value m per pixel of ``src`` (0 and 1
    select, between interpolates), and ``mask_scale``/``mask_shift`` shaped as ``scale``: the
    map at a pixel is ``scale + m · mask_scale``, ``shift + m · mask_shift``."""
    b, c, h, w = src.size
    stride = _check_affine(scale, shift, b, c)
    _check_mask(mask, mask_scale, mask_shift, scale, src.size)
    if not isinstance(pad, int) or pad < 0 or (pad > min(h, w) if replicate else pad >= min(h, w)):
        mode = "replicate: at most H and W" if replicate else "reflect: below H and W"
        raise ValueError(f"pad {pad!r} out of range for a {h}x{w} image ({mode})")
    if skip is not None:
        if skip.size != src.size or skip.sub or src.sub:
            raise ValueError(
                f"skip {skip.size} must be a plain source of the size of src {src.size}"
            )
        if relu:
            raise ValueError("the skip is added after the norm, with no ReLU after it")
    out = torch.empty(b, h + 2 * pad, w + 2 * pad, c)
    s, k = src.struct(), skip.struct() if skip is not None else None
    ptrs = [t.data_ptr() if t is not None else None for t in (mask, mask_scale, mask_shift)]
    code = _lib().fs_norm_apply(
        ctypes.byref(s), ctypes.byref(k) if k is not None else None, b, h, w,
        scale.data_ptr(), shift.data_ptr(), stride, *ptrs, int(bool(relu)), pad,
        int(bool(replicate)), out.data_ptr(), _check_threads(threads),
    )  # fmt: skip
    _raise_for(code, "fs_norm_apply")
    return out.permute(0, 3, 1, 2)  # (B, C, H', W') view, channels_last in memory


def rowsplit_tail(
    t: torch.Tensor, cout: int, rows: int, size: tuple[int, int], threads: int = 1
) -> torch.Tensor:
    """The row-split output conv's tail: ``t`` (B, K ≥ cout · rows, Ht, Wt) channels_last, the
    1×k conv's output, → ``0.5 · (tanh(Σ_dy t[o · rows + dy] shifted dy rows) + 1)`` cropped to
    ``size`` = (h, w): (B, cout, h, w) NCHW in [0, 1]."""
    _check_f32(t, "t", 4)
    if not t.is_contiguous(memory_format=_CL):
        raise ValueError(f"t must be channels_last-contiguous, got strides {t.stride()}")
    b, k, ht, wt = t.shape
    h, w = size
    if not all(isinstance(v, int) and v >= 1 for v in (cout, rows, h, w)):
        raise ValueError(f"cout, rows, h, w must be positive integers, got {cout, rows, h, w}")
    if cout * rows > k or h + rows - 1 > ht or w > wt or k > MAX_CHANNELS:
        raise ValueError(
            f"t {tuple(t.shape)} is too small for {cout} x {rows} rows at {h}x{w} "
            f"(needs K ≥ {cout * rows}, Ht ≥ {h + rows - 1}, Wt ≥ {w})"
        )
    out = torch.empty(b, cout, h, w)
    code = _lib().fs_rowsplit_tail(
        t.data_ptr(), b, ht, wt, k, cout, rows, h, w, out.data_ptr(), _check_threads(threads)
    )
    _raise_for(code, "fs_rowsplit_tail")
    return out


# --- the network as a plan of conv units ------------------------------------------------------


@dataclass
class _Norm:
    """One norm layer: its name (``named_norms``), γ/β (S, C), one row per style (S = 1 for a
    plain instance norm), and epsilon."""

    name: str
    gamma: torch.Tensor
    beta: torch.Tensor
    eps: float

    @classmethod
    def of(cls, name: str, m: nn.Module) -> _Norm:
        if not isinstance(m, nn.InstanceNorm2d | ConditionalInstanceNorm):
            raise NotImplementedError(f"{name}: the fused kernels compute instance norms only")
        gamma, beta, eps = norm_params(m)
        return cls(name, _rows(gamma), _rows(beta), eps)

    @property
    def channels(self) -> int:
        return self.gamma.shape[1]


@dataclass
class _Step:
    """One convolution of the plan and the glue pass after it."""

    name: str
    weight: torch.Tensor  # channels_last
    bias: torch.Tensor
    stride: int
    groups: int
    norm: _Norm
    relu: bool
    pad: int  # the pad this conv's input needs (written by the previous glue pass)
    replicate: bool = False  # that pad replicates (sub-pixel stages) instead of reflecting
    sub: bool = False  # the conv is a sub-pixel stage's 4-phase conv
    block_start: bool = False  # its input is a residual block's input, kept for the skip
    skip: bool = False  # the glue adds that block input


def _cl(t: torch.Tensor) -> torch.Tensor:
    """A 4-D weight as float32 channels_last (oneDNN's preferred layout for NHWC inputs)."""
    return t.detach().float().contiguous(memory_format=_CL)


def _vec(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().contiguous()


def _rows(t: torch.Tensor) -> torch.Tensor:
    """γ or β, (C,) or (S, C), as float32 (S, C) rows (S = 1 for a plain norm)."""
    return t.detach().float().reshape(-1, t.shape[-1]).contiguous()


def _relu(name: str, act: nn.Module) -> bool:
    if isinstance(act, nn.ReLU | nn.Identity):
        return isinstance(act, nn.ReLU)
    raise NotImplementedError(f"{name}: the fused kernels apply ReLU or nothing, not {act}")


def _unit_step(name: str, unit: ConvNormAct) -> _Step:
    """A ``ConvNormAct`` (reflect pad → conv → instance norm → ReLU or identity) as a step."""
    conv, pad = unit.conv, unit.pad
    p = tuple(pad.padding) if isinstance(pad, nn.ReflectionPad2d) else None
    if p is None or len(set(p)) != 1 or conv.padding != (0, 0) or conv.dilation != (1, 1):
        raise NotImplementedError(f"{name}: needs an even reflection pad and an unpadded conv")
    if conv.bias is None or conv.stride[0] != conv.stride[1]:
        raise NotImplementedError(f"{name}: needs a conv with bias and equal strides")
    return _Step(
        name, _cl(conv.weight), _vec(conv.bias), conv.stride[0], conv.groups,
        _Norm.of(f"{name}.norm", unit.norm), _relu(name, unit.act), pad=p[0],
    )  # fmt: skip


def _residual_steps(name: str, block: Stage) -> list[_Step]:
    """A "residual" stage: its conv units, the last one adding the block input."""
    steps = [_unit_step(f"{name}.{u}", unit) for u, unit in block.units()]
    first, last = steps[0], steps[-1]
    if last.relu or any(s.stride != 1 for s in steps):
        raise NotImplementedError(f"{name}: the skip needs stride 1 and no ReLU after the add")
    if last.weight.shape[0] != first.weight.shape[1] * first.groups:
        raise NotImplementedError(f"{name}: the block changes the channel count")
    first.block_start, last.skip = True, True
    return steps


def _subpixel_step(name: str, stage: SubPixelConvLayer) -> _Step:
    """An "upsample" stage (``SubPixelConvLayer``): one 4-phase 2×2 conv, replicate pad 1."""
    return _Step(
        name, _cl(stage.weight), _vec(stage.bias), 1, 1, _Norm.of(f"{name}.layer.norm", stage.norm),
        _relu(name, stage.act), pad=1, replicate=True, sub=True,
    )  # fmt: skip


def build_plan(d: DeployNet) -> tuple[list[_Step], RowSplitConv]:
    """``d``'s named stages as conv steps, in forward order, and the output stage."""
    steps: list[_Step] = []
    output = None
    for name, stage in named_stages(d):
        if output is not None:
            raise NotImplementedError(f"{name}: the fused kernels need the output stage last")
        if stage.kind == "conv" and isinstance(stage, ConvNormAct):
            steps.append(_unit_step(name, stage))
        elif stage.kind == "residual":
            steps += _residual_steps(name, stage)
        elif stage.kind == "upsample" and isinstance(stage, SubPixelConvLayer):
            steps.append(_subpixel_step(name, stage))
        elif stage.kind == "output" and isinstance(stage, RowSplitConv):
            output = stage
        else:
            raise NotImplementedError(f"{name}: no fused form for stage kind {stage.kind!r}")
    if output is None or not steps:
        raise NotImplementedError("the fused kernels need conv stages and an output stage")
    return steps, output


def _conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int = 1, groups: int = 1
) -> torch.Tensor:
    """``F.conv2d`` with a channels_last result (oneDNN's is already; this guards the kernels'
    layout assumption for any torch version or shape)."""
    return F.conv2d(x, weight, bias, stride, groups=groups).contiguous(memory_format=_CL)


@dataclass
class _Call:
    """What the norms of one ``FusedRunner`` call apply, columns in ``norm_names`` order.

    Either ``frozen`` maps (2, ΣC) (scales, shifts: tiles) or the style's γ/β rows (R, ΣC), R = 1
    for the whole batch or B per image. With a painted ``mask`` (B, 1, H, W), padded as the
    input, the ``d*`` fields hold the change from mask 0 to mask 1 of the same quantity."""

    frozen: torch.Tensor | None = None
    dfrozen: torch.Tensor | None = None
    gamma: torch.Tensor | None = None
    beta: torch.Tensor | None = None
    dgamma: torch.Tensor | None = None
    dbeta: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    pooled: dict[int, torch.Tensor] = field(default_factory=dict)
    hook: StatsHook | None = None  # statistics as measured → as applied (not with frozen)

    def mask_at(self, h: int, w: int) -> torch.Tensor:
        """The mask average-pooled to a layer of h × w (full, 1/2 or 1/4 of the padded input,
        as ``style_affine`` pools a map): (B, h, w), contiguous."""
        assert self.mask is not None
        hp, wp = self.mask.shape[-2:]
        f = hp // h
        if f * h != hp or f * w != wp:
            raise RuntimeError(f"a {h}x{w} layer is no integer scale of the {hp}x{wp} mask")
        if f not in self.pooled:
            m = F.avg_pool2d(self.mask, f) if f > 1 else self.mask
            self.pooled[f] = m[:, 0].contiguous()
        return self.pooled[f]


class FusedRunner:
    """``TransformerNet`` on CPU with the fused kernels: ``(B, 3, H, W)`` float in [0, 1], any
    H, W ≥ 1 → the same shape in [0, 1], equal to ``net(x, style)`` to float rounding.

    ``style`` (multi-style networks; a one-style network ignores it): None (the first style),
    (S,) or (1 | B, S) weights, used as given, a ``PaintedStyle`` (two rows and a (1 | B, 1, H, W)
    mask), or a (B, S, H, W) map: in the painted form when it has one
    (``PaintedStyle.from_map``), else run by PyTorch with a ``RuntimeWarning`` (module docstring).

    ``norm_affine`` (2, ΣC), as built by ``fast_style.infer.tiling.pack_norm_affine``, freezes
    every norm to a given affine map with the style folded in (the tiles of tiled inference), as
    ``fast_style.infer.deploy.FrozenNormNet`` does; columns in ``norm_names`` order. For a
    painted tile it is (2, 2, ΣC) (``pack_norm_affine`` of the ``PaintedStyle``) and ``style``
    the ``PaintedStyle`` whose mask is read. The weights are a snapshot of ``net``'s.
    Process-wide allocator tuning is the caller's (``fast_style.infer.allocator.tune_malloc``)."""

    def __init__(self, net: TransformerNet, threads: int | None = None):
        self.lib = load_library()
        self.threads = _check_threads(int(threads or torch.get_num_threads()))
        d = DeployNet(copy.deepcopy(net).float().cpu().eval())  # a snapshot of the weights
        self.steps, out = build_plan(d)
        self.norm_names = [s.norm.name for s in self.steps]
        if self.norm_names != [n for n, _ in named_norms(d)]:
            raise RuntimeError("fused plan and named_norms disagree on the norm layers")
        self.deploy = d.eval()  # PyTorch's path for style maps without a painted form
        self._warned = False
        # The pad each glue pass writes: the next conv's input pad, the output conv's last.
        self._pads = [(s.pad, s.replicate) for s in self.steps[1:]] + [(out.pad, False)]
        # Output layer: RowSplitConv's 1 x k conv with its channels padded to a multiple of 8
        # (oneDNN's AVX2 block; 27 → 32 measured 10% faster); the padding channels are unread.
        w, b = out.weight, out.bias
        k = -(-w.shape[0] // 8) * 8
        self.out_weight = _cl(F.pad(w, (0, 0, 0, 0, 0, 0, 0, k - w.shape[0])))
        self.out_bias = _vec(F.pad(b, (0, k - b.shape[0])))
        self.out_pad, self.cout, self.rows = out.pad, out.cout, out.rows
        # Every norm's γ/β rows side by side (S, ΣC): a style's γ/β is one matmul per call.
        self.gammas = torch.cat([s.norm.gamma for s in self.steps], 1)
        self.betas = torch.cat([s.norm.beta for s in self.steps], 1)
        self.num_styles = self.gammas.shape[0]
        self._offsets = [0]
        for s in self.steps:
            self._offsets.append(self._offsets[-1] + s.norm.channels)
        widest = max(s.norm.channels for s in self.steps)
        self._one, self._zero = torch.ones(widest), torch.zeros(widest)

    @property
    def total_channels(self) -> int:
        """ΣC of the norms: the width of ``norm_affine``."""
        return self._offsets[-1]

    def _frozen(self, norm_affine: torch.Tensor, painted: bool) -> tuple[torch.Tensor, ...]:
        """``norm_affine`` checked: (2, ΣC), or (2, 2, ΣC) for a painted tile → the mask-0
        maps and their change to mask 1."""
        n = self.total_channels
        want = (2, 2, n) if painted else (2, n)
        if not isinstance(norm_affine, torch.Tensor) or norm_affine.dim() != len(want):
            raise ValueError(f"norm_affine must be a {want} tensor")
        a = norm_affine.detach().float().cpu().contiguous()
        if tuple(a.shape) != want:
            raise ValueError(f"norm_affine must be {want}, got {tuple(a.shape)}")
        if not painted:
            return (a,)
        return a[1].contiguous(), (a[0] - a[1]).contiguous()

    def _style_rows(self, style: torch.Tensor | None, counts: tuple[int, ...]) -> torch.Tensor:
        """Style weights as (R, S) rows, R one of ``counts``; the first style for None."""
        if style is None:
            return torch.eye(self.num_styles)[:1]
        rows = style.detach().float().cpu()
        rows = rows[None] if rows.dim() == 1 else rows
        if rows.dim() != 2 or rows.shape[1] != self.num_styles or rows.shape[0] not in counts:
            want = " | ".join(map(str, dict.fromkeys(counts)))
            raise ValueError(
                f"style must be ({self.num_styles},) or ({want}, {self.num_styles}) weights, "
                f"got {tuple(style.shape)}"
            )
        return rows

    def _padded_mask(
        self, style: PaintedStyle, x: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """The painted mask (B, 1, H', W') float32 CPU, padded as the input ``x``."""
        m = style.mask.detach().float().cpu()
        if m.shape[0] not in (1, x.shape[0]) or tuple(m.shape[-2:]) != size:
            raise ValueError(
                f"the style mask must be (1 | {x.shape[0]}, 1, {size[0]}, {size[1]}), "
                f"got {tuple(m.shape)}"
            )
        m = pad_to_multiple(m, SIZE_MULTIPLE, MIN_SIZE)[0]
        return m.expand(x.shape[0], *m.shape[1:]).contiguous()

    def _prepare(
        self,
        x: torch.Tensor,
        size: tuple[int, int],
        norm_affine: torch.Tensor | None,
        style: torch.Tensor | PaintedStyle | None,
    ) -> _Call:
        """The norms' maps of one call: padded input ``x`` of original ``size``."""
        painted = isinstance(style, PaintedStyle) and self.num_styles > 1
        mask = self._padded_mask(style, x, size) if isinstance(style, PaintedStyle) else None
        mask = mask if painted else None  # a one-style network ignores the style
        if norm_affine is not None:
            frozen = self._frozen(norm_affine, mask is not None)
            return _Call(frozen=frozen[0], dfrozen=frozen[-1], mask=mask)
        if self.num_styles == 1 or style is None:  # the first style's γ/β as they are
            return _Call(gamma=self.gammas[:1], beta=self.betas[:1])
        if isinstance(style, PaintedStyle):
            rows = self._style_rows(style.rows, (2,))
        else:
            rows = self._style_rows(style, (1, x.shape[0]))
        gamma, beta = rows @ self.gammas, rows @ self.betas
        if mask is None:
            return _Call(gamma=gamma, beta=beta)
        dg, db = gamma[:1] - gamma[1:], beta[:1] - beta[1:]
        return _Call(gamma=gamma[1:], beta=beta[1:], dgamma=dg, dbeta=db, mask=mask)

    def _maps(self, i: int, src: Source, call: _Call) -> tuple[torch.Tensor | None, ...]:
        """Step ``i``'s (scale, shift, mask, mask_scale, mask_shift), the last three None
        without a painted mask (``norm_apply``'s arguments)."""
        s, cols = self.steps[i], slice(self._offsets[i], self._offsets[i + 1])
        if call.frozen is not None:
            k, t = call.frozen[0, cols], call.frozen[1, cols]
            if call.mask is None or call.dfrozen is None:
                return k, t, None, None, None
            dk, dt = call.dfrozen[0, cols], call.dfrozen[1, cols]
            return k, t, call.mask_at(*src.size[2:]), dk, dt
        assert call.gamma is not None and call.beta is not None
        g, b = call.gamma[:, cols], call.beta[:, cols]
        if g.shape[0] == 1 and call.mask is None and call.hook is None:  # the one-style path
            return *norm_stats(src, g[0], b[0], s.norm.eps, self.threads), None, None, None
        c = s.norm.channels  # normalise, then γ/β per image (or per pixel) in Python
        k0, t0 = norm_stats(src, self._one[:c], self._zero[:c], s.norm.eps, self.threads)
        if call.hook is not None:  # k0 = 1/√(var + eps), t0 = −mean·k0
            mean, var = call.hook(i, -t0 / k0, (1 / k0.square() - s.norm.eps).clamp_min(0))
            k0 = torch.rsqrt(var + s.norm.eps)
            t0 = -mean * k0
        k, t = k0 * g, t0 * g + b
        if call.mask is None or call.dgamma is None or call.dbeta is None:
            return k, t, None, None, None
        dg, db = call.dgamma[:, cols], call.dbeta[:, cols]
        return k, t, call.mask_at(*src.size[2:]), k0 * dg, t0 * dg + db

    def _glue(self, i: int, t: torch.Tensor, call: _Call, skip: Source | None) -> torch.Tensor:
        """Step ``i``'s norm (statistics or frozen) → [+ skip] → [ReLU] → the next pad."""
        s = self.steps[i]
        src = Source(t, sub=s.sub)
        k, sh, mask, dk, dt = self._maps(i, src, call)
        assert k is not None and sh is not None
        pad, replicate = self._pads[i]
        return norm_apply(
            src, k, sh, relu=s.relu, pad=pad, replicate=replicate, skip=skip,
            threads=self.threads, mask=mask, mask_scale=dk, mask_shift=dt,
        )  # fmt: skip

    def _eager(self, x: torch.Tensor, style: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A style map without a painted form, in PyTorch (``DeployNet``): padded ``x``."""
        if not self._warned:
            warnings.warn(
                "fused backend: a style map with more than two styles in use (or uneven "
                "totals) has no one-pass form; running it in PyTorch",
                RuntimeWarning,
                stacklevel=4,  # the caller of __call__ (under inference_mode's wrapper)
            )
            self._warned = True
        m = pad_to_multiple(style.detach().float().cpu(), SIZE_MULTIPLE, MIN_SIZE)[0]
        return crop_to(self.deploy(x, m), size)

    @torch.inference_mode()
    def __call__(
        self,
        x: torch.Tensor,
        norm_affine: torch.Tensor | None = None,
        style: torch.Tensor | PaintedStyle | None = None,
        stats_hook: StatsHook | None = None,
    ) -> torch.Tensor:
        if stats_hook is not None and norm_affine is not None:
            raise ValueError("stats_hook and norm_affine exclude each other")
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or x.numel() == 0:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"input must be a non-empty (B, 3, H, W) tensor, got {shape}")
        device = x.device
        x, (h, w) = pad_to_multiple(x.detach().float().cpu(), SIZE_MULTIPLE, MIN_SIZE)
        if isinstance(style, torch.Tensor) and style.dim() == 4 and self.num_styles > 1:
            if tuple(style.shape[-2:]) != (h, w):
                raise ValueError(f"a style map must be (B, S, {h}, {w}), got {tuple(style.shape)}")
            reduced = PaintedStyle.from_map(style)
            if reduced is None and (norm_affine is not None or stats_hook is not None):
                raise ValueError(
                    "frozen or hooked norms take weights or a painted style, not a map"
                )
            if reduced is None:
                return self._eager(x, style, (h, w)).to(device)
            style = reduced
        call = self._prepare(x, (h, w), norm_affine, style)
        call.hook = stats_hook
        return self._run(x, call, (h, w)).to(device)

    def _run(self, x: torch.Tensor, call: _Call, size: tuple[int, int]) -> torch.Tensor:
        """The plan on the padded input ``x``, cropped to ``size``."""
        first = self.steps[0]
        mode = "replicate" if first.replicate else "reflect"
        y = F.pad(x, (first.pad,) * 4, mode=mode).contiguous(memory_format=_CL)
        block_input: Source | None = None
        for i, s in enumerate(self.steps):
            if s.block_start:
                block_input = Source(y, offset=s.pad)  # the skip reads the unpadded interior
            t = _conv2d(y, s.weight, s.bias, s.stride, s.groups)
            y = self._glue(i, t, call, block_input if s.skip else None)
        t = _conv2d(y, self.out_weight, self.out_bias)
        return rowsplit_tail(t, self.cout, self.rows, size, self.threads)
