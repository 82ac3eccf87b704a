"""One network for many styles: conditional instance norm (Dumoulin, Shlens & Kudlur 2017, "A
Learned Representation for Artistic Style"), every convolution shared, each style owning the
γ/β rows of every instance norm.

* ``build_conditional``: the run's network: fresh (``model=multi 'styles=[…]'``), fine-tuned
  from a model file of the same styles, or grown by ``train.add_styles`` from a model file of
  S styles to S + k (``grow``) with everything but the new γ/β rows frozen (``freeze_shared``).
* ``style_rows``: the (B·K, S) one-hot style input that runs a content batch once per style.
* ``style_entry_of``: a style's entry in a multi-style file's metadata (``core.model_io``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fast_style.core.model_io import (
    MODEL_SUFFIXES,
    ModelFileError,
    find_models,
    load_model,
    read_metadata,
    resolve_model,
    style_entry,
    style_names,
)
from fast_style.core.network import TransformerNet, named_norms
from fast_style.core.resources import model_dirs, resolve_data_path
from fast_style.loss.config import StyleConfig
from fast_style.train.config import ConfigError, ModelConfig, TrainSettings

# The conditional counterpart of a single-style width, when a single-style model grows.
_MULTI_WIDTH = {"johnson": "multi", "slim": "multi_slim"}


@dataclass
class Base:
    """The model file a conditional run starts from: its path, metadata and style names."""

    path: Path
    meta: dict[str, Any]

    @property
    def names(self) -> list[str]:
        return style_names(self.meta)


def resolve_init_file(spec: str) -> Path:
    """``train.init_dir`` for a conditional run: a model file, a path without its suffix, a
    folder holding exactly one model file, or a model name (``./checkpoints``, shipped)."""
    p = resolve_data_path(spec)
    if p.is_file():
        return p
    for suffix in MODEL_SUFFIXES:
        if (cand := p.with_name(p.name + suffix)).is_file():
            return cand
    if p.is_dir():
        models = find_models([p])
        if len(models) == 1:
            return models[0]
        raise ConfigError(
            f"train.init_dir: {p} holds {len(models)} model files; name the one to start from"
        )
    if len(Path(spec).parts) == 1:
        try:
            return resolve_model(spec, model_dirs())
        except ModelFileError as e:
            raise ConfigError(f"train.init_dir: {e}") from None
    raise ConfigError(f"train.init_dir: no such model file or folder: {spec}")


def with_base_model(settings: TrainSettings) -> TrainSettings:
    """Adding styles: the network is the init file's (its widths, blocks), conditional;
    ``model=`` is not needed. Other runs: ``settings`` unchanged. Reads only the header."""
    if not settings.train.add_styles:
        return settings
    meta = read_metadata(resolve_init_file(str(settings.train.init_dir)))
    width = str(meta.get("width") or "multi")
    if int(meta.get("num_styles", 1)) == 1:
        width = _MULTI_WIDTH.get(width, width)
    model = ModelConfig(
        width, list(meta["channels"]), int(meta["num_residual"]), True,
        block=str(meta.get("block", "basic")), kernels=list(meta.get("kernels", [9, 9])),
    )  # fmt: skip
    return replace(settings, model=model)


def norm_keys(net: nn.Module) -> set[str]:
    """The γ/β parameter names of every normalisation layer (``encoder.conv1.norm.weight``…)."""
    return {f"{name}.{p}" for name, _ in named_norms(net) for p in ("weight", "bias")}


@torch.no_grad()
def grow(source: TransformerNet, k: int, init: str = "mean") -> TransformerNet:
    """``source`` (S styles; a plain instance-norm network is S = 1, its (C,) γ/β becoming
    row 0) with ``k`` more styles: every weight copied, each new γ/β row the mean of the
    existing rows (``init="mean"``) or the identity affine γ = 1, β = 0 (``"identity"``)."""
    cfg = source.config
    net = TransformerNet.from_config(replace(cfg, num_styles=cfg.num_styles + k))
    old, keys = source.state_dict(), norm_keys(net)
    state = {}
    for key, target in net.state_dict().items():
        value = old[key]
        if key in keys:
            rows = value.reshape(-1, value.shape[-1])  # (S, C)
            if init == "mean":
                new = rows.mean(0, keepdim=True).expand(k, -1)
            else:
                new = torch.full_like(rows[:1], 1.0 if key.endswith("weight") else 0.0)
                new = new.expand(k, -1)
            value = torch.cat([rows, new])
        state[key] = value.to(target.dtype)
    net.load_state_dict(state)
    return net


def freeze_shared(net: TransformerNet, rows: list[int]) -> list[Any]:
    """Train only γ/β rows ``rows``: every other parameter (the convolutions) stops needing a
    gradient, and each (S, C) γ/β gradient is masked so that the other rows get exactly zero.
    With Adam and weight decay 0 a zero gradient is a zero update (both moments stay 0), so
    those rows stay bit-identical. Returns the hook handles."""
    keys, handles = norm_keys(net), []
    mask = torch.zeros(net.num_styles, 1, dtype=torch.bool)
    mask[rows] = True
    for name, p in net.named_parameters():
        if name not in keys:
            p.requires_grad_(False)
            continue
        # where(), not a product: an infinite gradient must not become NaN in a frozen row.
        handles.append(
            p.register_hook(lambda g, m=mask: torch.where(m.to(g.device), g, torch.zeros_like(g)))
        )
    return handles


def build_conditional(
    settings: TrainSettings,
) -> tuple[TransformerNet, Base | None, list[int]]:
    """The run's conditional network, the model file it started from (or None) and the γ/β
    rows of ``settings.styles`` in it. With ``train.add_styles`` the shared weights are frozen
    (``freeze_shared``); else all of it trains."""
    m, names = settings.model, [s.name for s in settings.styles]
    if not settings.train.init_dir:
        net = m.network(len(names))
        return net, None, list(range(len(names)))
    path = resolve_init_file(settings.train.init_dir)
    source, meta = load_model(path)  # ModelFileError names the file if it is wrong
    base = Base(path, meta)
    if not settings.train.add_styles:
        net = m.network(len(names))
        if source.config != net.config or base.names != names:
            raise ModelFileError(
                f"{path}: its network ({source.config}, styles {base.names}) is not this run's "
                f"(model={m.name}, styles {names}); to add styles use train.add_styles"
            )
        net.load_state_dict(source.state_dict())
        return net, base, list(range(len(names)))
    clash = [n for n in names if n in base.names]
    if clash:
        raise ConfigError(f"train.add_styles: {path.name} already has {', '.join(clash)}")
    try:
        net = grow(source, len(names), settings.train.add_styles_init)
    except ValueError as e:  # more than MAX_STYLES
        raise ConfigError(f"train.add_styles: {e}") from None
    rows = list(range(len(base.names), len(base.names) + len(names)))
    freeze_shared(net, rows)
    return net, base, rows


def style_rows(rows: list[int], num_styles: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    """One-hot style inputs (K·batch, num_styles) for a batch repeated K = len(rows) times,
    style-major (rows k·batch … (k+1)·batch - 1 are style ``rows[k]``), as ``like``'s dtype."""
    eye = torch.eye(num_styles, dtype=like.dtype, device=like.device)
    return eye[rows].repeat_interleave(batch, dim=0)


