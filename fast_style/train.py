"""``python train.py style=starry_night [group=option …] [key=value …]``: train a style network.

Everything a run writes goes under its Hydra run directory (``hydra.run.dir=…``):
``checkpoints/last.ckpt`` and periodic ``checkpoints/step_NNNNNN.ckpt``, TensorBoard events in
``tensorboard/``, the composed config in ``.hydra/``, and ``<style>.safetensors`` at the end.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Checkpoint, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from fast_style.config import PROJECT_ROOT, ConfigError, TrainSettings, resolve_path, validate
from fast_style.data import StyleDataModule
from fast_style.imaging import ImageReadError
from fast_style.loss.vgg import LossNetworkWeightsError
from fast_style.model_io import save_safetensors
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


def trainer_kwargs(settings: TrainSettings) -> dict[str, Any]:
    """``pl.Trainer`` arguments; ``precision: auto`` means bf16 on capable GPUs, else fp32."""
    kw = dict(settings.trainer)
    if kw.get("precision") == "auto":
        use_cuda = kw.get("accelerator") in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        kw["precision"] = "bf16-mixed" if use_cuda and torch.cuda.is_bf16_supported() else "32-true"
    return kw


def train(settings: TrainSettings, run_dir: Path) -> Path | None:
    """Fit, then export ``<style>.safetensors`` into ``run_dir``; returns its path (rank 0)."""
    if settings.seed is not None:
        pl.seed_everything(settings.seed, workers=True)
    data = StyleDataModule(settings.data)
    data.setup("fit")
    system = StyleTransferSystem(
        settings, grid_images=data.grid_images(settings.train.num_grid_images)
    )
    ckpt_dir = run_dir / "checkpoints"
    callbacks = [
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
    ]
    logger = TensorBoardLogger(
        save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False
    )
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        logger=logger,
        callbacks=callbacks,
        **trainer_kwargs(settings),
    )
    ckpt = str(resolve_path(settings.ckpt_path)) if settings.ckpt_path else None
    if ckpt and not Path(ckpt).is_file():
        raise FileNotFoundError(f"ckpt_path: no such checkpoint: {ckpt}")
    trainer.fit(system, datamodule=data, ckpt_path=ckpt)
    if not trainer.is_global_zero:
        return None
    out = run_dir / f"{settings.style.name}.safetensors"
    save_safetensors(system.net, out, system.metadata(), dtype=settings.train.export_dtype)
    log.info("exported %s (step %d)", out, trainer.global_step)
    print(f"saved {out}")
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        settings = validate(cfg)
        train(settings, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, LossNetworkWeightsError, ImageReadError, FileNotFoundError) as e:
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
