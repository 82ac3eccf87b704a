"""Evaluate a style network against Gatys et al.: ``fast-style evaluate --model M
--content DIR [--gatys-steps 50,100,300,500] [--out DIR]``.

For each held-out image: the network's content loss, style loss and TV, measured with the loss
the model was trained with (rebuilt from the model's metadata by ``style_criterion``, the
training code), and its time; the same for Gatys et al. after each requested number of L-BFGS
iterations, started from the content image, and the Gatys times. Writes to ``--out``:

* ``results.json``: settings, per-image values and traces, means across images;
* ``results.md``: the means as a Markdown table;
* ``objective.png``: the Gatys objective against iterations with the network's level as a
  horizontal line (after Johnson et al. 2016, Figure 5);
* ``grid.png``: content | network | Gatys-100 | Gatys-500 for a few images;
* ``images/``: every output picture.

``--judge`` adds content and style distances measured by a second ImageNet network, so that a
model is not graded only by the network it was trained against.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.models import vgg as tv_vgg

from fast_style.baseline.gatys import (
    MAIN_TERMS,
    GatysOptions,
    Progress,
    measure,
    optimise,
    resolve_device,
)
from fast_style.core.device import sync_device
from fast_style.core.imaging import ImageReadError, image_grid, list_images, load_tensor, save_image
from fast_style.core.model_io import ModelFileError, load_model, resolve_model
from fast_style.core.network import TransformerNet
from fast_style.core.resources import model_dirs, resolve_data_path
from fast_style.loss import LossNetworkWeightsError, LossWeights, PerceptualLoss, VGGFeatures
from fast_style.loss.config import LossConfig, StyleConfig
from fast_style.loss.criterion import style_criterion
from fast_style.loss.vgg import fetch_torchvision_weights
from fast_style.train.config import ConfigError, _section

GRID_STEP = 100  # the grid: content | network | Gatys-100 | Gatys-<most steps, e.g. 500>
# The judge measures the way Gatys et al. 2016 (§2–3) did: content at relu4_2, style at
# relu1_1 … relu5_1 with equal weights. These layers exist in VGG16 and VGG19 alike.
JUDGE_CONTENT = {"relu4_2": 1.0}
JUDGE_STYLE = {f"relu{i}_1": 0.2 for i in range(1, 6)}
TORCHVISION_JUDGES = {
    "vgg16": tv_vgg.VGG16_Weights.IMAGENET1K_V1,
    "vgg19": tv_vgg.VGG19_Weights.IMAGENET1K_V1,
}

# ---------------------------------------------------------------------------------------------
# The loss the model was trained with, and the judge
# ---------------------------------------------------------------------------------------------


def training_configs(
    meta: Mapping[str, Any], vgg_weights: str | None
) -> tuple[StyleConfig, LossConfig]:
    """The style and loss configs stored in a model's metadata (``training``), validated as in
    training. ``vgg_weights`` overrides the weights file; a stored path that does not exist
    here falls back to ``$FAST_STYLE_VGG_WEIGHTS`` or torchvision's weights."""
    training = meta.get("training") or {}
    if "style" not in training or "loss" not in training:
        raise ConfigError(
            "the model's metadata holds no training settings; cannot rebuild its loss"
        )
    style = _section(StyleConfig, training["style"], "style")
    loss = _section(LossConfig, training["loss"], "loss")
    stored = resolve_data_path(loss.weights) if loss.weights else None
    found = str(stored) if stored is not None and stored.is_file() else None
    return style, dataclasses.replace(loss, weights=vgg_weights or found)


def judge_weights_file(network: str) -> str:
    """torchvision's ImageNet weights for ``network`` as a file in torch's hub cache (fetched on
    first use); raises ``ConfigError`` when they cannot be had (offline)."""
    if network not in TORCHVISION_JUDGES:
        raise ConfigError(f"no judge network available: unknown network {network!r}")
    path = Path(torch.hub.get_dir(), "checkpoints", Path(TORCHVISION_JUDGES[network].url).name)
    if not path.is_file():
        try:
            fetch_torchvision_weights(network)
        except LossNetworkWeightsError as e:
            raise ConfigError(
                f"no judge network available: {e.args[0].split(' Offline?')[0]} "
                f"Pass --judge-weights FILE (a {network} state_dict) to use --judge offline."
            ) from None
    return str(path)


