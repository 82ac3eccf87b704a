"""Run one training: data, system, callbacks and Trainer; resume checks; model export.

Everything a run writes goes under its run directory (Hydra's ``hydra.run.dir``):
``checkpoints/last.ckpt`` and periodic ``checkpoints/step_NNNNNN.ckpt``, TensorBoard events in
``tensorboard/``, the composed config in ``.hydra/``, and at the end ``<style>.safetensors``
(one per style), or for a conditional network one ``<export name>.safetensors`` holding every
style (``multi_export_name``).
"""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger

from fast_style.core.model_io import load_checkpoint_dict, save_safetensors
from fast_style.core.resources import resolve_data_path
from fast_style.train.callbacks import InterruptCheckpoint, ThroughputMonitor, TimeBudget
from fast_style.train.checkpointing import (
    AtomicCheckpointIO,
    clean_checkpoint_dir,
    resolve_resume,
)
from fast_style.train.config import ConfigError, TrainSettings
from fast_style.train.data import StyleDataModule
from fast_style.train.distill import DistillDataModule
from fast_style.train.multi import network_style_names, resolve_init_file, with_base_model
from fast_style.train.system import StyleTransferSystem, lineage

log = logging.getLogger("fast_style.train")


def trainer_kwargs(settings: TrainSettings) -> dict[str, Any]:
    """``pl.Trainer`` arguments; ``precision: auto`` means bf16 on capable GPUs, else fp32."""
    kw = dict(settings.trainer)
    if kw.get("precision") == "auto":
        use_cuda = kw.get("accelerator") in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        kw["precision"] = "bf16-mixed" if use_cuda and torch.cuda.is_bf16_supported() else "32-true"
    return kw


def _safe_resume_kwargs() -> dict[str, Any]:
    """``weights_only=True`` for ``Trainer.fit`` where Lightning has it (≥ 2.5): resuming reads
    the checkpoint without unpickling arbitrary objects (ours hold only tensors and plain
    types). Older Lightning versions load with their own default."""
    params = inspect.signature(pl.Trainer.fit).parameters
    return {"weights_only": True} if "weights_only" in params else {}


def _resume_checkpoint(settings: TrainSettings) -> str | None:
    """``ckpt_path`` checked before anything is built: it exists, it reads as plain data with
    fast_style's metadata and a matching digest (a file that would run pickled code is
    refused; a corrupt ``last.ckpt`` falls back to the newest valid checkpoint beside it), and
    it holds the networks this run configures. Else one clear error."""
    if not settings.ckpt_path:
        return None
    ckpt, step = resolve_resume(resolve_data_path(settings.ckpt_path))
    check_resume_matches(load_checkpoint_dict(ckpt), settings, ckpt)
    clean_checkpoint_dir(ckpt.parent)
    print(f"resuming from {ckpt} at step {step}", file=sys.stderr)
    return str(ckpt)


def _describe_net(meta: dict[str, Any]) -> str:
    chans = "/".join(str(c) for c in meta.get("channels", []))
    n = int(meta.get("num_styles", 1))
    styles = f", one network of {n} styles" if n > 1 else ""
    return (
        f"model={meta.get('width') or '?'} (channels {chans}, {meta.get('num_residual')} blocks"
        f"{styles})"
    )


def check_resume_matches(ckpt: dict[str, Any], settings: TrainSettings, path: Path) -> None:
    """The checkpoint's networks and styles must be this run's; else a ``ConfigError`` that
    says which setting to pass (instead of Lightning's "size mismatch" for every tensor).
    Compared: widths, residual blocks, the number of styles of one network (1 for separate
    networks) and the style names in order (a conditional network's γ/β rows)."""
    meta = ckpt["fast_style"]
    m = settings.model
    wanted = network_style_names(settings)
    num_styles = len(wanted) if settings.conditional else 1
    ours_meta = {"width": m.name, "channels": m.channels, "num_residual": m.num_residual}
    if (
        list(meta.get("channels", [])) != list(m.channels)
        or meta.get("num_residual") != int(m.num_residual)
        or int(meta.get("num_styles", 1)) != num_styles
        or meta.get("block", "basic") != m.block
        or list(meta.get("kernels", [9, 9])) != list(m.kernels)
    ):
        theirs = _describe_net(meta)
        ours = _describe_net({**ours_meta, "num_styles": num_styles})
        raise ConfigError(
            f"ckpt_path: {path} holds {theirs} but this run has {ours}; "
            f"resume with model={meta.get('width') or '<its model>'} and its styles"
        )
    if meta.get("styles"):
        saved = [s.get("name") for s in meta["styles"]]
    else:
        saved = [s.get("style") for s in ckpt.get("fast_style_styles") or [meta]]
    if saved != wanted:
        raise ConfigError(
            f"ckpt_path: {path} was trained on styles {saved}, this run configures {wanted}; "
            "resume with the same style/styles"
        )


