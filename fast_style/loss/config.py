"""What a loss needs to know about a style and the loss network: plain dataclasses (no Hydra).

The Hydra config groups ``conf/style`` and ``conf/loss`` are validated against these
(``fast_style.train.config``); Gatys and evaluation build the same criterion from them
(``fast_style.loss.criterion``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fast_style.loss.perceptual import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from fast_style.loss.temporal import TemporalConfig


@dataclass
class StyleConfig:
    """A painting and the loss weights tuned for it."""

    name: str = "starry_night"
    image: str = "starry_night.jpg"  # a file, or a shipped painting's name
    size: int = 512  # long side (px) of the style image when its Gram targets are computed
    content_weight: float = 1.0
    style_weight: float = 10.0
    tv_weight: float = 10.0
    content_layers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CONTENT_LAYERS))
    style_layers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_STYLE_LAYERS))
    # The painting, for model metadata and listings (optional; the shipped styles have them).
    # ``year`` is text: dates of paintings are often approximate ("c. 1831").
    title: str | None = None
    artist: str | None = None
    year: str | None = None


@dataclass
class LossConfig:
    network: str = "vgg16"
    weights: str | None = None  # state_dict file; None: $FAST_STYLE_VGG_WEIGHTS or torchvision
    # Training only: the flow-free temporal regulariser (Wang et al. 2020, loss.temporal), off
    # at weight 0. It needs the transform network, not the loss network: Gatys ignores it.
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
