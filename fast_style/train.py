"""``python train.py style=starry_night [group=option …] [key=value …]``: train a style network.

Everything a run writes goes under its Hydra run directory (``hydra.run.dir=…``):
``checkpoints/last.ckpt`` and periodic ``checkpoints/step_NNNNNN.ckpt``, TensorBoard events in
``tensorboard/``, the composed config in ``.hydra/``, and ``<style>.safetensors`` at the end.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from pytorch_lightning.callbacks import (
    Checkpoint,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from pytorch_lightning.loggers import TensorBoardLogger

from fast_style.checkpointing import AtomicCheckpointIO, clean_checkpoint_dir, resolve_resume
from fast_style.config import PROJECT_ROOT, ConfigError, TrainSettings, resolve_path, validate
from fast_style.data import StyleDataModule
from fast_style.imaging import ImageReadError
from fast_style.loss.vgg import LossNetworkWeightsError
from fast_style.model_io import ModelFileError, load_checkpoint_dict, save_safetensors
from fast_style.system import StyleTransferSystem

log = logging.getLogger("fast_style.train")
CONFIG_DIR = str(PROJECT_ROOT / "conf")


class InterruptCheckpoint(Checkpoint):
    """On Ctrl-C or SIGTERM, save ``last.ckpt`` so that nothing since the last periodic
    checkpoint is lost, and say how to resume."""

    def __init__(self, dirpath: Path):
        self.path = Path(dirpath) / "last.ckpt"

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if (
            isinstance(exception, KeyboardInterrupt)
            or type(exception).__name__ == "SIGTERMException"
        ):
            trainer.save_checkpoint(self.path)
            if trainer.is_global_zero:
                print(
                    f"\ninterrupted at step {trainer.global_step}; saved {self.path}\n"
                    f"resume with: python train.py <same overrides> ckpt_path={self.path}",
                    file=sys.stderr,
                )


def sync_device(pl_module: pl.LightningModule) -> None:
    """Wait for the module's GPU work (a no-op on the CPU): only at the timing points."""
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)


class ThroughputMonitor(pl.Callback):
    """Training speed without per-step host synchronisation: the clock is read (after a device
    sync) only once warm-up is over (compilation, cuDNN autotuning) and at the end. Writes
    ``throughput.json`` to the run directory and logs ``perf/samples_per_s``."""

    def __init__(self, run_dir: Path, warmup_steps: int = 20):
        self.path = Path(run_dir) / "throughput.json"
        self.warmup = warmup_steps
        self.t_fit = self.t_warm = self.t_val = self.val_seconds = 0.0
        self.step_warm = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t_fit = time.perf_counter()
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if trainer.global_step == self.warmup:
            sync_device(pl_module)
            self.t_warm, self.step_warm = time.perf_counter(), trainer.global_step

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.t_warm and not trainer.sanity_checking:
            sync_device(pl_module)
            self.t_val = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.t_val:
            sync_device(pl_module)
            self.val_seconds += time.perf_counter() - self.t_val
            self.t_val = 0.0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sync_device(pl_module)
        now, steps = time.perf_counter(), trainer.global_step - self.step_warm
        s = pl_module.settings
        report = {
            "steps": trainer.global_step,
            "batch_size": s.data.batch_size,
            "styles": len(s.styles),
            "train_seconds": round(now - self.t_fit, 2),
            "device": torch.cuda.get_device_name(pl_module.device)
            if pl_module.device.type == "cuda"
            else "cpu",
        }
        if self.t_warm and steps > 0:
            seconds = now - self.t_warm - self.val_seconds  # training steps only
            per_s = steps * s.data.batch_size / seconds
            report.update(
                timed_steps=steps,
                samples_per_s=round(per_s, 1),  # content images per second (all styles)
                style_samples_per_s=round(per_s * len(s.styles), 1),
                ms_per_step=round(1000 * seconds / steps, 2),
                validation_seconds=round(self.val_seconds, 2),
            )
        if pl_module.device.type == "cuda":
            report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if trainer.is_global_zero:
            self.path.write_text(json.dumps(report, indent=1))
            log.info("throughput: %s", report)