def _same_file(a: str, b: str) -> bool:
    return a == b != "random" or (Path(a).is_file() and Path(b).is_file() and Path(a).samefile(b))


def build_judge(network: str, weights: str | None, loss_net: VGGFeatures) -> PerceptualLoss:
    """A second ImageNet network with Gatys et al.'s layers (unit weights, no TV).

    ``weights``: a state_dict file, ``"random"`` (tests only), or None for torchvision's."""
    path = weights or judge_weights_file(network)
    taps = set(JUDGE_CONTENT) | set(JUDGE_STYLE)
    try:
        net = VGGFeatures(taps, arch=network, weights=path)
    except (LossNetworkWeightsError, ValueError) as e:
        raise ConfigError(f"no judge network available: {e}") from None
    if network == loss_net.arch and _same_file(net.weights_source, loss_net.weights_source):
        raise ConfigError(
            "the judge is the loss network itself; pick another --judge-network/-weights"
        )
    w = LossWeights(1.0, 1.0, 0.0, dict(JUDGE_CONTENT), dict(JUDGE_STYLE))
    return PerceptualLoss(net, w)


# ---------------------------------------------------------------------------------------------
# Per image
# ---------------------------------------------------------------------------------------------


def judge_terms(
    judge: PerceptualLoss | None, image: torch.Tensor, feats: Mapping
) -> dict[str, float]:
    """The judge's content and style distances of ``image`` (1, 3, H, W) in [0, 1], if any."""
    if judge is None:
        return {}
    j = measure(judge, image, feats)
    return {"judge_content": j["content"], "judge_style": j["style"]}


