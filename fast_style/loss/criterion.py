"""The one construction of a style's criterion, used by training, Gatys and evaluation."""

from __future__ import annotations

import torch

from fast_style.core.imaging import load_tensor
from fast_style.core.resources import resolve_data_path
from fast_style.loss.config import LossConfig, StyleConfig
from fast_style.loss.perceptual import LossWeights, PerceptualLoss
from fast_style.loss.vgg import VGGFeatures


def style_loss_weights(s: StyleConfig) -> LossWeights:
    """The loss weights and layers of a style config."""
    return LossWeights(
        content_weight=s.content_weight,
        style_weight=s.style_weight,
        tv_weight=s.tv_weight,
        content_layers=dict(s.content_layers),
        style_layers=dict(s.style_layers),
    )


def style_criterion(
    style: StyleConfig, loss: LossConfig, network: VGGFeatures | None = None
) -> tuple[PerceptualLoss, torch.Tensor]:
    """The loss network with the style's Gram targets set; returns it and the style image
    (1, 3, H, W) in [0, 1]. The one construction used by training, Gatys and evaluation.
    ``network``: an existing loss network to share (it must have the style's taps)."""
    weights = style_loss_weights(style)
    if network is None:
        crit = PerceptualLoss.build(weights, loss.network, loss.weights)
    else:
        crit = PerceptualLoss(network, weights)
    image = load_tensor(resolve_data_path(style.image), long_side=style.size)
    crit.set_style(image)
    return crit, image
