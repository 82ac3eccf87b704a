"""The fused CPU backend: same outputs as TransformerNet, frozen statistics for tiles, building,
caching and falling back when it cannot be built."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from fast_style.core.network import TransformerNet
from fast_style.infer.backends import fused as fused_cpu
from fast_style.infer.stylizer import (
    Stylizer,
    frozen_norm_stats,
    onnxruntime_available,
    pack_norm_affine,
    record_norm_stats,
)
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