@torch.no_grad()
def run_network(
    net: TransformerNet, content: torch.Tensor, repeats: int = 3
) -> tuple[torch.Tensor, float]:
    """Stylise (1, 3, H, W) in [0, 1]; returns the output and the median seconds of ``repeats``
    runs (robust to a busy machine; the network is cheap next to Gatys)."""
    times = []
    for _ in range(repeats):
        sync_device(content.device)
        t0 = time.perf_counter()
        out = net(content)
        sync_device(content.device)
        times.append(time.perf_counter() - t0)
    return out.clamp(0, 1), sorted(times)[len(times) // 2]


@dataclass
class ImageResult:
    """One image's values: ``methods[name]`` = loss terms and ``time_s``; the Gatys trace."""

    name: str
    hw: list[int]
    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    trace: list[float] = field(default_factory=list)
    pictures: dict[str, torch.Tensor] = field(default_factory=dict)


def gatys_name(steps: int) -> str:
    return f"Gatys-{steps}"


def evaluate_image(
    path: Path,
    size: int,
    net: TransformerNet,
    crit: PerceptualLoss,
    judge: PerceptualLoss | None,
    options: GatysOptions,
    steps: Sequence[int],
    progress: bool = True,
) -> ImageResult:
    """The network, then Gatys from the content image for ``options.steps`` iterations."""
    device = next(net.parameters()).device
    content = load_tensor(path, long_side=size).to(device)
    feats = crit.content_targets(content)
    judge_feats = judge.content_targets(content) if judge is not None else {}
    res = ImageResult(path.stem, list(content.shape[-2:]))
    out, seconds = run_network(net, content)
    terms = {k: v for k, v in measure(crit, out, feats).items() if k in MAIN_TERMS}
    res.methods["network"] = {**terms, **judge_terms(judge, out, judge_feats), "time_s": seconds}
    res.pictures = {"content": content[0].cpu(), "network": out[0].cpu()}

    def snapshot(k: int, x: torch.Tensor, _losses: Mapping[str, float]) -> None:
        if k in steps:
            res.pictures[gatys_name(k)] = x[0].cpu()

    bar = Progress(options.steps, f"gatys {path.stem}", enabled=progress, leave=False)
    try:
        g = optimise(crit, content, content, options, snapshot, bar)
    finally:
        bar.close()
    if g.interrupted:
        raise KeyboardInterrupt
    res.trace = [e["total"] for e in g.trace]
    for k in steps:
        entry = g.trace[k]  # the loss of the image after k iterations, by the same ``measure``
        pic = res.pictures[gatys_name(k)][None].to(device)
        res.methods[gatys_name(k)] = {
            **{t: entry[t] for t in MAIN_TERMS},
            **judge_terms(judge, pic, judge_feats),
            "time_s": entry["time_s"],
        }
    return res


# ---------------------------------------------------------------------------------------------
# Aggregates, table and pictures
# ---------------------------------------------------------------------------------------------


def means(results: Sequence[ImageResult]) -> dict[str, dict[str, float]]:
    """Mean of every value of every method across images."""
    out: dict[str, dict[str, float]] = {}
    for method in results[0].methods:
        keys = results[0].methods[method]
        out[method] = {k: sum(r.methods[method][k] for r in results) / len(results) for k in keys}
    return out


def markdown_table(mean: Mapping[str, Mapping[str, float]], caption: str) -> str:
    """The means as a Markdown table: one row per method."""
    judge = "judge_content" in mean["network"]
    head = ["method", "content", "style", "TV", "total", "time (s)", "× network time"]
    head += ["judge content", "judge style"] if judge else []
    lines = [caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    t_net = mean["network"]["time_s"]
    for method, m in mean.items():
        row = [method, *(f"{m[k]:.4g}" for k in MAIN_TERMS), f"{m['time_s']:.3g}"]
        row.append(f"{m['time_s'] / t_net:.0f}" if t_net > 0 else "–")
        row += [f"{m['judge_content']:.4g}", f"{m['judge_style']:.4g}"] if judge else []
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or a ``ConfigError`` naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "matplotlib is needed for the evaluation figures: pip install 'fast_style[eval]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_objective(
    results: Sequence[ImageResult],
    mean: Mapping[str, Mapping[str, float]],
    steps: Sequence[int],
    optimizer: str,
    path: Path,
) -> Path:
    """Gatys objective against iterations (each image thin, mean bold), the network's mean as a
    horizontal line: Johnson et al. 2016, Figure 5."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    n = min(len(r.trace) for r in results)
    for r in results:
        ax.plot(range(n), r.trace[:n], color="0.75", lw=0.8)
    avg = [sum(r.trace[i] for r in results) / len(results) for i in range(n)]
    ax.plot(range(n), avg, color="C0", lw=2, label=f"Gatys et al. ({optimizer}), mean")
    ax.scatter(steps, [avg[s] for s in steps if s < n], color="C0", zorder=3, s=14)
    ax.axhline(mean["network"]["total"], color="C3", ls="--", lw=1.5, label="network, mean")
    ax.set_yscale("log")
    ax.set_xlabel(f"{optimizer} iterations")
    ax.set_ylabel("total loss (training objective)")
    h, w = results[0].hw
    ax.set_title(f"{len(results)} images, long side {max(h, w)} px")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _cell(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Centre (3, h', w') on a white (3, h, w) canvas (h' ≤ h, w' ≤ w)."""
    dh, dw = h - img.shape[-2], w - img.shape[-1]
    return F.pad(img, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=1.0)


def grid_columns(steps: Sequence[int]) -> list[str]:
    """content | network | Gatys-100 (if requested) | Gatys-<largest requested step>."""
    shown = sorted({s for s in steps if s == GRID_STEP} | {max(steps)})
    return ["content", "network", *map(gatys_name, shown)]


def save_grid(results: Sequence[ImageResult], columns: Sequence[str], path: Path) -> Path:
    """One row per image, the pictures of ``columns`` side by side."""
    h = max(r.hw[0] for r in results)
    w = max(r.hw[1] for r in results)
    rows = [[_cell(r.pictures[c], h, w) for c in columns] for r in results]
    return save_image(image_grid(rows), path)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_steps(text: str) -> list[int]:
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not steps or steps[0] < 1:
        raise argparse.ArgumentTypeError(f"steps must be positive integers, got {text!r}")
    return steps


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fast-style evaluate",
        description="Compare a style network with Gatys et al. on held-out images.",
    )
    p.add_argument("--model", required=True, help="model file, or a style name in checkpoints/")
    p.add_argument("--content", required=True, help="folder (or file) of held-out images")
    p.add_argument(
        "--gatys-steps", type=parse_steps, default=[50, 100, 300, 500], help="e.g. 50,100,300"
    )
    p.add_argument("--out", default=None, help="output folder (default: outputs/eval/<model>)")
    p.add_argument("--size", type=int, default=512, help="long side of the content images")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N images only (0: all)")
    p.add_argument("--grid-images", type=int, default=3, help="rows of grid.png")
    p.add_argument(
        "--optimizer", choices=("lbfgs", "adam"), default="lbfgs", help="Gatys' optimizer"
    )
    p.add_argument("--vgg-weights", help="loss network weights (default: the model's, or the env)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--judge", action="store_true", help="add distances by a second ImageNet network"
    )
    p.add_argument("--judge-network", default="vgg19", choices=sorted(TORCHVISION_JUDGES))
    p.add_argument("--judge-weights", help="judge weights file (default: torchvision's download)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _images(args: argparse.Namespace) -> list[Path]:
    try:
        images = list_images(resolve_data_path(args.content))
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    if args.limit > 0:
        images = images[: args.limit]
    if not images:
        raise ConfigError(f"no images in {args.content}")
    return images


def write_outputs(out: Path, results: list[ImageResult], settings: dict[str, Any]) -> dict:
    """results.json, results.md, objective.png, grid.png and images/; returns the means."""
    mean = means(results)
    steps = settings["gatys_steps"]
    payload = {
        "settings": settings,
        "mean": mean,
        "per_image": [
            {"image": r.name, "hw": r.hw, **r.methods, "gatys_trace": r.trace} for r in results
        ],
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    caption = (
        f"Means over {len(results)} images of `{settings['content']}` at long side "
        f"{settings['size']} px; model `{Path(settings['model']).name}`; losses measured with "
        f"the training loss ({settings['loss_network']['network']}); times on {settings['device']}"
        f"{'; judge ' + settings['judge'] if settings['judge'] else ''}."
    )
    (out / "results.md").write_text(markdown_table(mean, caption))
    plot_objective(results, mean, steps, settings["gatys_optimizer"], out / "objective.png")
    columns = grid_columns(steps)
    save_grid(results[: settings["grid_images"]], columns, out / "grid.png")
    for r in results:
        for name, pic in r.pictures.items():
            if name != "content":
                save_image(pic, out / "images" / f"{r.name}_{name.lower()}.png")
    return mean


def _main(args: argparse.Namespace) -> int:
    if args.size < 8 or args.grid_images < 1:
        raise ConfigError("--size must be at least 8 and --grid-images at least 1")
    _pyplot()  # fail now, not after the work, if matplotlib is missing
    images = _images(args)
    device = resolve_device(args.device)
    model_path = resolve_model(args.model, model_dirs())
    net, meta = load_model(model_path, device)
    style, loss = training_configs(meta, args.vgg_weights)
    crit, style_image = style_criterion(style, loss)
    crit.to(device)
    judge = None
    if args.judge:
        judge = build_judge(args.judge_network, args.judge_weights, crit.network).to(device)
        judge.set_style(style_image.to(device))
    out = Path(args.out or Path("outputs", "eval", model_path.stem))
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "model": str(model_path),
        "content": str(args.content),
        "size": args.size,
        "gatys_steps": args.gatys_steps,
        "gatys_optimizer": args.optimizer,
        "gatys_init": "content",
        "style": style.name,
        "style_size": style.size,
        "loss_network": {"network": crit.network.arch, "weights": crit.network.weights_source},
        "judge": f"{judge.network.arch}: {judge.network.weights_source}" if judge else None,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "grid_images": args.grid_images,
    }
    with torch.no_grad():  # one untimed run: first-call overheads are not the network's time
        net(load_tensor(images[0], long_side=args.size).to(device))
    options = GatysOptions(max(args.gatys_steps), args.optimizer)
    results: list[ImageResult] = []
    for i, path in enumerate(images, 1):
        try:
            r = evaluate_image(
                path, args.size, net, crit, judge, options, args.gatys_steps, not args.quiet
            )
        except KeyboardInterrupt:
            break
        results.append(r)
        if not args.quiet:
            print(f"[{i}/{len(images)}] {path.name}: {_summary(r)}", file=sys.stderr)
    if not results:
        print("interrupted before the first image finished; nothing written", file=sys.stderr)
        return 130
    settings["images"] = [r.name for r in results]
    write_outputs(out, results, settings)
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.json, results.md, objective.png, grid.png and images/")
    if len(results) < len(images):
        print(f"interrupted: the results cover the first {len(results)} images", file=sys.stderr)
        return 130
    return 0


def _summary(r: ImageResult) -> str:
    return ", ".join(f"{m} {v['total']:.4g} ({v['time_s']:.3g} s)" for m, v in r.methods.items())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad input, one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (ConfigError, ImageReadError, LossNetworkWeightsError, ModelFileError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
