"""The Lightning system: trains a ``TransformerNet`` against the perceptual loss.

The model (``TransformerNet``, an ``nn.Module``) stays apart from this system. The frozen loss
network is deliberately *not* a registered submodule: it never enters checkpoints (they hold
only the transform net, optimizer and schedule) and DDP never wraps it.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from fast_style.config import LossConfig, StyleConfig, TrainSettings, resolve_path
from fast_style.imaging import image_grid, load_tensor
from fast_style.loss import LossWeights, PerceptualLoss
from fast_style.model_io import describe
from fast_style.transformer import TransformerNet


def style_loss_weights(s: StyleConfig) -> LossWeights:
    """The loss weights and layers of a style config."""
    return LossWeights(
        content_weight=s.content_weight,
        style_weight=s.style_weight,
        tv_weight=s.tv_weight,
        content_layers=dict(s.content_layers),
        style_layers=dict(s.style_layers),
    )


def style_criterion(style: StyleConfig, loss: LossConfig) -> tuple[PerceptualLoss, torch.Tensor]:
    """The loss network with the style's Gram targets set; returns it and the style image
    (1, 3, H, W) in [0, 1]. The one construction used by training, Gatys and evaluation."""
    crit = PerceptualLoss.build(style_loss_weights(style), loss.network, loss.weights)
    image = load_tensor(resolve_path(style.image), long_side=style.size)
    crit.set_style(image)
    return crit, image


def build_criterion(settings: TrainSettings) -> tuple[PerceptualLoss, torch.Tensor]:
    """The training criterion: ``style_criterion`` of the run's style and loss configs."""
    return style_criterion(settings.style, settings.loss)


def lr_lambda(step: int, warmup: int, total: int, kind: str, floor: float) -> float:
    """Base-lr multiplier at ``step``: linear warmup, then constant or cosine down to ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


class StyleTransferSystem(pl.LightningModule):
    """Lightning wrapper: losses, logging, image grids, optimizer/schedule, checkpoint metadata."""

    def __init__(self, settings: TrainSettings, grid_images: torch.Tensor | None = None):
        super().__init__()
        self.settings = settings
        self.save_hyperparameters({"config": settings.to_dict()})
        m = settings.model
        self.net = TransformerNet(m.channels, m.num_residual)
        # Kept in __dict__, not registered as a submodule (see the module docstring).
        self.__dict__["_criterion"] = None
        self.__dict__["_style"] = None
        self.grid_images = grid_images

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def criterion(self) -> PerceptualLoss:
        """The frozen loss network with style targets, built on first use, on this device."""
        if self._criterion is None:
            self.__dict__["_criterion"], self.__dict__["_style"] = build_criterion(self.settings)
        if self._criterion.network.layers[0].weight.device != self.device:
            self._criterion.to(self.device)
        return self._criterion

    def on_fit_start(self) -> None:
        self.criterion  # noqa: B018 - build before the first step, not inside it

    def _log_terms(self, prefix: str, terms: dict[str, torch.Tensor], on_step: bool) -> None:
        main = {f"{prefix}/{k}": terms[k] for k in ("content", "style", "tv", "total")}
        self.log_dict(
            main, on_step=on_step, on_epoch=not on_step, prog_bar=on_step, sync_dist=not on_step
        )
        layers = {f"{prefix}_layers/{k}": v for k, v in terms.items() if "/" in k}
        self.log_dict(layers, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        terms = self.criterion(self.net(batch), batch)
        self._log_terms("train", terms, on_step=True)
        return terms["total"]

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        terms = self.criterion(self.net(batch), batch)
        self._log_terms("val", terms, on_step=False)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.settings.train.image_every_n_steps
        if every > 0 and (self.global_step % every == 0 or self.global_step == 1):
            self.log_image_grid()

    def on_train_end(self) -> None:
        self.log_image_grid()

    @torch.no_grad()
    def log_image_grid(self) -> None:
        """TensorBoard image: style | contents (top row), style | stylised (bottom row)."""
        if (
            self.grid_images is None
            or len(self.grid_images) == 0
            or not self.trainer.is_global_zero
        ):
            return
        writer = getattr(self.logger, "experiment", None)
        if writer is None or not hasattr(writer, "add_image"):
            return
        contents = self.grid_images.to(self.device)
        was_training = self.net.training
        self.net.eval()
        outs = self.net(contents).float()
        self.net.train(was_training)
        style = self._style_thumbnail(contents.shape[-2:])
        grid = image_grid([[style, *contents], [style, *outs]])
        writer.add_image("val/stylized", grid, self.global_step)

    def _style_thumbnail(self, size: torch.Size) -> torch.Tensor:
        self.criterion  # noqa: B018 - ensures the style image is loaded
        s = self._style
        scale = max(size[0] / s.shape[-2], size[1] / s.shape[-1])
        s = F.interpolate(
            s, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False
        )
        top, left = (s.shape[-2] - size[0]) // 2, (s.shape[-1] - size[1]) // 2
        return s[0, :, top : top + size[0], left : left + size[1]].clamp(0, 1).to(self.device)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.settings.optim
        fused = self.device.type == "cuda"  # fused Adam: one kernel for all parameters
        opt = torch.optim.Adam(
            self.net.parameters(),
            lr=o.lr,
            betas=tuple(o.betas),
            weight_decay=o.weight_decay,
            fused=fused,
        )
        total = (
            int(self.trainer.max_steps)
            if self.trainer.max_steps and self.trainer.max_steps > 0
            else 0
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_lambda(step, o.warmup_steps, total, o.scheduler, o.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def metadata(self) -> dict[str, Any]:
        """The self-description stored in checkpoints and exported models."""
        s = self.settings
        return describe(
            self.net,
            style=s.style.name,
            width=s.model.name,
            training=s.to_dict(),
            global_step=int(self.global_step),
            weights_source=getattr(self._criterion.network, "weights_source", None)
            if self._criterion is not None
            else None,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fast_style"] = self.metadata()