class TimeBudget(pl.Callback):
    """Fit the run into ``minutes`` of training: after ``probe`` steps past warm-up, the step
    time is measured and ``max_steps`` lowered to what fits (never raised). The cosine
    schedule reads ``max_steps`` at every step, so it still ends at its floor."""

    def __init__(
        self,
        minutes: float,
        warmup: int = 20,
        probe: int = 50,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.budget, self.warmup, self.probe, self.clock = minutes * 60, warmup, probe, clock
        self.t0 = self.t_warm = 0.0
        self.first = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t0 = self.clock()
        self.first = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step - self.first
        if step not in (self.warmup, self.warmup + self.probe):
            return
        sync_device(pl_module)
        now = self.clock()
        if step == self.warmup:
            self.t_warm = now
            return
        per_step = (now - self.t_warm) / self.probe
        # validation (its first pass compiles) and checkpoints cost extra time: keep a margin
        left = (self.budget - (now - self.t0)) * 0.95 - 30
        fits = trainer.global_step + int(left / per_step)
        if trainer.max_steps < 0 or fits < trainer.max_steps:
            trainer.fit_loop.epoch_loop.max_steps = max(trainer.global_step + 1, fits)
            log.info(
                "time budget %.1f min: %.1f ms/step, max_steps set to %d",
                self.budget / 60,
                1000 * per_step,
                trainer.max_steps,
            )


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
    ckpt, step = resolve_resume(resolve_path(settings.ckpt_path))
    check_resume_matches(load_checkpoint_dict(ckpt), settings, ckpt)
    clean_checkpoint_dir(ckpt.parent)
    print(f"resuming from {ckpt} at step {step}", file=sys.stderr)
    return str(ckpt)


def _describe_net(meta: dict[str, Any]) -> str:
    chans = "/".join(str(c) for c in meta.get("channels", []))
    return f"model={meta.get('width') or '?'} (channels {chans}, {meta.get('num_residual')} blocks)"


def check_resume_matches(ckpt: dict[str, Any], settings: TrainSettings, path: Path) -> None:
    """The checkpoint's networks and styles must be this run's; else a ``ConfigError`` that
    says which setting to pass (instead of Lightning's "size mismatch" for every tensor)."""
    meta = ckpt["fast_style"]
    m = settings.model
    if list(meta.get("channels", [])) != list(m.channels) or meta.get("num_residual") != int(
        m.num_residual
    ):
        theirs = _describe_net(meta)
        ours = _describe_net(
            {"width": m.name, "channels": m.channels, "num_residual": m.num_residual}
        )
        raise ConfigError(
            f"ckpt_path: {path} holds {theirs} but this run has {ours}; "
            f"resume with model={meta.get('width') or '<its model>'}"
        )
    saved = [s.get("style") for s in ckpt.get("fast_style_styles") or [meta]]
    wanted = [s.name for s in settings.styles]
    if saved != wanted:
        raise ConfigError(
            f"ckpt_path: {path} was trained on styles {saved}, this run configures {wanted}; "
            "resume with the same style/styles"
        )


def train(settings: TrainSettings, run_dir: Path) -> Path | None:
    """Fit, then export ``<style>.safetensors`` (one per style) into ``run_dir``; returns the
    first one's path (rank 0)."""
    ckpt = _resume_checkpoint(settings)
    if settings.seed is not None:
        pl.seed_everything(settings.seed, workers=True)
    max_steps = int(settings.trainer.get("max_steps") or 0)
    data = StyleDataModule(settings.data)
    data.setup("fit")
    system = StyleTransferSystem(
        settings, grid_images=data.grid_images(settings.train.num_grid_images)
    )
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
    outs = []
    for k, style in enumerate(settings.styles):
        out = run_dir / f"{style.name}.safetensors"
        net = system.nets[k]
        save_safetensors(net, out, system.metadata(k), dtype=settings.train.export_dtype)
        log.info("exported %s (step %d)", out, trainer.global_step)
        print(f"saved {out}")
        outs.append(out)
    return outs[0]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        settings = validate(cfg)
        train(settings, Path(HydraConfig.get().runtime.output_dir))
    except (
        ConfigError,
        LossNetworkWeightsError,
        ImageReadError,
        FileNotFoundError,
        ModelFileError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def _argv(argv: list[str] | None) -> Iterator[None]:
    saved = sys.argv
    if argv is not None:
        sys.argv = [saved[0] if saved else "train.py", *argv]
    try:
        yield
    finally:
        sys.argv = saved


def main(argv: list[str] | None = None) -> None:
    """Entry point; ``argv`` are Hydra overrides (default: ``sys.argv[1:]``)."""
    with _argv(argv):
        _hydra_main()


if __name__ == "__main__":
    main()
