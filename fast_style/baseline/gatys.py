"""Gatys et al. optimisation: ``fast-style gatys --content C --style S --output O``.

Gatys, Ecker & Bethge 2016, "Image Style Transfer Using Convolutional Neural Networks": the image
itself is optimised against the perceptual loss. The loss is *the* training loss: the criterion
comes from ``fast_style.loss.criterion.style_criterion``, the function training builds its loss
with, so network, taps, normalisation and per-layer terms are the same code, not a copy.

The image saved is the iterate with the lowest loss (normally the last). Besides the image,
``O`` gets a JSON file (``O`` with suffix ``.json``) with the settings, the loss trace (one entry
per iteration: the loss of the image after that many iterations and the optimisation time so
far), the wall time, and which iterate was saved.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from fast_style.core.color import match_color, transfer_luminance
from fast_style.core.device import resolve_device as core_resolve_device
from fast_style.core.device import sync_device
from fast_style.core.imaging import (
    ImageReadError,
    load_rgb,
    pil_to_tensor,
    resize_long_side,
    save_image,
)
from fast_style.core.resources import resolve_data_path
from fast_style.loss import LossNetworkWeightsError, PerceptualLoss, layer_names
from fast_style.loss.config import LossConfig, StyleConfig
from fast_style.loss.criterion import style_criterion
from fast_style.train.config import ConfigError, load_loss, load_style

OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise", "style")
COLOR_MODES = ("luminance", "histogram")
# L-BFGS with unit step and no line search, as in Johnson's neural-style reference code for
# Gatys et al.; Adam's step is in [0, 1] pixel units (0.04 ≈ 10/255 per step).
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.04}
LBFGS_HISTORY = 100
MIN_LEVEL_SIZE = 32  # coarsest side of a multiscale pyramid level (VGG needs a few pixels at relu4)
MAIN_TERMS = ("content", "style", "tv", "total")

# ---------------------------------------------------------------------------------------------
# Configuration: the style's config file (conf/style) and the loss network (conf/loss)
# ---------------------------------------------------------------------------------------------


def parse_layers(spec: str) -> dict[str, float]:
    """``"relu1_2,relu2_2:0.5"`` → ``{"relu1_2": 1.0, "relu2_2": 0.5}``."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, weight = item.partition(":")
        try:
            out[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(
                f"bad layer weight in {item!r} (expected NAME or NAME:WEIGHT)"
            ) from None
    if not out:
        raise ConfigError(f"no layers in {spec!r}")
    return out


# ---------------------------------------------------------------------------------------------
# Progress display
# ---------------------------------------------------------------------------------------------


def scalars(terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Loss terms as plain floats."""
    return {k: float(v.detach()) for k, v in terms.items()}


class Progress:
    """A tqdm bar of iterations on stderr showing the loss terms (hidden when not enabled)."""

    def __init__(self, total: int, desc: str = "gatys", enabled: bool = True, leave: bool = True):
        self.total, self.n = total, 0
        self._bar = tqdm(
            total=total,
            desc=desc,
            file=sys.stderr,
            leave=leave,
            dynamic_ncols=True,
            disable=not enabled,
        )

    def update(self, losses: Mapping[str, float]) -> None:
        self.n += 1
        shown = {k: f"{losses[k]:.4g}" for k in MAIN_TERMS if k in losses}
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


# ---------------------------------------------------------------------------------------------
# The optimisation
# ---------------------------------------------------------------------------------------------


@dataclass
class GatysOptions:
    """How to optimise: optimizer, iterations, step size (None: ``DEFAULT_LR``)."""

    steps: int = 300
    optimizer: str = "lbfgs"
    lr: float | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")

    @property
    def step_size(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr


@dataclass
class GatysResult:
    """The optimised image (1, 3, H, W) in [0, 1] and its loss trace.

    ``trace[k]`` holds the loss terms of the image after ``k`` iterations and ``time_s``, the
    optimisation time spent until then (``trace[0]`` is the initial image). ``image`` is the
    iterate with the lowest total loss, ``trace`` entry ``best_step`` (ties go to the later
    one); with a well-behaved run that is the last iterate, ``final``.
    """

    image: torch.Tensor
    trace: list[dict[str, float]] = field(default_factory=list)
    evaluations: int = 0
    interrupted: bool = False
    best_step: int = 0

    @property
    def wall_time_s(self) -> float:
        return self.trace[-1]["time_s"] if self.trace else 0.0

    @property
    def final(self) -> dict[str, float]:
        """The loss terms of the last iterate."""
        return self.trace[-1]

    @property
    def best(self) -> dict[str, float]:
        """The loss terms of the returned image (the lowest-loss iterate)."""
        return next(e for e in reversed(self.trace) if e["step"] == self.best_step)


def initial_image(
    kind: str, content: torch.Tensor, style: torch.Tensor, seed: int = 0
) -> torch.Tensor:
    """The starting image (1, 3, H, W) in [0, 1]: the content, white noise (Gatys et al.'s
    choice), or the style image resized to the content's size."""
    if kind == "content":
        return content.clone()
    if kind == "noise":
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(content.shape, generator=gen).to(content.device)
    if kind == "style":
        out = F.interpolate(style, size=content.shape[-2:], mode="bicubic", antialias=True)
        return out.clamp(0, 1).to(content.device)
    raise ConfigError(f"unknown init {kind!r}; choose one of {INITS}")


@torch.no_grad()
def measure(
    crit: PerceptualLoss, image: torch.Tensor, content_feats: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """The loss terms of an image (B, 3, H, W) in [0, 1] (no gradient)."""
    return scalars(crit(image, content_feats=content_feats))


def make_optimizer(x: torch.Tensor, options: GatysOptions) -> torch.optim.Optimizer:
    """L-BFGS with unit steps and no line search (one function evaluation per ``step()``, so
    progress and snapshots see every iteration; torch's strong-Wolfe search stalled on this
    objective, docs/evaluation.md), or Adam."""
    if options.optimizer == "lbfgs":
        return torch.optim.LBFGS(
            [x],
            lr=options.step_size,
            max_iter=1,
            history_size=LBFGS_HISTORY,
            tolerance_grad=0.0,
            tolerance_change=0.0,
        )
    return torch.optim.Adam([x], lr=options.step_size)


def optimise(
    crit: PerceptualLoss,
    content: torch.Tensor,
    init: torch.Tensor,
    options: GatysOptions,
    callback: Callable[[int, torch.Tensor, dict[str, float]], None] | None = None,
    progress: Progress | None = None,
) -> GatysResult:
    """Optimise an image against ``crit`` (its style targets already set).

    ``content`` and ``init`` are (1, 3, H, W) in [0, 1] on the criterion's device. The variable
    ``x`` is unconstrained; the image is ``x.clamp(0, 1)`` and the objective is the loss of that
    image, so every trace value is the loss of a picture that can be saved, and L-BFGS sees one
    consistent function (projecting ``x`` in place between iterations made its curvature pairs
    disagree with the steps taken; docs/evaluation.md compares the alternatives).

    Returns the lowest-loss iterate (``GatysResult.best_step``); every iterate's loss is
    computed anyway, so this costs no evaluation. ``callback(k, image, losses)`` runs after
    iteration ``k`` with the image after ``k`` iterations and the loss of the image it started
    from; its time is not counted. Ctrl-C stops early and returns the best image reached
    (``interrupted``).
    """
    content_feats = crit.content_targets(content)
    x = init.detach().clamp(0, 1).contiguous().requires_grad_(True)
    opt = make_optimizer(x, options)
    result = GatysResult(image=x.detach().clamp(0, 1))
    evaluated: dict[str, Any] = {}  # the terms and the image of the last evaluation

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        image = x.clamp(0, 1)  # a new tensor: the optimizer's update of x leaves it as it is
        terms = crit(image, content_feats=content_feats)
        terms["total"].backward()
        evaluated.update(terms=terms, image=image.detach())
        result.evaluations += 1
        return terms["total"]

    best_total, elapsed = float("inf"), 0.0
    try:
        for k in range(1, options.steps + 1):
            started_at = elapsed  # optimisation time spent on the first k - 1 iterations
            elapsed += _timed_step(opt, closure, x.device)
            losses = scalars(evaluated["terms"])  # evaluated at the image after k - 1 steps
            result.trace.append({"step": k - 1, **losses, "time_s": started_at})
            if losses["total"] <= best_total:
                best_total, result.best_step = losses["total"], k - 1
                result.image = evaluated["image"]
            if progress is not None:
                progress.update(losses)
            if callback is not None:
                callback(k, x.detach().clamp(0, 1), losses)
    except KeyboardInterrupt:
        result.interrupted = True
    _finish(result, crit, x.detach().clamp(0, 1), content_feats, elapsed, best_total)
    return result


def _timed_step(opt: torch.optim.Optimizer, closure: Callable, device: torch.device) -> float:
    """One optimizer step; its wall time in seconds (device work included)."""
    sync_device(device)
    t0 = time.perf_counter()
    opt.step(closure)
    sync_device(device)
    return time.perf_counter() - t0


def _finish(
    result: GatysResult,
    crit: PerceptualLoss,
    image: torch.Tensor,
    content_feats: Mapping[str, torch.Tensor],
    elapsed: float,
    best_total: float,
) -> None:
    """Measure the last iterate, append it to the trace and keep it if it is the best."""
    final = measure(crit, image, content_feats)
    result.trace.append({"step": len(result.trace), **final, "time_s": elapsed})
    if final["total"] <= best_total:
        result.best_step, result.image = len(result.trace) - 1, image


# ---------------------------------------------------------------------------------------------
# Coarse to fine, colour preservation, outputs
# ---------------------------------------------------------------------------------------------


def pyramid(long_side: int, levels: int) -> list[int]:
    """Long sides of a coarse-to-fine pyramid ending at ``long_side`` (halving each level)."""
    sizes = [max(MIN_LEVEL_SIZE, round(long_side / 2**k)) for k in reversed(range(levels))]
    return sorted(set(sizes) | {long_side})


def resolve_device(spec: str = "auto") -> torch.device:
    """``fast_style.core.device.resolve_device``, its error as a ``ConfigError``."""
    try:
        return core_resolve_device(spec)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bicubic", antialias=True).clamp(0, 1)


@dataclass
class Stage:
    """One pyramid level: content (1, 3, h, w) and style (1, 3, h', w') in [0, 1], on device."""

    content: torch.Tensor
    style: torch.Tensor


def stages(
    content: Image.Image,
    style: torch.Tensor,
    sizes: Sequence[int],
    preserve: str | None,
    device: torch.device,
) -> Iterator[Stage]:
    """Content and style at each level; the style keeps its ratio to the content's long side.
    ``preserve="histogram"`` recolours the style with the content's colours (Gatys et al. 2016b)."""
    for s in sizes:
        c = pil_to_tensor(resize_long_side(content, s)).unsqueeze(0).to(device)
        st = style.to(device)
        if s != sizes[-1]:
            st = _resize_to(st, [max(1, round(d * s / sizes[-1])) for d in st.shape[-2:]])
        if preserve == "histogram":
            st = match_color(st, c)
        yield Stage(c, st)


def finish(image: torch.Tensor, content: torch.Tensor, preserve: str | None) -> torch.Tensor:
    """The picture to save; ``luminance`` keeps the content's colours (Gatys et al. 2016b)."""
    return transfer_luminance(image, content) if preserve == "luminance" else image


def run(
    crit: PerceptualLoss,
    content: Image.Image,
    style: torch.Tensor,
    sizes: Sequence[int],
    options: GatysOptions,
    init: str = "content",
    seed: int = 0,
    preserve: str | None = None,
    on_step: Callable[[int, torch.Tensor, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, GatysResult]:
    """Gatys at each pyramid level (one level: plain Gatys), each level starting from the last
    one's result upsampled. Returns the picture (colours preserved if asked) and the merged result.

    ``crit`` must already hold the Gram targets of ``style`` (1, 3, H, W) at the finest level.
    ``on_step(k, picture, losses)`` runs after each of the ``len(sizes) * steps`` iterations.
    """
    device = crit.network.layers[0].weight.device
    merged = GatysResult(image=torch.empty(0))
    for level, stage in enumerate(stages(content, style, sizes, preserve, device)):
        if len(sizes) > 1 or preserve == "histogram":
            crit.set_style(stage.style)
        if merged.trace:  # continue from the previous level's result, upsampled
            start = _resize_to(merged.image, stage.content.shape[-2:])
            last = merged.trace.pop()  # re-measured at this level as its step 0
            offset_k, offset_t = last["step"], last["time_s"]
        else:
            start = initial_image(init, stage.content, stage.style, seed)
            offset_k, offset_t = 0, 0.0

        def callback(
            k: int, x: torch.Tensor, losses: dict[str, float], c=stage.content, o=offset_k
        ) -> None:
            if on_step is not None:
                on_step(o + k, finish(x, c, preserve), losses)

        bar = Progress(options.steps, f"gatys {sizes[level]}px", enabled=progress)
        try:
            r = optimise(crit, stage.content, start, options, callback, bar)
        finally:
            bar.close()
        merged.trace += [
            {
                **e,
                "step": offset_k + e["step"],
                "time_s": offset_t + e["time_s"],
                "size": sizes[level],
            }
            for e in r.trace
        ]
        merged.evaluations += r.evaluations
        merged.image, merged.best_step = r.image, offset_k + r.best_step
        if r.interrupted:
            merged.interrupted = True
            break
    return finish(merged.image, stage.content, preserve), merged


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fast-style gatys",
        description="Gatys et al. style transfer by optimising the image, with the training loss.",
    )
    p.add_argument("--content", required=True, help="content image")
    p.add_argument("--style", required=True, help="a style name from conf/style, or an image file")
    p.add_argument("--output", required=True, help="output image (its .json gets the loss trace)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="lbfgs")
    p.add_argument(
        "--steps", type=int, default=300, help="iterations (per level with --multiscale)"
    )
    p.add_argument("--lr", type=float, default=None, help="step size (default: lbfgs 1, adam 0.04)")
    p.add_argument("--init", choices=INITS, default="content", help="starting image")
    p.add_argument("--content-weight", type=float, help="default: the style's")
    p.add_argument("--style-weight", type=float, help="default: the style's")
    p.add_argument("--tv-weight", type=float, help="default: the style's")
    p.add_argument("--content-layers", help="NAME[:WEIGHT],… (default: the style's)")
    p.add_argument("--style-layers", help="NAME[:WEIGHT],… (default: the style's)")
    p.add_argument("--size", type=int, default=512, help="long side of the output (0: as is)")
    p.add_argument(
        "--style-scale",
        type=float,
        default=None,
        help="style long side as a multiple of the output's (default: the style's own size)",
    )
    p.add_argument(
        "--preserve-color",
        nargs="?",
        const="luminance",
        choices=COLOR_MODES,
        default=None,
        help="keep the content's colours: luminance-only transfer (default) or histogram matching",
    )
    p.add_argument(
        "--multiscale",
        nargs="?",
        type=int,
        const=3,
        default=1,
        metavar="LEVELS",
        help="coarse to fine over LEVELS sizes, halving each (default 3 when given)",
    )
    p.add_argument("--save-every", type=int, default=0, metavar="N", help="save every N iterations")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise initialisation")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--network", default="vgg16", help="loss network config in conf/loss")
    p.add_argument("--vgg-weights", help="loss network weights (default: $FAST_STYLE_VGG_WEIGHTS)")
    p.add_argument("--tensorboard", metavar="DIR", help="log losses and images to DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def configure_style(args: argparse.Namespace, network: str) -> StyleConfig:
    """The style's config with the command line's overrides (weights, layers)."""
    style = load_style(args.style)
    changes: dict[str, Any] = {
        k: getattr(args, k)
        for k in ("content_weight", "style_weight", "tv_weight")
        if getattr(args, k) is not None
    }
    for key in ("content_layers", "style_layers"):
        if getattr(args, key):
            changes[key] = parse_layers(getattr(args, key))
    style = dataclasses.replace(style, **changes)
    valid = layer_names(network)
    for tap in [*style.content_layers, *style.style_layers]:
        if tap not in valid:
            raise ConfigError(
                f"{tap!r} is not a {network} layer (e.g. relu1_2, relu2_2, relu3_3, relu4_3)"
            )
    return style


def check_output(path: Path) -> Path:
    """Fail before any work if the output cannot be written; returns the trace's path."""
    if path.suffix.lower() not in Image.registered_extensions() or path.suffix.lower() == ".json":
        raise ConfigError(f"{path}: unknown image format {path.suffix!r} (use .png or .jpg)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_suffix(".json")


def check_args(args: argparse.Namespace) -> None:
    for key, low in (("steps", 1), ("size", 0), ("multiscale", 1), ("save_every", 0)):
        if getattr(args, key) < low:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least {low}")
    if args.style_scale is not None and args.style_scale <= 0:
        raise ConfigError("--style-scale must be positive")


class StepLogger:
    """The per-iteration side outputs: intermediate images and TensorBoard."""

    def __init__(self, output: Path, save_every: int, tensorboard: str | None):
        self.output, self.save_every = output, save_every
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tensorboard)

    def __call__(self, k: int, picture: torch.Tensor, losses: Mapping[str, float]) -> None:
        due = self.save_every > 0 and k % self.save_every == 0
        if due:
            save_image(
                picture, self.output.with_name(f"{self.output.stem}_{k:05d}{self.output.suffix}")
            )
        if self.writer is not None:
            for name, value in losses.items():
                self.writer.add_scalar(
                    f"gatys/{name}" if name in MAIN_TERMS else f"gatys_layers/{name}", value, k - 1
                )
            if due:
                self.writer.add_image("gatys/image", picture[0].cpu(), k)

    def close(self, picture: torch.Tensor, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image("gatys/image", picture[0].cpu(), step)
            self.writer.close()


def run_report(
    args: argparse.Namespace,
    output: Path,
    style: StyleConfig,
    loss: LossConfig,
    crit: PerceptualLoss,
    options: GatysOptions,
    sizes: list[int],
    picture: torch.Tensor,
    result: GatysResult,
) -> dict[str, Any]:
    """What the run's ``.json`` trace file records: settings, timings and the loss trace."""
    device = next(crit.network.parameters()).device
    return {
        "output": str(output),
        "content": str(args.content),
        "style": dataclasses.asdict(style),
        "loss_network": {"network": loss.network, "weights": crit.network.weights_source},
        "optimizer": options.optimizer,
        "lr": options.step_size,
        "steps_per_level": options.steps,
        "sizes": sizes,
        "image_hw": list(picture.shape[-2:]),
        "init": args.init,
        "preserve_color": args.preserve_color,
        "seed": args.seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "iterations": result.final["step"],
        "evaluations": result.evaluations,
        "interrupted": result.interrupted,
        "wall_time_s": result.wall_time_s,
        "final": result.final,
        "saved_step": result.best_step,
        "saved": result.best,
        "trace": result.trace,
    }


def _main(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    check_args(args)
    output = Path(args.output)
    trace_path = check_output(output)
    device = resolve_device(args.device)
    loss = load_loss(args.network, args.vgg_weights)
    style = configure_style(args, loss.network)
    content = load_rgb(resolve_data_path(args.content))  # a file, or a shipped photo's name
    long_side = args.size or max(content.size)
    if args.style_scale is not None:
        style = dataclasses.replace(style, size=max(1, round(args.style_scale * long_side)))
    options = GatysOptions(steps=args.steps, optimizer=args.optimizer, lr=args.lr)
    crit, style_image = style_criterion(style, loss)
    crit.to(device)  # with the Gram targets (buffers)
    sizes = pyramid(long_side, args.multiscale)
    logger = StepLogger(output, args.save_every, args.tensorboard)
    picture, result = run(
        crit,
        content,
        style_image,
        sizes,
        options,
        init=args.init,
        seed=args.seed,
        preserve=args.preserve_color,
        on_step=logger,
        progress=not args.quiet,
    )
    save_image(picture, output)
    logger.close(picture, result.best_step)
    report = run_report(args, output, style, loss, crit, options, sizes, picture, result)
    report["total_time_s"] = time.perf_counter() - t_start
    trace_path.write_text(json.dumps(report, indent=1))
    f = result.best
    terms = ", ".join(f"{k} {f[k]:.4g}" for k in MAIN_TERMS)
    which = "" if f is result.final else f" (iterate {f['step']}, the lowest loss)"
    print(
        f"saved {output}{which} and {trace_path.name}: {result.final['step']} iterations "
        f"in {result.wall_time_s:.1f} s; {terms}"
    )
    if result.interrupted:
        print("interrupted: saved the image reached so far", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad input, one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (ConfigError, ImageReadError, LossNetworkWeightsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