def train(settings: TrainSettings, run_dir: Path) -> Path | None:
    """Fit, then export ``<style>.safetensors`` (one per style) into ``run_dir``; returns the
    first one's path (rank 0)."""
    settings = with_base_model(settings)  # adding styles: the network of train.init_dir
    ckpt = _resume_checkpoint(settings)
    if settings.seed is not None:
        pl.seed_everything(settings.seed, workers=True)
    max_steps = int(settings.trainer.get("max_steps") or 0)
    data = (
        DistillDataModule(settings.data, settings.distill)
        if settings.distill.teacher
        else StyleDataModule(settings.data)
    )
    data.setup("fit")
    system = StyleTransferSystem(
        settings, grid_images=data.grid_images(settings.train.num_grid_images)
    )
    if isinstance(data, DistillDataModule) and data.teacher_file is not None:
        system.distilled_from = {"file": data.teacher_file.name, **lineage(data.teacher_meta)}
    ckpt_dir = run_dir / "checkpoints"
    clean_checkpoint_dir(ckpt_dir)
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="step_{step:06d}",  # no "=": Hydra overrides must not need quoting
            auto_insert_metric_name=False,
            every_n_train_steps=settings.train.checkpoint_every_n_steps,
            save_top_k=-1,
            save_last=True,
        ),
        InterruptCheckpoint(ckpt_dir),
        LearningRateMonitor(logging_interval="step"),
        ThroughputMonitor(run_dir, warmup_steps=min(20, max_steps // 4) if max_steps else 20),
    ]
    if settings.train.time_budget_min:
        callbacks.append(TimeBudget(settings.train.time_budget_min))
    kwargs = trainer_kwargs(settings)
    if kwargs.get("enable_progress_bar", True):
        callbacks.append(TQDMProgressBar(refresh_rate=settings.train.progress_every))
    logger = TensorBoardLogger(
        save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False
    )
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],  # every checkpoint: same-folder temp, fsync, rename
        **kwargs,
    )
    trainer.fit(system, datamodule=data, ckpt_path=ckpt, **_safe_resume_kwargs())
    if not trainer.is_global_zero:
        return None
    return export(system, settings, run_dir)[0]


def multi_export_name(settings: TrainSettings) -> str:
    """A conditional network's file name (no suffix): ``train.export_name``, else the init
    file's when adding styles to it, else ``multi``."""
    if settings.train.export_name:
        return settings.train.export_name
    if settings.train.add_styles and settings.train.init_dir:
        return resolve_init_file(settings.train.init_dir).stem
    return "multi"


def export(system: StyleTransferSystem, settings: TrainSettings, run_dir: Path) -> list[Path]:
    """Write the inference models into ``run_dir``: ``<style>.safetensors`` for each separate
    network, or one ``<multi_export_name>.safetensors`` for a conditional one."""
    names = (
        [multi_export_name(settings)] if settings.conditional else [s.name for s in settings.styles]
    )
    outs = []
    for k, name in enumerate(names):
        out = run_dir / f"{name}.safetensors"
        net = system.nets[k]
        save_safetensors(net, out, system.metadata(k), dtype=settings.train.export_dtype)
        log.info("exported %s (step %d)", out, system.global_step)
        print(f"saved {out}")
        outs.append(out)
    return outs
