"""Training callbacks: a checkpoint on Ctrl-C, throughput measurement, a time budget."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint

from fast_style.core.device import sync_device

log = logging.getLogger("fast_style.train")


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
            try:
                trainer.save_checkpoint(self.path)
                saved = f"saved {self.path}"
            except Exception as e:  # the periodic checkpoints on disk are still whole
                saved = f"could not save {self.path.name} ({type(e).__name__}: {e})"
            if trainer.is_global_zero:
                print(
                    f"\ninterrupted at step {trainer.global_step}; {saved}\n"
                    f"resume with: python train.py <same overrides> ckpt_path={self.path}",
                    file=sys.stderr,
                )


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
            sync_device(pl_module.device)
            self.t_warm, self.step_warm = time.perf_counter(), trainer.global_step

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.t_warm and not trainer.sanity_checking:
            sync_device(pl_module.device)
            self.t_val = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.t_val:
            sync_device(pl_module.device)
            self.val_seconds += time.perf_counter() - self.t_val
            self.t_val = 0.0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sync_device(pl_module.device)
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
        sync_device(pl_module.device)
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
