"""The loss network (frozen VGG with named taps) and the perceptual losses built on it."""

from fast_style.loss.perceptual import (
    LossWeights,
    PerceptualLoss,
    content_term,
    gram_matrix,
    style_term,
    total_variation,
)
from fast_style.loss.vgg import LossNetworkWeightsError, VGGFeatures, layer_names

__all__ = [
    "LossNetworkWeightsError",
    "LossWeights",
    "PerceptualLoss",
    "VGGFeatures",
    "content_term",
    "gram_matrix",
    "layer_names",
    "style_term",
    "total_variation",
]
