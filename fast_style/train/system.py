"""The Lightning system: trains a ``TransformerNet`` against the perceptual loss.

Several styles (``styles=[…]``) train either as separate single-style networks (``net`` and
``extra_nets``, one file each) or, with a conditional model (``model=multi``, or
``train.add_styles``), as one network with per-style γ/β (``fast_style.train.multi``, one
file). Either way each step covers every style of the run over one shared content pass.

The model (``TransformerNet``, an ``nn.Module``) stays apart from this system. The frozen loss
network is deliberately *not* a registered submodule: it never enters checkpoints (they hold
only the transform net, optimizer and schedule) and DDP never wraps it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from fast_style.core.imaging import cover_crop, image_grid
from fast_style.core.model_io import ModelFileError, describe, load_model
from fast_style.core.network import TransformerNet, upgrade_state_dict
from fast_style.core.resources import resolve_data_path, shipped_models_dir
from fast_style.loss import PerceptualLoss
from fast_style.loss.criterion import style_criterion, style_loss_weights
from fast_style.loss.temporal import warp_consistency, warped_frame
from fast_style.loss.vgg import VGGFeatures
from fast_style.train.config import TrainSettings
from fast_style.train.distill import distill_terms
from fast_style.train.multi import (
    Base,
    base_entries,
    build_conditional,
    painting_of,
    style_entry_of,
    style_rows,
    with_base_model,
)


def build_criterion(settings: TrainSettings) -> tuple[PerceptualLoss, torch.Tensor]:
    """The training criterion: ``style_criterion`` of the run's style and loss configs."""
    return style_criterion(settings.style, settings.loss)


def build_criteria(settings: TrainSettings) -> tuple[list[PerceptualLoss], list[torch.Tensor]]:
    """One criterion per style of the run, all over one shared loss network (built once, with
    the union of the taps), and the style images (1, 3, H, W) in [0, 1]."""
    taps = set().union(*(style_loss_weights(s).taps for s in settings.styles))
    if settings.distill.teacher:
        taps |= set(settings.distill.feature_layers)
    network = VGGFeatures(taps, arch=settings.loss.network, weights=settings.loss.weights)
    pairs = [style_criterion(s, settings.loss, network) for s in settings.styles]
    return [c for c, _ in pairs], [image for _, image in pairs]


