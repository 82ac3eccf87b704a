"""The frozen VGG loss network: torchvision's VGG16/VGG19 layers, named taps, weight sources.

Weights come from, in order:

1. an explicit file (``loss.weights=PATH``), else
2. the ``FAST_STYLE_VGG_WEIGHTS`` environment variable, else
3. torchvision's official ImageNet weights, fetched into torch's hub cache on first use.

Nothing is loaded or downloaded at import time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import vgg as tv_vgg

from fast_style.core.imaging import normalize_imagenet

WEIGHTS_ENV = "FAST_STYLE_VGG_WEIGHTS"
# torchvision's layer recipes: "D" is VGG16, "E" is VGG19 (Simonyan & Zisserman 2015, Table 1).
_RECIPES = {"vgg16": "D", "vgg19": "E"}
_TORCHVISION_WEIGHTS = {
    "vgg16": lambda: tv_vgg.VGG16_Weights.IMAGENET1K_V1,
    "vgg19": lambda: tv_vgg.VGG19_Weights.IMAGENET1K_V1,
}


class LossNetworkWeightsError(RuntimeError):
    """The loss network's weights could not be found, fetched or loaded."""


def layer_names(arch: str = "vgg16") -> list[str]:
    """Names of ``features[i]`` for the architecture: conv1_1, relu1_1, …, pool1, conv2_1, …"""
    if arch not in _RECIPES:
        raise ValueError(f"unknown loss network {arch!r}; choose one of {sorted(_RECIPES)}")
    names, block, idx = [], 1, 0
    for v in tv_vgg.cfgs[_RECIPES[arch]]:
        if v == "M":
            names.append(f"pool{block}")
            block, idx = block + 1, 0
        else:
            idx += 1
            names += [f"conv{block}_{idx}", f"relu{block}_{idx}"]
    return names


def _offline_message(arch: str, err: Exception) -> str:
    return (
        f"could not fetch torchvision's ImageNet {arch.upper()} weights ({type(err).__name__}: "
        f"{err}). Offline? Point fast_style at a local state_dict file with loss.weights=PATH or "
        f"the {WEIGHTS_ENV} environment variable (for example "
        f"../shared/weights/vgg16-imagenet-features-fp16.pth)."
    )


def fetch_torchvision_weights(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's official ImageNet weights, via torch's hub cache (downloads on first use)."""
    weights = _TORCHVISION_WEIGHTS[arch]()
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # URLError, socket errors, SSL, HTTP 4xx/5xx, hash mismatch, …
        raise LossNetworkWeightsError(_offline_message(arch, e)) from e


def _reason(err: Exception) -> str:
    """One line saying why a file did not load: torch's ``weights_only`` errors span a dozen
    lines of advice around the one that names the cause (an unsupported global or opcode)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("Trying to load unsupported", "Unsupported")):
            return line.rstrip(".")
    return lines[0] if lines else type(err).__name__


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a VGG state_dict file safely (``weights_only=True``; safetensors also accepted)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LossNetworkWeightsError(f"VGG weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LossNetworkWeightsError(f"{path}: not a loadable state_dict ({_reason(e)})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LossNetworkWeightsError(f"{path}: expected a dict of tensors (a VGG state_dict)")
    return sd


def resolve_weights(arch: str, weights: str | os.PathLike | None) -> tuple[dict, str]:
    """Return ``(state_dict or {} for random, description of the source)``."""
    if weights == "random":  # for tests and debugging only: an untrained loss network
        return {}, "random"
    path = weights or os.environ.get(WEIGHTS_ENV)
    if path:
        return load_weights_file(path), str(path)
    return fetch_torchvision_weights(arch), f"torchvision:{arch}:IMAGENET1K_V1"


def _features_state(sd: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Pick ``features.<i>.*`` (or bare ``<i>.*``) keys for i < n_layers, as float32."""
    out = {}
    for k, v in sd.items():
        key = k.removeprefix("module.").removeprefix("features.")
        head = key.split(".", 1)[0]
        if head.isdigit() and int(head) < n_layers:
            out[key] = v.float()
    return out


class VGGFeatures(nn.Module):
    """Frozen VGG feature extractor with named taps.

    ``forward(x)`` takes RGB (B, 3, H, W) in [0, 1] (normalised internally) and returns
    ``{tap name: activation}``. Only the layers up to the deepest tap are built.
    """

    def __init__(
        self,
        taps: Iterable[str],
        arch: str = "vgg16",
        weights: str | os.PathLike | None = None,
    ):
        super().__init__()
        names = layer_names(arch)
        taps = set(taps)
        unknown = sorted(taps - set(names))
        if unknown or not taps:
            raise ValueError(f"unknown or no VGG tap(s) {unknown}; {arch} has {names}")
        self.taps = sorted(taps, key=names.index)
        self.arch = arch
        n = names.index(self.taps[-1]) + 1
        self.names = names[:n]
        self.layers = tv_vgg.make_layers(tv_vgg.cfgs[_RECIPES[arch]])[:n]
        for i, name in enumerate(self.names):  # a tapped conv output must survive its ReLU
            if name.startswith("conv") and name in self.taps and i + 1 < n:
                self.layers[i + 1].inplace = False
        sd, self.weights_source = resolve_weights(arch, weights)
        if sd:
            self._load(_features_state(sd, n), str(self.weights_source))
        self.requires_grad_(False)
        self.eval()

    def _load(self, sd: dict[str, torch.Tensor], source: str) -> None:
        expected = self.layers.state_dict()
        missing = [k for k in expected if k not in sd]
        if missing:
            raise LossNetworkWeightsError(
                f"{source}: not {self.arch} features weights; missing {missing[:4]}"
                f"{' …' if len(missing) > 4 else ''} (found {len(sd)} matching keys)"
            )
        for k, v in expected.items():
            if sd[k].shape != v.shape:
                raise LossNetworkWeightsError(
                    f"{source}: {k} has shape {tuple(sd[k].shape)}, "
                    f"{self.arch} needs {tuple(v.shape)}"
                )
        self.layers.load_state_dict({k: sd[k] for k in expected})

    def train(self, mode: bool = True) -> VGGFeatures:
        """The loss network always stays in eval mode."""
        return super().train(False)

    def forward(
        self, x: torch.Tensor, taps: tuple[str, ...] | None = None
    ) -> dict[str, torch.Tensor]:
        """Activations at ``taps`` (default: all of this network's), stopping after the
        deepest one asked for: content targets at relu2_2 need a third of the FLOPs."""
        # A plain tuple, no set(): torch.compile (torch 2.11) fails on building sets here.
        want = self.taps if taps is None else taps
        h = normalize_imagenet(x)
        out = {}
        for name, layer in zip(self.names, self.layers, strict=True):
            h = layer(h)
            if name in want:
                out[name] = h
                if len(out) == len(want):
                    break
        return out
