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
