"""The fused CPU backend: same outputs as TransformerNet, frozen statistics for tiles, building,
caching and falling back when it cannot be built."""

from __future__ import annotations

import ctypes
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from fast_style.core.network import TransformerNet
from fast_style.infer.backends import fused as fused_cpu
from fast_style.infer.backends.ort import onnxruntime_available
from fast_style.infer.stylizer import Stylizer
from fast_style.infer.tiling import frozen_norm_stats, pack_norm_affine, record_norm_stats
from tests._stylize_helpers import tiny_net
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(
    not fused_cpu.fused_available(),
    reason=f"fused CPU kernels unavailable: {fused_cpu.unavailable_reason()}",
)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Keep built kernels and ONNX exports of these tests out of the user's home."""
    monkeypatch.setenv("FAST_STYLE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def signed_net(channels: tuple[int, int, int], num_residual: int = 2) -> TransformerNet:
    """Random weights with instance-norm scales of both signs (a ReLU after a negative scale
    must not be folded away)."""
    torch.manual_seed(1)
    net = TransformerNet(channels, num_residual=num_residual).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net


@pytest.mark.parametrize("channels", [(8, 16, 16), (16, 32, 64)])
@pytest.mark.parametrize("shape", [(1, 3, 5, 3), (1, 3, 8, 8), (2, 3, 37, 50), (1, 3, 64, 97)])
def test_matches_transformer_net(channels, shape):
    net = signed_net(channels)
    x = torch.rand(shape)
    with torch.no_grad():
        want = net(x)
    got = fused_cpu.FusedRunner(net)(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_flat_image_and_one_pixel_stay_finite():
    """Zero variance everywhere: the statistics must not cancel into NaN or blow up."""
    net = signed_net((8, 16, 16))
    runner = fused_cpu.FusedRunner(net)
    for x in (torch.full((1, 3, 40, 24), 0.7), torch.rand(1, 3, 1, 1)):
        with torch.no_grad():
            want = net(x)
        got = runner(x)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=2e-3, rtol=0)


def test_frozen_statistics_match_pytorch():
    """``norm_affine`` freezes every instance norm, as the tiles of tiled inference need."""
    net = signed_net((8, 16, 16))
    stylizer = Stylizer(net, device="cpu", backend="eager")
    thumb, tile = torch.rand(1, 3, 48, 64), torch.rand(2, 3, 36, 44)
    with torch.no_grad(), record_norm_stats(stylizer.deploy) as stats:
        stylizer.deploy(thumb)
    with torch.no_grad(), frozen_norm_stats(stylizer.deploy, stats):
        want = stylizer.deploy(tile)
    affine = pack_norm_affine(stylizer.deploy, stats)
    got = fused_cpu.FusedRunner(net)(tile, affine)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="norm_affine"):
        fused_cpu.FusedRunner(net)(tile, affine[:, :-1])


def test_stylizer_uses_it_by_default_on_cpu_and_tiles_with_it():
    s = Stylizer(tiny_net(), device="cpu")
    assert s.backend == "fused"
    eager = Stylizer(tiny_net(), device="cpu", backend="eager", stats_pixels=96 * 64)
    fused = Stylizer(tiny_net(), device="cpu", backend="fused", stats_pixels=96 * 64)
    x = torch.rand(1, 3, 101, 150)
    torch.testing.assert_close(fused.stylize_tensor(x), eager.stylize_tensor(x), atol=1e-4, rtol=0)
    a = fused.stylize_tensor(x, tile=64, overlap=16, preserve_color=True)
    b = eager.stylize_tensor(x, tile=64, overlap=16, preserve_color=True)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_switched_off_falls_back(monkeypatch):
    monkeypatch.setenv("FAST_STYLE_NO_FUSED", "1")
    assert not fused_cpu.fused_available()
    assert "FAST_STYLE_NO_FUSED" in fused_cpu.unavailable_reason()
    want = "onnxruntime" if onnxruntime_available() else "eager"
    assert Stylizer(tiny_net(), device="cpu").backend == want
    with pytest.raises(ValueError, match="unavailable"):
        Stylizer(tiny_net(), device="cpu", backend="fused")