def lr_lambda(step: int, warmup: int, total: int, kind: str, floor: float) -> float:
    """Base-lr multiplier at ``step``: linear warmup, then constant or cosine down to ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def resolve_init_dir(spec: str) -> Path:
    """``train.init_dir`` for separate networks: a folder of ``<style>.safetensors``. The name
    ``checkpoints``, where the working directory has no such folder (an installed package), is
    the shipped models' folder (``experiment=video_finetune``'s default)."""
    path = resolve_data_path(spec)
    if not path.is_dir() and Path(spec) == Path("checkpoints"):
        return shipped_models_dir()
    return path


def lineage(meta: dict[str, Any]) -> dict[str, Any]:
    """What a fine-tuned model keeps of the model it started from: its steps, settings and,
    recursively, its own origin."""
    keep = ("style", "global_step", "created", "training", "fine_tuned_from")
    return {k: meta[k] for k in keep if k in meta}


class StyleTransferSystem(pl.LightningModule):
    """Lightning wrapper: losses, logging, image grids, optimizer/schedule, checkpoint metadata.

    Trains one ``TransformerNet`` per style of the run (``settings.styles``): ``net`` for the
    first, ``extra_nets`` for the others. All styles share each batch's content features and
    one loss-network pass over their outputs, concatenated into one batch. Their parameters are
    disjoint, so one Adam over all of them is exactly one Adam per network.
    """

    def __init__(self, settings: TrainSettings, grid_images: torch.Tensor | None = None):
        super().__init__()
        settings = with_base_model(settings)  # adding styles: the init file's network
        self.settings = settings
        self.save_hyperparameters({"config": settings.to_dict()})
        # Each style's settings as plain data, once: a save (every checkpoint, and the one on
        # Ctrl-C) then runs no OmegaConf code, which a signal could interrupt half-way.
        # A conditional network's file holds the whole run's settings (the last entry).
        self._training = [settings.for_style(k).to_dict() for k in range(len(settings.styles))]
        self._training.append(settings.to_dict())
        m = settings.model
        self._init_meta: dict[str, dict[str, Any]] = {}
        # Conditional: the γ/β rows of settings.styles in the one network, and its origin.
        self.rows: list[int] = []
        self.base: Base | None = None
        if settings.conditional:
            self.net, self.base, self.rows = build_conditional(settings)
            self.extra_nets = nn.ModuleList()
        else:
            self.net = m.network()
            self.extra_nets = nn.ModuleList(m.network() for _ in settings.styles[1:])
            if settings.train.init_dir:
                self._init_from(resolve_init_dir(settings.train.init_dir))
        # Kept in __dict__, not registered as submodules (see the module docstring).
        self.__dict__["_criteria"] = None
        self.__dict__["_styles"] = None
        self.grid_images = grid_images
        # The teacher of a distilled network (its file and lineage), for the metadata.
        self.distilled_from: dict[str, Any] | None = None

    def _init_from(self, folder: Path) -> None:
        """Copy each style's weights from ``folder/<style>.safetensors`` (or ``.ckpt``)."""
        for style, net in zip(self.settings.styles, self.nets, strict=True):
            path = folder / f"{style.name}.safetensors"
            if not path.is_file():
                path = path.with_suffix(".ckpt")
            source, meta = load_model(path)  # ModelFileError names the file if it is wrong
            if source.config != net.config:
                raise ModelFileError(
                    f"{path}: its network ({source.config}) is not model="
                    f"{self.settings.model.name} ({net.config})"
                )
            net.load_state_dict(source.state_dict())
            self._init_meta[style.name] = {"file": path.name, **lineage(meta)}

    @property
    def nets(self) -> list[TransformerNet]:
        """The transform networks, in the order of ``settings.styles``."""
        return [self.net, *self.extra_nets]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def criteria(self) -> list[PerceptualLoss]:
        """The frozen loss network with each style's targets, built on first use, here."""
        if self._criteria is None:
            self.__dict__["_criteria"], self.__dict__["_styles"] = build_criteria(self.settings)
        network = self._criteria[0].network
        if network.layers[0].weight.device != self.device:
            for crit in self._criteria:  # the shared network moves once; buffers per style
                crit.to(self.device)
        return self._criteria

    @property
    def criterion(self) -> PerceptualLoss:
        """The first style's criterion."""
        return self.criteria[0]

    @property
    def _criterion(self) -> PerceptualLoss | None:
        return None if self._criteria is None else self._criteria[0]

    def on_fit_start(self) -> None:
        network = self.criterion.network  # build before the first step, not inside it
        t = self.settings.train
        if t.channels_last:
            for net in self.nets:
                net.to(memory_format=torch.channels_last)
            network.to(memory_format=torch.channels_last)
        if t.compile:
            # In place (nn.Module.compile): state_dict keys stay those of the plain modules.
            # dynamic=False: validation's other batch shapes get their own static graphs
            # instead of turning the training graph into a slower dynamic-shape one.
            for net in self.nets:
                net.compile(dynamic=False)
            network.compile(dynamic=False)

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        if self.settings.train.channels_last:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch

    def stylize_all(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Each style's output (B, 3, H, W) in [0, 1] for a content batch, in style order.

        Conditional: one pass of the batch repeated once per style (K·B images, one-hot style
        rows), so the shared convolutions see every style in every step."""
        if not self.settings.conditional:
            return [net(batch) for net in self.nets]
        b, k = batch.shape[0], len(self.rows)
        style = style_rows(self.rows, self.net.num_styles, b, batch)
        out = self.net(batch.repeat(k, 1, 1, 1), style)
        return list(out.chunk(k))

    def compute_terms(
        self, batch: torch.Tensor, temporal: bool = False
    ) -> list[dict[str, torch.Tensor]]:
        """Loss terms of every style on a content batch (B, 3, H, W) in [0, 1]; with
        ``temporal`` (training) and ``loss.temporal.weight`` > 0, the temporal term as well
        (``add_temporal``), included in each style's ``total``."""
        crits = self.criteria
        batch, target = batch if isinstance(batch, tuple | list) else (batch, None)
        batch = self._prepare(batch)
        content_taps = tuple(sorted(set().union(*(c.weights.content_layers for c in crits))))
        with torch.no_grad():
            content_feats = crits[0].network(batch, taps=content_taps)
        outputs = self.stylize_all(batch)
        if len(outputs) == 1:
            feats = crits[0].network(outputs[0])
            all_terms = [crits[0].terms(feats, content_feats, outputs[0])]
            if target is not None:  # distillation (distill.teacher): one network
                self.add_distill(outputs[0], target, feats, all_terms[0])
        else:
            # One loss-network pass for all styles: a K times larger batch keeps the GPU busier.
            feats_all = crits[0].network(torch.cat(outputs))
            chunks = {tap: f.chunk(len(outputs)) for tap, f in feats_all.items()}
            all_terms = [
                crit.terms({tap: c[k] for tap, c in chunks.items()}, content_feats, out)
                for k, (crit, out) in enumerate(zip(crits, outputs, strict=True))
            ]
        if temporal and self.settings.loss.temporal.weight > 0:
            self.add_temporal(batch, outputs, all_terms)
        return all_terms

    def add_distill(
        self,
        output: torch.Tensor,
        target: torch.Tensor,
        feats: dict[str, torch.Tensor],
        terms: dict[str, torch.Tensor],
    ) -> None:
        """Add the distillation terms (``fast_style.train.distill.distill_terms``) of ``output``
        against the teacher's ``target`` to ``terms``; ``total`` += ``distill``."""
        extra = distill_terms(
            output, self._prepare(target), feats, self.criteria[0].network, self.settings.distill
        )
        terms.update(extra)
        terms["total"] = terms["total"] + extra["distill"]

    def add_temporal(
        self,
        batch: torch.Tensor,
        outputs: list[torch.Tensor],
        all_terms: list[dict[str, torch.Tensor]],
    ) -> None:
        """Add the flow-free temporal regulariser of Wang, Wang, Zhong and Wang (AAAI 2020,
        "Consistent Video Style Transfer via Compound Regularization") to each style's terms:
        ``temporal`` = weight · ‖S(W(x) + n) − W(S(x))‖² over the warp's valid pixels (and the
        unweighted ``temporal/mse``), ``total`` += ``temporal``. One random warp W per image of
        the batch, shared by the styles; the cost is one more transform-network pass (a
        conditional network: on the warped batch with the same style rows), no loss-network
        pass. Not detached: the gradient flows through both S(W(x) + n) and S(x)."""
        cfg = self.settings.loss.temporal
        second, grid, inside = warped_frame(batch, cfg)
        seconds = self.stylize_all(self._prepare(second))
        for terms, out, sec in zip(all_terms, outputs, seconds, strict=True):
            mse = warp_consistency(sec, out, grid, inside)
            terms["temporal/mse"] = mse
            terms["temporal"] = cfg.weight * mse
            terms["total"] = terms["total"] + terms["temporal"]

    def _log_terms(
        self, prefix: str, terms: dict[str, torch.Tensor], on_step: bool, bar: bool = True
    ) -> None:
        optional = tuple(k for k in ("temporal", "distill") if k in terms)
        keys = ("content", "style", "tv", *optional, "total")
        main = {f"{prefix}/{k}": terms[k] for k in keys}
        self.log_dict(
            main,
            on_step=on_step,
            on_epoch=not on_step,
            prog_bar=on_step and bar,
            sync_dist=not on_step,
        )
        layers = {f"{prefix}_layers/{k}": v for k, v in terms.items() if "/" in k}
        self.log_dict(layers, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)

    def _log_all(self, stage: str, all_terms: list[dict[str, torch.Tensor]], on_step: bool) -> None:
        """``<stage>/{content,style,tv,total}`` for one single-style network, else per style
        (``<stage>/<style>/…``) and ``<stage>/total``: the mean over styles, comparable with a
        one-style run's (the loss minimised is their sum, see ``training_step``). With the
        temporal regulariser (training only) also ``<stage>[/<style>]/temporal``, its weighted
        term, included in ``total`` (so ``train/total`` then exceeds a ``val/total`` that has
        no temporal term), and, for several styles, ``<stage>/temporal``, their mean."""
        if len(all_terms) == 1 and not self.settings.conditional:
            self._log_terms(stage, all_terms[0], on_step)
            return
        for style, terms in zip(self.settings.styles, all_terms, strict=True):
            self._log_terms(f"{stage}/{style.name}", terms, on_step=on_step, bar=False)
        total = torch.stack([t["total"] for t in all_terms]).mean()
        self.log(f"{stage}/total", total, on_step=on_step, on_epoch=not on_step, prog_bar=on_step)
        if "temporal" in all_terms[0]:
            temporal = torch.stack([t["temporal"] for t in all_terms]).mean()
            self.log(f"{stage}/temporal", temporal, on_step=on_step, on_epoch=not on_step)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        all_terms = self.compute_terms(batch, temporal=True)
        self._log_all("train", all_terms, on_step=True)
        # A sum: each separate network's, and each conditional style's γ/β rows', gradient is
        # that of its own style's loss alone; the shared convolutions get the sum. The mean
        # would only scale all gradients by 1/K, which Adam's normalisation undoes (up to ε).
        return torch.stack([t["total"] for t in all_terms]).sum()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._log_all("val", self.compute_terms(batch), on_step=False)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.settings.train.image_every_n_steps
        if every > 0 and (self.global_step % every == 0 or self.global_step == 1):
            self.log_image_grid()

    def on_train_end(self) -> None:
        self.log_image_grid()

    @torch.no_grad()
    def log_image_grid(self) -> None:
        """TensorBoard image: style | contents (top row), then style | stylised for each style."""
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
        self.criteria  # noqa: B018 - ensures the style images are loaded
        size = contents.shape[-2:]
        # Top row: the contents (after style 0's thumbnail; a blank tile for a conditional
        # net), then one row per style: its thumbnail and its outputs.
        corner = torch.ones_like(contents[0]) if self.settings.conditional else None
        rows = [[corner if corner is not None else self._style_thumbnail(0, size), *contents]]
        was_training = self.training
        self.eval()
        outputs = self.stylize_all(self._prepare(contents))
        self.train(was_training)
        for k, outs in enumerate(outputs):
            rows.append([self._style_thumbnail(k, size), *outs.float()])
        writer.add_image("val/stylized", image_grid(rows), self.global_step)

    def _style_thumbnail(self, index: int, size: torch.Size) -> torch.Tensor:
        return cover_crop(self._styles[index], tuple(size))[0].clamp(0, 1).to(self.device)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.settings.optim
        fused = self.device.type == "cuda"  # fused Adam: one kernel for all parameters
        opt = torch.optim.Adam(
            # Adding styles: only the γ/β tensors; their frozen rows get zero gradients.
            [p for p in self.parameters() if p.requires_grad],
            lr=o.lr,
            betas=tuple(o.betas),
            weight_decay=o.weight_decay,
            fused=fused,
        )
        # The total is read at every step: a time budget (fast_style.train.TimeBudget) may
        # shorten the run once the step time is known, and the cosine then ends with it.
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda step: lr_lambda(
                step, o.warmup_steps, self._total_steps(), o.scheduler, o.min_lr_ratio
            ),
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _total_steps(self) -> int:
        steps = self.trainer.max_steps
        return int(steps) if steps and steps > 0 else 0

    def _weights_source(self) -> str | None:
        crit = self._criterion
        return None if crit is None else getattr(crit.network, "weights_source", None)

    def metadata(self, index: int = 0) -> dict[str, Any]:
        """The self-description of style ``index``'s network (checkpoints, exported models);
        a conditional network's, with every style's entry, for any ``index``."""
        if self.settings.conditional:
            return self._conditional_metadata()
        style = self.settings.styles[index]
        return describe(
            self.nets[index],
            style=style.name,
            width=self.settings.model.name,
            training=self._training[index],
            painting=painting_of(style),
            global_step=int(self.global_step),
            weights_source=self._weights_source(),
            **(
                {"fine_tuned_from": self._init_meta[style.name]}
                if style.name in self._init_meta
                else {}
            ),
            **({"distilled_from": self.distilled_from} if self.distilled_from else {}),
        )

    def _conditional_metadata(self) -> dict[str, Any]:
        """Shared settings, then one entry per γ/β row: the base file's styles as it stored
        them (frozen when adding styles), this run's with what trained them."""
        s, step, base = self.settings, int(self.global_step), self.base
        adding = bool(s.train.add_styles) and base is not None
        run: dict[str, Any] = {
            "steps": step,
            "mode": "added" if adding else "joint",  # added: γ/β only, convolutions frozen
            "batch_size": s.data.batch_size,
            "image_size": s.data.image_size,
            "lr": s.optim.lr,
        }
        if s.loss.temporal.weight > 0:  # the rest of loss.temporal is in ``training``
            run["temporal_weight"] = s.loss.temporal.weight
        if adding and base is not None:
            run["added_to"] = {"file": base.path.name, **lineage(base.meta)}
        old = base_entries(base) if adding and base is not None else []
        entries = old + [style_entry_of(style, dict(run)) for style in s.styles]
        extra = {"fine_tuned_from": lineage(base.meta)} if base is not None else {}
        return describe(
            self.net,
            style=entries[0]["name"],
            width=s.model.name,
            training=self._training[-1],
            styles=entries,
            global_step=step,
            weights_source=self._weights_source(),
            **extra,
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rename a pre-upgrade checkpoint's positional parameter keys (format version 1) to
        today's, before Lightning's strict ``load_state_dict`` (resume with ``ckpt_path=``,
        ``load_from_checkpoint``). Parameter order is unchanged, so optimizer states fit."""
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            for prefix in ["net.", *(f"extra_nets.{i}." for i in range(len(self.extra_nets)))]:
                state = upgrade_state_dict(state, prefix)
            checkpoint["state_dict"] = state

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fast_style"] = self.metadata()
        if len(self.nets) > 1:
            checkpoint["fast_style_styles"] = [self.metadata(k) for k in range(len(self.nets))]
