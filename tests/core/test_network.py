import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fast_style.core.network import TransformerConfig, TransformerNet, Upsample2x


@pytest.fixture(scope="module")
def slim() -> TransformerNet:
    torch.manual_seed(0)
    return TransformerNet((16, 32, 64)).eval()


@pytest.mark.parametrize(("h", "w"), [(64, 64), (301, 203), (203, 301), (1, 1), (5, 7), (33, 9)])
def test_output_size_equals_input_size(slim, h, w):
    x = torch.rand(2, 3, h, w)
    with torch.no_grad():
        y = slim(x)
    assert y.shape == x.shape


def test_output_range_is_image_range(slim):
    x = torch.rand(1, 3, 40, 52) * 50 - 25  # far outside [0, 1]: the scaled tanh still bounds it
    with torch.no_grad():
        y = slim(x)
    assert y.min() >= 0 and y.max() <= 1
    assert y.std() > 0


def test_johnson_architecture_layers():
    net = TransformerNet()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs[:3]] == [32, 64, 128]
    assert [c.kernel_size for c in (convs[0], convs[-1])] == [(9, 9), (9, 9)]
    assert [c.stride for c in convs[1:3]] == [(2, 2), (2, 2)]
    assert convs[-1].out_channels == 3
    assert len(net.residuals) == 5
    assert all(
        m.num_features == 128
        for r in net.residuals
        for m in r.modules()
        if isinstance(m, nn.InstanceNorm2d)
    )
    assert not any(
        isinstance(m, nn.ConvTranspose2d | nn.BatchNorm2d | nn.Upsample) for m in net.modules()
    )
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in net.modules()) == len(convs)
    # the decoder ends at 32 channels before the final 9×9 conv
    assert convs[-2].out_channels == 32 and convs[-3].out_channels == 64


def test_slim_is_narrower_and_roundtrips_config():
    net = TransformerNet((16, 32, 64))
    rebuilt = TransformerNet.from_config(net.config.to_dict())
    assert rebuilt.config == TransformerConfig((16, 32, 64), 5)
    full = sum(p.numel() for p in TransformerNet().parameters())
    slim = sum(p.numel() for p in net.parameters())
    assert slim < full / 3


def test_from_config_rejects_other_architectures():
    with pytest.raises(ValueError, match="unknown transform architecture"):
        TransformerConfig.from_dict(
            {"architecture": "pix2pix", "channels": [1, 2, 3], "num_residual": 1}
        )


def test_upsample_matches_nearest_interpolation():
    x = torch.rand(2, 3, 5, 7)
    assert torch.equal(Upsample2x()(x), F.interpolate(x, scale_factor=2, mode="nearest"))


def test_gradients_reach_every_parameter(slim):
    net = TransformerNet((8, 8, 8), num_residual=1)
    net(torch.rand(1, 3, 17, 23)).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_layers_are_named_by_stage():
    """One description, walked by name: stage names and kinds, norms, parameter names."""
    from fast_style.core.network import named_norms, named_stages

    net = TransformerNet((8, 16, 24), num_residual=3)
    stages = [(name, s.kind) for name, s in named_stages(net)]
    assert stages == [
        ("encoder.conv1", "conv"),
        ("encoder.conv2", "conv"),
        ("encoder.conv3", "conv"),
        ("residuals.res1", "residual"),
        ("residuals.res2", "residual"),
        ("residuals.res3", "residual"),
        ("decoder.up1", "upsample"),
        ("decoder.up2", "upsample"),
        ("output", "output"),
    ]
    norms = named_norms(net)
    assert [n for n, _ in norms][:4] == [
        "encoder.conv1.norm",
        "encoder.conv2.norm",
        "encoder.conv3.norm",
        "residuals.res1.conv1.norm",
    ]
    assert [n for n, _ in norms][-1] == "decoder.up2.layer.norm"
    assert all(net.get_submodule(n) is m for n, m in norms)  # the names are module paths
    assert [m for _, m in norms] == [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert net.encoder.conv2.conv.stride == (2, 2) and net.output.conv.out_channels == 3
    assert isinstance(net.residuals.res3.conv2.act, nn.Identity)  # no ReLU after the skip add
    assert "decoder.up1.layer.conv.weight" in net.state_dict()


def test_walking_something_else_is_a_clear_error():
    from fast_style.core.network import named_stages

    with pytest.raises(TypeError, match="not a transform network"):
        named_stages(nn.Conv2d(3, 3, 1))


# ---------------------------------------------------------------------------------------------
# The lightweight variants (model=nano): depthwise-separable blocks and smaller end kernels.


def nano(**kw) -> TransformerNet:
    args = {"channels": (8, 16, 32), "num_residual": 3, "block": "dwsep", "kernels": (5, 5)}
    return TransformerNet(**{**args, **kw})


def test_nano_layers_and_weight_count():
    net = nano()
    res = net.residuals.res1
    assert [n for n, _ in res.units()] == ["dw1", "pw1", "dw2", "pw2"]
    assert res.dw1.conv.groups == 32 and res.dw1.conv.kernel_size == (3, 3)
    assert res.pw1.conv.kernel_size == (1, 1) and res.pw1.conv.groups == 1
    assert net.encoder.conv1.conv.kernel_size == (5, 5)
    assert net.output.conv.kernel_size == (5, 5)
    # a block: 2 · (9C + C²) conv weights, 4 · C biases, 4 norms of 2 · C; C = 32
    block = sum(p.numel() for p in res.parameters())
    assert block == 2 * (9 * 32 + 32 * 32) + 4 * 32 + 4 * 2 * 32
    assert sum(p.numel() for p in net.parameters()) < 25_000  # ≤ 50 KB in float16


@pytest.mark.parametrize(("h", "w"), [(8, 8), (33, 17), (64, 48)])
def test_nano_output_size_and_range(h, w):
    with torch.no_grad():
        y = nano().eval()(torch.rand(2, 3, h, w))
    assert y.shape == (2, 3, h, w) and y.min() >= 0 and y.max() <= 1


def test_block_and_kernels_roundtrip_and_default_for_old_files():
    cfg = nano(kernels=(3, 7)).config
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["kernels"] == [3, 7] and cfg.to_dict()["block"] == "dwsep"
    old = {"architecture": "johnson2016", "channels": [16, 32, 64], "num_residual": 5}
    assert TransformerConfig.from_dict(old) == TransformerConfig((16, 32, 64), 5)
    rebuilt = TransformerNet.from_config(cfg)
    assert rebuilt.output.conv.kernel_size == (7, 7)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("block", "mobile", "block must be one of"), ("kernels", [4, 5], "odd sizes"),
     ("kernels", [5], "odd sizes"), ("kernels", [17, 9], "odd sizes"),
     ("block", 3, "block must be a name")],
)  # fmt: skip
def test_bad_block_or_kernels_are_refused(field, value, message):
    d = {**nano().config.to_dict(), field: value}
    with pytest.raises(ValueError, match=message):
        TransformerConfig.from_dict(d)
