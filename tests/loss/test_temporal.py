"""The flow-free temporal regulariser (Wang et al. 2020): warps, masks, the loss, its gradient."""

from __future__ import annotations

import torch

from fast_style.core.imaging import pil_to_tensor
from fast_style.core.network import TransformerNet
from fast_style.loss.temporal import TemporalConfig, random_warp_grid, temporal_loss, warp
from tests._stylize_helpers import photo


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_pure_shift_moves_the_picture_and_masks_the_entering_strip():
    cfg = TemporalConfig(max_shift=0, max_rotation=0, max_zoom=0, flow_std=0)
    grid = random_warp_grid(1, 16, 16, cfg, _gen())
    grid[..., 0] += 2 * 3 / 16  # read 3 px to the right: the picture moves 3 px left
    x = torch.rand(1, 3, 16, 16)
    moved, inside = warp(x, grid)
    torch.testing.assert_close(moved[..., :13], x[..., 3:], atol=1e-5, rtol=0)
    assert inside[0, 0, :, :13].all() and not inside[0, 0, :, 14:].any()


def _smooth(b: int = 2) -> torch.Tensor:
    return torch.stack([pil_to_tensor(photo(40, 48, seed=i)) for i in range(b)])


def test_networks_that_commute_with_warps_cost_next_to_nothing():
    x, cfg = _smooth(), TemporalConfig(noise_std=0.0)
    assert float(temporal_loss(lambda t: t, x, cfg, generator=_gen())) == 0.0
    # a pointwise map commutes with resampling up to interpolation error on a smooth image;
    # a mirror does not commute at all
    gamma = temporal_loss(lambda t: t.clamp(0, 1) ** 2.2, x, cfg, generator=_gen())
    mirror = temporal_loss(lambda t: t.flip(-1), x, cfg, generator=_gen())
    assert float(gamma) < 5e-4 and float(mirror) > 50 * float(gamma)


def test_flicker_and_image_dependent_networks_are_penalised():
    x = torch.rand(2, 3, 48, 40)
    cfg = TemporalConfig()
    gains = iter([0.8, 1.2])  # the two "frames" get different exposure: flicker
    flicker = temporal_loss(lambda t: t * next(gains), x, cfg, generator=_gen())
    steady = temporal_loss(lambda t: t * 1.0, x, cfg, generator=_gen())
    assert float(flicker) > 10 * float(steady) + 1e-4


def test_the_gradient_reaches_every_layer_of_the_network():
    torch.manual_seed(0)
    net = TransformerNet((8, 16, 16), 1)
    loss = temporal_loss(net, torch.rand(2, 3, 32, 32), TemporalConfig(), generator=_gen())
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert float(loss) > 0 and all(g is not None and g.abs().sum() > 0 for g in grads)
