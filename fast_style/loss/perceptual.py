"""Perceptual losses (content, style, total variation): the one loss stack for training,
Gatys optimisation and evaluation.

Scale invariance. Johnson et al. and Gatys et al. use plain feature MSE and Gram MSE, whose
magnitudes depend on each layer's activation scale: torchvision's VGG16 and the Caffe VGG16
(which effectively sees 0–255 pixels) differ by orders of magnitude per layer, so loss weights
tuned on one do not transfer. fast_style makes every per-layer term relative to its target:

* content:  ``mean((φ(y) − φ(c))²) / mean(φ(c)²)``            per image, then batch mean;
* style:    ``‖G(φ(y)) − G(φ(s))‖²_F / ‖G(φ(s))‖²_F``           per image, then batch mean;

Multiplying a layer's activations by any ``a > 0`` multiplies numerator and denominator by
``a²`` (content) or ``a⁴`` (style), so each term is unchanged. The denominators are constants of
the targets (no gradient), so each term's gradient is the paper's up to a per-layer constant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from fast_style.loss.vgg import VGGFeatures

# Johnson et al. 2016 §3: content at relu2_2 (Fig. 3), style at relu1_2, relu2_2, relu3_3, relu4_3.
DEFAULT_CONTENT_LAYERS = {"relu2_2": 1.0}
DEFAULT_STYLE_LAYERS = {"relu1_2": 1.0, "relu2_2": 1.0, "relu3_3": 1.0, "relu4_3": 1.0}
_EPS = 1e-12


@dataclass
class LossWeights:
    """Per-term and per-layer weights (from a style's config file)."""

    content_weight: float = 1.0
    style_weight: float = 10.0
    tv_weight: float = 10.0
    content_layers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CONTENT_LAYERS))
    style_layers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_STYLE_LAYERS))

    @property
    def taps(self) -> set[str]:
        return set(self.content_layers) | set(self.style_layers)


def gram_matrix(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix (B, C, H, W) → (B, C, C), averaged over positions, computed in float32."""
    b, c, h, w = f.shape
    with torch.autocast(f.device.type, enabled=False):
        f = f.float().reshape(b, c, h * w)
        return torch.bmm(f, f.transpose(1, 2)) / (h * w)


def content_term(feat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Relative feature MSE (scalar): mean over the batch of ‖φ(y) − φ(c)‖² / ‖φ(c)‖²."""
    feat, target = feat.float(), target.float()
    err = (feat - target).pow(2).flatten(1).mean(1)
    scale = target.pow(2).flatten(1).mean(1).clamp_min(_EPS)
    return (err / scale).mean()


def style_term(
    feat: torch.Tensor, target_gram: torch.Tensor, target_norm: torch.Tensor
) -> torch.Tensor:
    """Relative Gram distance (scalar): ‖G(φ(y)) − G_s‖²_F / ‖G_s‖²_F, batch mean."""
    diff = gram_matrix(feat) - target_gram
    return (diff.pow(2).sum((1, 2)) / target_norm).mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Squared total variation of images (B, C, H, W) in [0, 1]: mean of squared neighbour
    differences (Johnson et al. §3.3 "total variation regularizer", β = 2)."""
    x = x.float()
    dh = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() if x.shape[-2] > 1 else x.new_zeros(())
    dw = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean() if x.shape[-1] > 1 else x.new_zeros(())
    return dh + dw


def _weighted_sum(
    terms: dict[str, torch.Tensor], kind: str, layers: dict[str, float]
) -> torch.Tensor:
    """Σ over ``layers`` of weight × ``terms[f"{kind}/{tap}"]`` (a tensor; layers non-empty)."""
    parts = [lw * terms[f"{kind}/{tap}"] for tap, lw in layers.items()]
    return torch.stack(parts).sum()


class PerceptualLoss(nn.Module):
    """Weighted content + style + TV loss over a frozen ``VGGFeatures``.

    Call ``set_style(style_image)`` once, then ``forward(output, content)`` with tensors
    (B, 3, H, W) in [0, 1]. Returns a dict of scalars: ``content``, ``style``, ``tv`` (weighted),
    ``total``, and the unweighted per-layer terms ``content/<tap>``, ``style/<tap>``.
    """

    def __init__(self, network: VGGFeatures, weights: LossWeights):
        super().__init__()
        missing = weights.taps - set(network.taps)
        if missing:
            raise ValueError(f"loss network lacks taps {sorted(missing)}")
        self.network = network
        self.weights = weights
        self._has_style = False

    @classmethod
    def build(cls, weights: LossWeights, arch: str = "vgg16", vgg_weights: str | None = None):
        """Build the VGG with exactly the taps the weights need."""
        return cls(VGGFeatures(weights.taps, arch=arch, weights=vgg_weights), weights)

    @torch.no_grad()
    def set_style(self, style: torch.Tensor) -> None:
        """Compute the Gram targets of a style image (1, 3, H, W) in [0, 1]."""
        feats = self.network(style.to(self._device()))
        for tap in self.weights.style_layers:
            g = gram_matrix(feats[tap])[:1]
            self.register_buffer(f"gram_{tap}", g, persistent=False)
            self.register_buffer(
                f"gram_norm_{tap}", g.pow(2).sum().clamp_min(_EPS), persistent=False
            )
        self._has_style = True

    def _device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.no_grad()
    def content_targets(self, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """Content features φ(c) at the content taps (no gradient)."""
        return self.network(content, taps=tuple(self.weights.content_layers))

    def forward(
        self,
        output: torch.Tensor,
        content: torch.Tensor | None = None,
        content_feats: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        if not self._has_style:
            raise RuntimeError("PerceptualLoss.set_style() must be called before computing losses")
        if content_feats is None:
            if content is None:
                raise ValueError("pass the content images or their precomputed features")
            content_feats = self.content_targets(content)
        return self.terms(self.network(output), content_feats, output)

    def terms(
        self,
        feats: Mapping[str, torch.Tensor],
        content_feats: Mapping[str, torch.Tensor],
        output: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The loss terms from precomputed loss-network features of ``output`` (B, 3, H, W).

        Lets several styles share one loss-network pass (``fast_style.train.system``): their outputs
        go through the network as one batch and each style scores its own slice.
        """
        if not self._has_style:
            raise RuntimeError("PerceptualLoss.set_style() must be called before computing losses")
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        for tap in w.content_layers:
            terms[f"content/{tap}"] = content_term(feats[tap], content_feats[tap])
        for tap in w.style_layers:
            terms[f"style/{tap}"] = style_term(
                feats[tap], getattr(self, f"gram_{tap}"), getattr(self, f"gram_norm_{tap}")
            )
        content = w.content_weight * _weighted_sum(terms, "content", w.content_layers)
        style = w.style_weight * _weighted_sum(terms, "style", w.style_layers)
        tv = w.tv_weight * total_variation(output)
        terms.update(content=content, style=style, tv=tv, total=content + style + tv)
        return terms
