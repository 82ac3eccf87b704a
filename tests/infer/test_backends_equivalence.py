"""Every derived form of the network, for several architectures, equals the eager network.

The derived forms walk the one named description (``fast_style.core.network``): DeployNet,
its TorchScript and ONNX exports, the frozen-statistics forms of tiled inference (PyTorch,
``FrozenNormNet``, its ONNX export) and the fused CPU runner. Tolerances are those of the
per-backend tests (1e-5 PyTorch, 1e-4 ONNX Runtime and fused kernels). Small images keep the
file fast.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fast_style.core.network import TransformerNet, named_norms
from fast_style.infer.backends import fused as fused_cpu
from fast_style.infer.backends.ort import onnxruntime_available
from fast_style.infer.deploy import DeployNet, FrozenNormNet
from fast_style.infer.export import to_onnx_bytes, to_torchscript
from fast_style.infer.tiling import frozen_norm_stats, pack_norm_affine, record_norm_stats

# (channels, residual blocks, input shape, block kind, first/last kernels)
ARCHS = {
    "8-16-24x3": ((8, 16, 24), 3, (2, 3, 37, 45), "basic", (9, 9)),
    "slim": ((16, 32, 64), 5, (1, 3, 36, 29), "basic", (9, 9)),
    "full": ((32, 64, 128), 5, (1, 3, 24, 20), "basic", (9, 9)),
    "8-16-16x1": ((8, 16, 16), 1, (2, 3, 21, 30), "basic", (9, 9)),
    "no-residual": ((8, 16, 16), 0, (1, 3, 17, 23), "basic", (9, 9)),
    "separable": ((8, 16, 24), 2, (1, 3, 33, 27), "dwsep", (9, 9)),
    "nano": ((8, 16, 32), 3, (2, 3, 30, 41), "dwsep", (5, 5)),
    "nano-k3-k1": ((8, 16, 32), 2, (1, 3, 26, 19), "dwsep", (3, 1)),
}


def make_net(name: str) -> tuple[TransformerNet, tuple[int, ...]]:
    """Random weights, norm scales of both signs (a ReLU after a negative scale matters)."""
    channels, blocks, shape, block, kernels = ARCHS[name]
    torch.manual_seed(3)
    net = TransformerNet(channels, blocks, block=block, kernels=kernels)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval(), shape


@pytest.fixture(scope="module", params=sorted(ARCHS))
def case(request):
    """(net, input, eager output, thumbnail, tile, frozen-stats reference, its norm_affine)."""
    net, shape = make_net(request.param)
    torch.manual_seed(4)
    x = torch.rand(shape)
    thumb, tile = torch.rand(1, 3, 40, 36), torch.rand(2, 3, 28, 32)
    deploy = DeployNet(net).eval()
    with torch.no_grad():
        y = net(x)
        with record_norm_stats(deploy) as stats:
            deploy(thumb)
        with frozen_norm_stats(deploy, stats):
            frozen = deploy(tile)
    return net, x, y, thumb, tile, frozen, pack_norm_affine(deploy, stats)


def test_deploy_and_torchscript(case):
    net, x, y, *_ = case
    with torch.no_grad():
        torch.testing.assert_close(DeployNet(net)(x), y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.testing.assert_close(to_torchscript(net)(x), y, atol=1e-5, rtol=0)


def test_fused_runner(case):
    if not fused_cpu.fused_available():
        pytest.skip(f"fused kernels unavailable: {fused_cpu.unavailable_reason()}")
    net, x, y, _, tile, frozen, affine = case
    runner = fused_cpu.FusedRunner(net)
    assert runner.norm_names == [n for n, _ in named_norms(net)]
    torch.testing.assert_close(runner(x), y, atol=1e-4, rtol=0)
    torch.testing.assert_close(runner(tile, affine), frozen, atol=1e-4, rtol=0)


def test_frozen_statistics_forms(case):
    """The plain network's frozen path (GPUs) and FrozenNormNet give DeployNet's frozen one."""
    net, _, _, thumb, tile, frozen, affine = case
    with torch.no_grad():
        with record_norm_stats(net) as stats:
            net(thumb)
        torch.testing.assert_close(pack_norm_affine(net, stats), affine, atol=1e-5, rtol=1e-5)
        with frozen_norm_stats(net, stats):
            torch.testing.assert_close(net(tile), frozen, atol=1e-5, rtol=0)
        frozen_net = FrozenNormNet(net)
        assert frozen_net.norm_names == stats.names and frozen_net.total_channels == affine.shape[1]
        torch.testing.assert_close(frozen_net(tile, affine), frozen, atol=1e-5, rtol=0)


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")
def test_onnx_runtime(case):
    import onnxruntime as ort

    net, x, y, _, tile, frozen, affine = case
    providers = ["CPUExecutionProvider"]
    plain = ort.InferenceSession(to_onnx_bytes(net), providers=providers)
    got = plain.run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, y.numpy(), atol=1e-4, rtol=0)
    tiles = ort.InferenceSession(to_onnx_bytes(net, frozen_norms=True), providers=providers)
    got = tiles.run(None, {"image": tile.numpy(), "norm_affine": affine.numpy()})[0]
    np.testing.assert_allclose(got, frozen.numpy(), atol=1e-4, rtol=0)


def test_statistics_of_another_network_are_refused():
    a, _ = make_net("8-16-16x1")
    b, _ = make_net("8-16-24x3")
    with torch.no_grad(), record_norm_stats(a) as stats:
        a(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="do not fit"), frozen_norm_stats(b, stats):
        pass
    with pytest.raises(ValueError, match="do not fit"):
        pack_norm_affine(b, stats)
