"""Typed schemas for the Hydra config groups, and validation with one-line errors.

Hydra's struct mode already rejects unknown keys given on the command line. These schemas also
catch typos inside YAML files (a style file's ``contnt_weight``) and wrong types, before any
work starts, with a message that names the key and suggests the closest valid one.
"""

from __future__ import annotations

import difflib
import inspect
import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fast_style.core.imaging import IMAGE_EXTENSIONS
from fast_style.core.network import TransformerNet
from fast_style.core.resources import config_dir
from fast_style.loss.config import LossConfig, StyleConfig


class ConfigError(ValueError):
    """A configuration mistake, reported as one line naming the key."""


@dataclass
class ModelConfig:
    name: str = "johnson"
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    num_residual: int = 5
    # One network for all the run's styles (conditional instance norm, Dumoulin et al. 2017:
    # shared convolutions, per-style γ/β; model=multi, multi_slim) instead of one network per
    # style. With one style it is the plain single-style network.
    conditional: bool = False
    # The residual block ("basic" | "dwsep", depthwise-separable) and the first/last conv
    # kernels: fast_style.core.network.TransformerConfig; model=nano sets them.
    block: str = "basic"
    kernels: list[int] = field(default_factory=lambda: [9, 9])

    def network(self, num_styles: int = 1) -> TransformerNet:
        """A freshly initialised network of this architecture."""
        return TransformerNet(
            self.channels, self.num_residual, num_styles=num_styles, block=self.block,
            kernels=self.kernels,
        )  # fmt: skip


@dataclass
class DistillConfig:
    """Knowledge distillation (``distill.teacher=<model>``, fast_style.train.distill): the
    network also learns the teacher's outputs, cached once per training image."""

    teacher: str | None = None  # a model file, or a shipped model's name; None: off
    pixel_weight: float = 10.0  # mean |y − t| (pixels in [0, 1])
    feature_weight: float = 1.0  # relative feature MSE at feature_layers, as the content term
    feature_layers: dict[str, float] = field(
        default_factory=lambda: {"relu1_2": 1.0, "relu2_2": 1.0}
    )
    # Each photo is cached at cache_size² (short side resized, centre crop) with the teacher's
    # output; training crops data.image_size² from both. None: data.image_size (no crop).
    cache_size: int | None = None
    max_images: int | None = None  # cache only the first N training photos (CPU budgets)
    flip: bool = True  # random horizontal flips of both (the teacher trained with flips)
    cache_dir: str | None = None  # None: $FAST_STYLE_CACHE/distill (~/.cache/fast_style)


@dataclass
class DataConfig:
    root: str = "data/coco/train2014"
    val_root: str | None = None  # None: hold out ``num_val`` images of ``root``
    image_size: int = 256
    batch_size: int = 4
    num_workers: int = 4
    pin_memory: bool = True
    num_val: int = 16
    val_size: int = 256
    # Decode the whole training set once into GPU memory (uint8, ``cache_size`` px squares) and
    # crop/flip there: no loader workers, no host-to-device copies. Small datasets only.
    gpu_cache: bool = False
    cache_size: int | None = None  # stored square side; None: image_size (flips only)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    scheduler: str = "constant"  # constant | cosine
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr


@dataclass
class RunConfig:
    """Training-loop extras that are not ``pl.Trainer`` arguments."""

    image_every_n_steps: int = 500
    checkpoint_every_n_steps: int = 1000
    num_grid_images: int = 4
    export_dtype: str = "float32"  # float32 | float16 | bfloat16
    compile: bool = False  # torch.compile the transform net(s) and the loss network
    channels_last: bool = False  # NHWC tensors for the nets (faster convolutions on GPUs)
    progress_every: int = 1  # progress-bar refresh in steps; each refresh syncs with the GPU
    time_budget_min: float | None = None  # lower max_steps to fit this many minutes of training
    # Fine-tune: start each style's network from <init_dir>/<style name>.safetensors (or .ckpt)
    # instead of random weights (a fresh optimizer and schedule; resuming is ckpt_path's job).
    # A conditional model (or add_styles) takes one model file instead: a path, a path without
    # its suffix, a folder holding one model, or a shipped model's name (``multi``).
    init_dir: str | None = None
    # Add styles to the init_dir model: only the new styles' γ/β rows train, the shared
    # convolutions and the other styles stay bit-identical. Names as in ``styles``.
    add_styles: list[Any] = field(default_factory=list)
    # The new rows start as the mean of the existing styles' rows ("mean") or as the identity
    # affine γ=1, β=0 ("identity"); docs/quality.md has the measurement behind the default.
    add_styles_init: str = "mean"
    # Name of the exported multi-style file (<export_name>.safetensors); None: the init file's
    # name when adding styles, else "multi". Single-style files are always <style>.safetensors.
    export_name: str | None = None