def painting_of(style: StyleConfig) -> dict[str, Any]:
    """What model metadata says about a style's painting (title, artist, year, file name)."""
    return {
        "title": style.title,
        "artist": style.artist,
        "year": style.year,
        "file": Path(style.image).name,
    }


def style_entry_of(style: StyleConfig, training: dict[str, Any]) -> dict[str, Any]:
    """A style's entry in a multi-style file (``core.model_io`` module docstring)."""
    cfg = asdict(style)
    loss = ("content_weight", "style_weight", "tv_weight", "content_layers", "style_layers")
    return {
        "name": style.name,
        "painting": painting_of(style),
        "image": style.image,
        "size": style.size,
        "loss": {k: cfg[k] for k in loss},
        "training": training,
    }


def network_style_names(settings: TrainSettings) -> list[str]:
    """The styles of the network this run builds, in γ/β row order (the base file's first
    when adding styles; reads only its header)."""
    names = [s.name for s in settings.styles]
    if settings.train.add_styles:
        meta = read_metadata(resolve_init_file(str(settings.train.init_dir)))
        return [*style_names(meta), *names]
    return names


def base_entries(base: Base) -> list[dict[str, Any]]:
    """The base file's style entries, as it stores them (single-style: derived)."""
    return [style_entry(base.meta, n) for n in base.names]


@torch.no_grad()
def select_styles(
    source: TransformerNet, meta: dict[str, Any], picks: dict[str, str]
) -> tuple[TransformerNet, dict[str, Any]]:
    """A multi-style network of some of ``source``'s styles, renamed: ``picks`` maps each new
    name to the style (row) it copies, in the new row order. The convolutions are copied
    unchanged and each γ/β row bit for bit, so every kept style stylises exactly as before.
    The metadata keeps each kept style's entry (its weights and training), renamed, with the
    name it was trained under as ``selected_from``."""
    names = style_names(meta)
    missing = [old for old in picks.values() if old not in names]
    if missing or not picks:
        raise ValueError(f"select_styles: no style {missing or 'chosen'} in {names}")
    rows = [names.index(old) for old in picks.values()]
    net = TransformerNet.from_config(replace(source.config, num_styles=len(picks)))
    keys, old = norm_keys(net), source.state_dict()
    net.load_state_dict(
        {k: v.reshape(-1, v.shape[-1])[rows] if k in keys else v for k, v in old.items()}
    )
    entries = [
        {**style_entry(meta, old_name), "name": new, "selected_from": old_name}
        for new, old_name in picks.items()
    ]
    out = {**meta, "num_styles": len(picks), "styles": entries, "style": entries[0]["name"]}
    return net.eval(), out