def test_no_compiler_is_a_clear_reason(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(fused_cpu.FusedUnavailableError, match="no C compiler"):
        fused_cpu.build_library()


def test_build_is_cached_per_source_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("FAST_STYLE_CACHE", str(tmp_path))
    path = fused_cpu.build_library()
    assert path.parent == tmp_path / "ext" and path.stat().st_size > 1000
    mtime = path.stat().st_mtime_ns
    assert fused_cpu.build_library() == path and path.stat().st_mtime_ns == mtime  # reused
    assert fused_cpu.build_library(force=True) == path
    assert [p.name for p in (tmp_path / "ext").iterdir()] == [path.name]  # no temp files left


@pytest.mark.slow
def test_a_damaged_cached_build_is_rebuilt(tmp_path):
    """A truncated .so in the cache (killed build, full disk) is rebuilt, not fatal. Run in
    fresh processes: this one has the library mapped already."""
    script = textwrap.dedent(
        """
        import torch
        from fast_style.infer.backends.fused import FusedRunner, build_library
        from fast_style.core.network import TransformerNet
        torch.manual_seed(0)
        net = TransformerNet((8, 16, 16), num_residual=1).eval()
        x = torch.rand(1, 3, 20, 28)
        with torch.no_grad():
            err = (FusedRunner(net)(x) - net(x)).abs().max().item()
        print(build_library(), err)
        """
    )
    env = {"FAST_STYLE_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def run() -> list[str]:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    path, err = run()
    assert float(err) < 1e-4
    with open(path, "r+b") as f:
        f.truncate(100)
    again, err = run()
    assert again == path and float(err) < 1e-4


def test_tune_malloc_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("FAST_STYLE_MALLOC_TUNING", "0")
    assert fused_cpu.tune_malloc() is False


# --- hardening: every bad call is a Python error, in this very process ------------------------


def _cl(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(*shape, dtype=dtype).contiguous(memory_format=torch.channels_last)


def _src(*shape: int, **kw) -> fused_cpu.Source:
    return fused_cpu.Source(_cl(*shape), **kw)


_ONES = torch.ones(1, 8)
_BAD_CALLS = {
    "float64 source": (lambda: fused_cpu.Source(_cl(1, 8, 6, 6, dtype=torch.float64)), "float32"),
    "NCHW strides": (lambda: fused_cpu.Source(torch.rand(1, 8, 6, 6)), "channels_last"),
    "not a tensor": (lambda: fused_cpu.Source([1.0]), "torch.Tensor"),
    "empty": (lambda: fused_cpu.Source(_cl(1, 8, 0, 6)), "non-empty"),
    "offset past the interior": (lambda: _src(1, 8, 6, 6, offset=3), "no interior"),
    "sub-pixel channels": (lambda: _src(1, 6, 5, 5, sub=True), "sub-pixel"),
    "gamma length": (
        lambda: fused_cpu.norm_stats(_src(1, 8, 6, 6), torch.ones(7), torch.ones(8), 1e-5, 1),
        "gamma",
    ),
    "NaN eps": (
        lambda: fused_cpu.norm_stats(_src(1, 8, 6, 6), torch.ones(8), torch.ones(8), math.nan, 1),
        "eps",
    ),
    "absurd threads": (
        lambda: fused_cpu.norm_stats(_src(1, 8, 6, 6), torch.ones(8), torch.ones(8), 1e-5, 10**6),
        "threads",
    ),
    "scale shape": (
        lambda: fused_cpu.norm_apply(_src(1, 8, 6, 6), torch.ones(1, 7), _ONES, relu=1, pad=1),
        "scale and shift",
    ),
    "float64 scale": (
        lambda: fused_cpu.norm_apply(_src(1, 8, 6, 6), _ONES.double(), _ONES, relu=1, pad=1),
        "float32",
    ),
    "reflect pad ≥ size": (
        lambda: fused_cpu.norm_apply(_src(1, 8, 6, 6), _ONES, _ONES, relu=True, pad=6),
        "pad 6 out of range",
    ),
    "absurd pad": (
        lambda: fused_cpu.norm_apply(
            _src(1, 8, 6, 6), _ONES, _ONES, relu=True, pad=10**12, replicate=True
        ),
        "out of range",
    ),
    "skip of another size": (
        lambda: fused_cpu.norm_apply(
            _src(1, 8, 6, 6), _ONES, _ONES, relu=False, pad=1, skip=_src(1, 8, 7, 7, offset=1)
        ),
        "skip",
    ),
    "skip with ReLU": (
        lambda: fused_cpu.norm_apply(
            _src(1, 8, 6, 6), _ONES, _ONES, relu=True, pad=1, skip=_src(1, 8, 6, 6)
        ),
        "no ReLU",
    ),
    "tail input too small": (
        lambda: fused_cpu.rowsplit_tail(_cl(1, 27, 10, 10), 3, 9, (5, 10)),
        "too small",
    ),
    "absurd tail size": (
        lambda: fused_cpu.rowsplit_tail(_cl(1, 27, 10, 10), 3, 9, (10**12, 10**12)),
        "too small",
    ),
    "tail not channels_last": (
        lambda: fused_cpu.rowsplit_tail(torch.rand(1, 27, 20, 10), 3, 9, (5, 10)),
        "channels_last",
    ),
}


@pytest.mark.parametrize("case", sorted(_BAD_CALLS))
def test_bad_kernel_calls_raise_clear_python_errors(case):
    call, message = _BAD_CALLS[case]
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_bad_runner_calls_raise_and_the_runner_still_works():
    net = signed_net((8, 16, 16), num_residual=1)
    runner = fused_cpu.FusedRunner(net)
    n = runner.total_channels
    for bad in (torch.zeros(2, n - 1), torch.zeros(3, n), torch.zeros(2 * n)):
        with pytest.raises(ValueError, match=rf"norm_affine must be a?\s?\(2, {n}\)"):
            runner(torch.rand(1, 3, 16, 16), bad)
    for x in (torch.rand(3, 16, 16), torch.rand(1, 4, 16, 16), torch.rand(1, 3, 0, 16)):
        with pytest.raises(ValueError, match="input must be"):
            runner(x)
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), net(x), atol=1e-4, rtol=0)


def test_the_c_side_refuses_bad_arguments_with_an_error_code():
    """The last line behind the Python checks: null pointers, sizes, pads (no crash)."""
    lib = fused_cpu.load_library()
    assert lib.fs_abi_version() == fused_cpu.ABI_VERSION
    t = _cl(1, 8, 6, 6)
    good = fused_cpu.Source(t).struct()
    ones, out = torch.ones(8), torch.empty(1, 8, 8, 8)
    p = ctypes.byref
    assert lib.fs_norm_stats(None, 1, 6, 6, None, None, 1e-5, None, None, 1) == 1
    assert (
        lib.fs_norm_stats(p(good), 1, -6, 6, *[ones.data_ptr()] * 2, 1e-5, *[out.data_ptr()] * 2, 1)
        == 1
    )
    # scale, shift, stride, mask, mask scale, mask shift, relu
    args = (ones.data_ptr(), ones.data_ptr(), 0, None, None, None, 1)
    assert lib.fs_norm_apply(p(good), None, 1, 6, 6, *args, 6, 0, out.data_ptr(), 1) == 1  # pad
    assert lib.fs_norm_apply(p(good), None, 1, 6, 6, *args, 1, 0, out.data_ptr(), 0) == 1  # threads
    assert (
        lib.fs_norm_apply(p(good), p(good), 1, 6, 6, *args, 1, 0, out.data_ptr(), 1) == 1
    )  # relu + skip
    assert lib.fs_rowsplit_tail(None, 1, 10, 10, 27, 3, 9, 5, 10, None, 1) == 1
    assert lib.fs_rowsplit_tail(t.data_ptr(), 1, 6, 6, 8, 3, 9, 1, 1, out.data_ptr(), 1) == 1
    masked = (ones.data_ptr(), ones.data_ptr(), 0, ones.data_ptr(), None, None, 1)
    assert lib.fs_norm_apply(p(good), None, 1, 6, 6, *masked, 1, 0, out.data_ptr(), 1) == 1  # mask
    assert lib.fs_norm_apply(p(good), None, 1, 6, 6, *args, 1, 0, out.data_ptr(), 1) == 0  # fine


def test_an_abi_mismatch_is_reported(monkeypatch):
    """A library reporting another ABI version is rebuilt once, then refused with a reason."""
    path = fused_cpu.build_library()
    builds = []
    monkeypatch.setattr(
        fused_cpu, "build_library", lambda force=False: builds.append(force) or path
    )
    monkeypatch.setattr(fused_cpu, "_LIB", None)
    monkeypatch.setattr(fused_cpu, "_LIB_ERROR", None)
    found = fused_cpu.ABI_VERSION
    monkeypatch.setattr(fused_cpu, "ABI_VERSION", 999)
    with pytest.raises(
        fused_cpu.AbiMismatchError, match=f"ABI version {found}, this fast_style expects 999"
    ):
        fused_cpu.load_library()
    assert builds == [False, True]  # the cached build, then one forced rebuild
    assert not fused_cpu.fused_available()
    assert "ABI version" in fused_cpu.unavailable_reason()


# --- one OpenMP runtime ---------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps (Linux)")
def test_one_openmp_runtime_and_no_extra_threads():
    """The kernels link against PyTorch's OpenMP runtime: one runtime, one thread pool, so
    the fused glue does not add threads that compete with PyTorch's for the cores."""
    import os

    torch.set_num_threads(2)
    with torch.no_grad():  # PyTorch's pool up first
        torch.nn.functional.conv2d(torch.rand(1, 8, 64, 64), torch.rand(8, 8, 3, 3))
    before = len(os.listdir("/proc/self/task"))
    net = signed_net((8, 16, 16), num_residual=1)
    fused_cpu.FusedRunner(net, threads=2)(torch.rand(1, 3, 64, 64))
    runtimes = fused_cpu.mapped_openmp_runtimes()
    assert len(runtimes) <= 1, runtimes
    if runtimes:
        assert str(fused_cpu.openmp_runtime()) == runtimes[0]
    assert len(os.listdir("/proc/self/task")) <= before