@dataclass
class TrainSettings:
    style: StyleConfig
    model: ModelConfig
    data: DataConfig
    loss: LossConfig
    optim: OptimConfig
    train: RunConfig
    trainer: dict[str, Any]
    seed: int | None
    ckpt_path: str | None
    distill: DistillConfig = field(default_factory=DistillConfig)
    # Every style trained in this run: ``[style]`` unless the config's ``styles`` list names
    # several (they share each batch's loss-network pass over the content images), or the
    # styles of ``train.add_styles`` when adding styles to an existing network.
    styles: list[StyleConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.styles:
            self.styles = [self.style]

    @property
    def conditional(self) -> bool:
        """One conditional network for all styles (``model.conditional`` or adding styles)."""
        return self.model.conditional or bool(self.train.add_styles)

    def for_style(self, index: int) -> TrainSettings:
        """These settings as if only style ``index`` had been trained (an exported model's)."""
        s = self.styles[index]
        return replace(self, style=s, styles=[s])

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form (stored in checkpoints and exported models)."""
        return OmegaConf.to_container(OmegaConf.structured(self), resolve=True)  # type: ignore[return-value]


_SECTIONS = {
    "style": StyleConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "train": RunConfig,
    "distill": DistillConfig,
}
_TOP_LEVEL = {*_SECTIONS, "trainer", "seed", "ckpt_path", "styles"}


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(sorted(options))})"


def _check_keys(schema: type, cfg: Any, prefix: str) -> None:
    """Every key of ``cfg`` is a field of ``schema``, also in nested dataclass sections
    (``loss.temporal``); else a one-line error with the closest valid key."""
    if not isinstance(cfg, DictConfig | dict):
        raise ConfigError(f"config error: {prefix} must be a mapping, got {cfg!r}")
    hints = typing.get_type_hints(schema)
    names = [f.name for f in fields(schema)]
    for key in cfg:
        if key not in names:
            raise ConfigError(
                f"config error: unknown key '{prefix}.{key}'{_suggest(str(key), names)}"
            )
        if is_dataclass(hints[str(key)]):
            _check_keys(hints[str(key)], cfg[key], f"{prefix}.{key}")


def _section(schema: type, cfg: Any, prefix: str):
    _check_keys(schema, cfg, prefix)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"config error: {prefix}.{key}: {msg}") from None


def trainer_kwargs_names() -> list[str]:
    import pytorch_lightning as pl

    return [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]


def validate(cfg: DictConfig) -> TrainSettings:
    """Check every key and type of a composed training config; return typed settings."""
    for key in cfg:
        if key not in _TOP_LEVEL:
            raise ConfigError(
                f"config error: unknown key '{key}'{_suggest(str(key), sorted(_TOP_LEVEL))}"
            )
    parts = {name: _section(schema, cfg.get(name, {}), name) for name, schema in _SECTIONS.items()}
    trainer = OmegaConf.to_container(cfg.get("trainer", {}), resolve=True)
    allowed = trainer_kwargs_names()
    for key in trainer:
        if key not in allowed:
            raise ConfigError(
                f"config error: unknown key 'trainer.{key}' (not a pl.Trainer argument)"
                f"{_suggest(key, allowed)}"
            )
    styles = [load_style(e, f"styles[{i}]") for i, e in enumerate(cfg.get("styles") or [])]
    added = parts["train"].add_styles
    if added:
        if styles:
            raise ConfigError("config error: give styles=[…] or train.add_styles=[…], not both")
        styles = [load_style(e, f"train.add_styles[{i}]") for i, e in enumerate(added)]
    if styles:
        parts["style"] = styles[0]
    settings = TrainSettings(
        **parts,
        trainer=trainer,
        seed=cfg.get("seed"),
        ckpt_path=cfg.get("ckpt_path"),
        styles=styles,
    )
    _check_values(settings)
    return settings


def group_names(group: str) -> list[str]:
    """The options of a config group (``conf/<group>/*.yaml``), ``custom`` left out."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml") if p.stem != "custom")


def _yaml(path: Path) -> DictConfig:
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config error: {path}: not a mapping")
    cfg.pop("defaults", None)
    return cfg


def load_style(entry: Any, where: str = "style") -> StyleConfig:
    """The one style loader (training's ``styles`` entries, Gatys's ``--style``): an inline
    mapping, a YAML file, a style name from ``conf/style/``, or a painting's image file (with
    the loss weights of ``conf/style/custom.yaml``); validated against ``StyleConfig``.
    An inline mapping whose ``name`` is a style of ``conf/style/`` overrides that style's
    YAML (``{name: great_wave, size: 256}``). ``where`` names the entry in error messages."""
    if isinstance(entry, DictConfig | dict):
        name = str(entry.get("name") or "")
        named = config_dir() / "style" / f"{name}.yaml"
        if name and len(Path(name).parts) == 1 and named.is_file():
            entry = OmegaConf.merge(_yaml(named), entry)
        return _section(StyleConfig, entry, where)
    path = Path(str(entry)).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _section(StyleConfig, _yaml(path), where)
    named = config_dir() / "style" / f"{entry}.yaml"
    if len(path.parts) == 1 and named.is_file():
        return _section(StyleConfig, _yaml(named), where)
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        cfg = _yaml(config_dir() / "style" / "custom.yaml")
        cfg.name, cfg.image = path.stem, str(path)
        return _section(StyleConfig, cfg, where)
    raise ConfigError(
        f"config error: {where}: {str(entry)!r} is neither a style name, a YAML file nor an "
        f"image{_suggest(str(entry), group_names('style'))}"
    )


def load_loss(network: str = "vgg16", weights: str | None = None) -> LossConfig:
    """The loss network config ``conf/loss/<network>.yaml``, with an optional weights file."""
    path = config_dir() / "loss" / f"{network}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown loss {network!r}; choose one of {', '.join(group_names('loss'))}"
        )
    cfg = _section(LossConfig, _yaml(path), "loss")
    return replace(cfg, weights=weights) if weights else cfg


def _check_values(s: TrainSettings) -> None:
    from fast_style.loss.vgg import layer_names

    taps = layer_names(s.loss.network)
    for style in s.styles:
        for group in ("content_layers", "style_layers"):
            for tap in getattr(style, group):
                if tap not in taps:
                    raise ConfigError(
                        f"config error: style.{group}.{tap}: not a {s.loss.network} layer"
                        f"{_suggest(tap, taps)}"
                    )
    names = [st.name for st in s.styles]
    if len(set(names)) != len(names):
        raise ConfigError(f"config error: styles: names must be unique, got {names}")
    if len(s.model.channels) != 3:
        raise ConfigError(f"config error: model.channels needs 3 widths, got {s.model.channels}")
    if s.optim.scheduler not in ("constant", "cosine"):
        raise ConfigError(
            f"config error: optim.scheduler must be constant or cosine, not {s.optim.scheduler!r}"
        )
    _check_add_styles(s)
    if s.train.export_dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError("config error: train.export_dtype must be float32, float16 or bfloat16")
    for key in ("image_size", "batch_size", "val_size"):
        if getattr(s.data, key) < 1:
            raise ConfigError(f"config error: data.{key} must be positive")
    _check_temporal(s)
    _check_distill(s)
    _check_model(s)


def _check_model(s: TrainSettings) -> None:
    """``model.block`` and ``model.kernels`` name a buildable network."""
    from fast_style.core.network import TransformerConfig

    m = s.model
    try:
        TransformerConfig(tuple(m.channels), m.num_residual, 1, m.block, tuple(m.kernels))  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError(f"config error: model: {e}") from None


def _check_distill(s: TrainSettings) -> None:
    """``distill``: one single-style network, non-negative weights, a cache at least as
    large as the crops."""
    d = s.distill
    if not d.teacher:
        return
    if s.conditional or len(s.styles) > 1:
        raise ConfigError("config error: distill.teacher trains one single-style network")
    for key in ("pixel_weight", "feature_weight"):
        value = getattr(d, key)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"config error: distill.{key} must be >= 0, got {value}")
    if d.cache_size is not None and d.cache_size < s.data.image_size:
        raise ConfigError(
            f"config error: distill.cache_size ({d.cache_size}) must be >= data.image_size "
            f"({s.data.image_size})"
        )
    if d.max_images is not None and d.max_images < 1:
        raise ConfigError("config error: distill.max_images must be positive")
    from fast_style.loss.vgg import layer_names

    taps = layer_names(s.loss.network)
    for tap in d.feature_layers:
        if tap not in taps:
            raise ConfigError(
                f"config error: distill.feature_layers.{tap}: not a {s.loss.network} layer"
                f"{_suggest(tap, taps)}"
            )


def _check_temporal(s: TrainSettings) -> None:
    """``loss.temporal``: finite, non-negative weight and warp sizes; zoom below 1."""
    t = s.loss.temporal
    for key in ("weight", "max_shift", "max_rotation", "max_zoom", "flow_std", "noise_std"):
        value = getattr(t, key)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"config error: loss.temporal.{key} must be >= 0, got {value}")
    if t.max_zoom >= 1:
        raise ConfigError(f"config error: loss.temporal.max_zoom must be < 1, got {t.max_zoom}")
    if t.flow_grid < 1:
        raise ConfigError(f"config error: loss.temporal.flow_grid must be >= 1, got {t.flow_grid}")


def _check_add_styles(s: TrainSettings) -> None:
    t = s.train
    if t.add_styles_init not in ("mean", "identity"):
        raise ConfigError(
            "config error: train.add_styles_init must be mean or identity, "
            f"not {t.add_styles_init!r}"
        )
    if not t.add_styles:
        return
    if not t.init_dir:
        raise ConfigError(
            "config error: train.add_styles needs train.init_dir=<the model to add them to>"
        )
    if s.optim.weight_decay != 0:
        # Adam's L2 term would move the frozen rows, which must stay bit-identical.
        raise ConfigError("config error: train.add_styles needs optim.weight_decay=0")
