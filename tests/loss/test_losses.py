import copy

import pytest
import torch

from fast_style.loss import (
    LossWeights,
    PerceptualLoss,
    VGGFeatures,
    content_term,
    gram_matrix,
    style_term,
    total_variation,
)

TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


def test_gram_matrix_matches_definition():
    f = torch.randn(2, 4, 3, 5)
    g = gram_matrix(f)
    flat = f.reshape(2, 4, 15)
    expected = torch.einsum("bik,bjk->bij", flat, flat) / 15
    torch.testing.assert_close(g, expected)
    torch.testing.assert_close(g, g.transpose(1, 2))


def test_content_and_style_terms():
    t = torch.rand(2, 8, 4, 4) + 0.1
    assert content_term(t, t) == 0
    assert content_term(torch.zeros_like(t), t).item() == pytest.approx(1.0)  # relative error of 0
    g = gram_matrix(t[:1])
    assert style_term(t[:1], g, g.pow(2).sum()).item() == pytest.approx(0.0, abs=1e-6)
    assert style_term(torch.zeros_like(t), g, g.pow(2).sum()).item() == pytest.approx(1.0)


def test_total_variation():
    flat = torch.full((1, 3, 6, 6), 0.3)
    assert total_variation(flat) == 0
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1.0  # every horizontal neighbour differs by 1, vertical ones by 0
    assert total_variation(stripes).item() == pytest.approx(1.0)


def _loss(net: VGGFeatures, weights: LossWeights | None = None) -> PerceptualLoss:
    crit = PerceptualLoss(
        net, weights or LossWeights(content_weight=2.0, style_weight=3.0, tv_weight=4.0)
    )
    torch.manual_seed(1)
    crit.set_style(torch.rand(1, 3, 48, 40))
    return crit


def test_terms_are_weighted_and_summed():
    crit = _loss(VGGFeatures(TAPS, weights="random"))
    out, content = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    t = crit(out, content)
    assert t["content"].item() == pytest.approx(2.0 * t["content/relu2_2"].item())
    assert t["style"].item() == pytest.approx(
        3.0 * sum(t[f"style/{k}"].item() for k in TAPS), rel=1e-5
    )
    assert t["tv"].item() == pytest.approx(4.0 * total_variation(out).item())
    assert t["total"].item() == pytest.approx((t["content"] + t["style"] + t["tv"]).item())
    same = crit(content, content)
    assert same["content"].item() == pytest.approx(0.0, abs=1e-6)


def test_style_must_be_set_first():
    crit = PerceptualLoss(VGGFeatures(TAPS, weights="random"), LossWeights())
    with pytest.raises(RuntimeError, match="set_style"):
        crit(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))


def _rescale_tap(net: VGGFeatures, tap: str, a: float) -> None:
    """Multiply the activations at ``tap`` by ``a`` and leave every other layer unchanged:
    the conv feeding it is scaled by ``a`` (ReLU and max-pool are positively homogeneous) and
    the next conv's weight by ``1/a``."""
    i = net.names.index(tap)
    conv = net.layers[i - 1]
    with torch.no_grad():
        conv.weight.mul_(a)
        conv.bias.mul_(a)
        nxt = next((m for m in net.layers[i + 1 :] if isinstance(m, torch.nn.Conv2d)), None)
        if nxt is not None:
            nxt.weight.div_(a)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.rand(2, 3, 40, 40), torch.rand(2, 3, 40, 40)


@pytest.fixture(scope="module")
def random_vgg() -> VGGFeatures:
    torch.manual_seed(123)
    return VGGFeatures(TAPS, weights="random")


def _terms(base_net: VGGFeatures, tap=None, a=1.0, images=None):
    net = copy.deepcopy(base_net)
    if tap is not None:
        _rescale_tap(net, tap, a)
    crit = _loss(net, LossWeights(content_layers=dict.fromkeys(TAPS, 1.0)))
    out, content = images
    with torch.no_grad():
        return crit(out, content), net(out)


@pytest.mark.parametrize("tap", TAPS)
@pytest.mark.parametrize("a", [0.01, 37.0])
def test_every_term_is_invariant_to_a_layers_activation_scale(tap, a, images, random_vgg):
    """Rescaling one VGG layer's activations (as torchvision vs Caffe weights do) leaves every
    loss term unchanged, so one style config gives the same balance with either weight set."""
    base, base_feats = _terms(random_vgg, images=images)
    scaled, scaled_feats = _terms(random_vgg, tap, a, images=images)
    # the rescaling really happened, and only at that tap
    torch.testing.assert_close(
        scaled_feats[tap], base_feats[tap] * a, rtol=1e-4, atol=1e-5 * max(a, 1.0)
    )
    for other in set(TAPS) - {tap}:
        torch.testing.assert_close(scaled_feats[other], base_feats[other], rtol=1e-4, atol=1e-5)
    for key in base:
        torch.testing.assert_close(scaled[key], base[key], rtol=1e-4, atol=1e-7, msg=key)
    # a raw (un-normalised) Gram distance would have moved by a⁴: the test can see scale
    g0, g1 = gram_matrix(base_feats[tap]), gram_matrix(scaled_feats[tap])
    assert g1.pow(2).sum() / g0.pow(2).sum() == pytest.approx(a**4, rel=1e-3)


@pytest.mark.shared  # the random-weight case is the test above
def test_invariance_with_the_real_caffe_scale_weights(vgg_weights, images):
    real = VGGFeatures(TAPS, weights=vgg_weights)
    base, _ = _terms(real, images=images)
    for tap, a in zip(
        TAPS, (1 / 86, 1 / 149, 1 / 136, 1 / 19), strict=True
    ):  # → torchvision-like scale
        scaled, _ = _terms(real, tap, a, images=images)
        for key in base:
            torch.testing.assert_close(
                scaled[key], base[key], rtol=1e-4, atol=1e-7, msg=f"{tap}: {key}"
            )


def test_losses_backpropagate_to_the_image():
    crit = _loss(VGGFeatures(TAPS, weights="random"))
    x = torch.rand(1, 3, 24, 24, requires_grad=True)
    crit(x, torch.rand(1, 3, 24, 24))["total"].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
