"""Make the README's figures.

    python scripts/readme_figures.py --run RUN_DIR --model MODEL --out docs/images \
        --photos ../shared/data/eval/kodak24/kodim05.jpg ../shared/data/eval/kodak24/kodim23.jpg
    python scripts/readme_figures.py --gallery checkpoints --size 256 \
        --photos ../shared/data/eval/kodak24/kodim{05,15,20,23}.jpg

Writes ``loss_curves.png`` (train and validation losses read back from the run's TensorBoard
events) and ``before_after.jpg`` (painting | photo | stylised, for photos the model never saw);
with ``--gallery DIR``, ``gallery.jpg``: a grid of the photos (rows) × every model in DIR
(columns, headed by its painting). Use Kodak photos and public-domain paintings only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fast_style.core.imaging import cover_crop, image_grid, load_tensor, save_image
from fast_style.core.model_io import load_model
from fast_style.core.resources import resolve_data_path

TERMS = ("total", "content", "style", "tv")


def read_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def smooth(values: list[float], k: int) -> list[float]:
    """Trailing moving average over ``k`` points."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - k] if i >= k else 0.0)
        out.append(acc / min(i + 1, k))
    return out


def plot_losses(scalars: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TERMS), figsize=(4 * len(TERMS), 3.2))
    for ax, term in zip(axes, TERMS, strict=True):
        if f"train/{term}" in scalars:
            steps, vals = zip(*scalars[f"train/{term}"], strict=True)
            ax.plot(steps, vals, color="#bbb", lw=0.8, label="train")
            ax.plot(steps, smooth(list(vals), 20), color="#1f77b4", lw=1.6, label="smoothed")
        if f"val/{term}" in scalars:
            steps, vals = zip(*scalars[f"val/{term}"], strict=True)
            ax.plot(steps, vals, "o-", color="#d62728", lw=1.6, ms=3, label="validation")
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


@torch.no_grad()
def before_after(model: Path, photos: list[Path], size: int, out: Path) -> Path:
    net, meta = load_model(model)
    style_file = resolve_data_path(meta["training"]["style"]["image"])
    rows = []
    for p in photos:
        x = load_tensor(p, long_side=size)
        style = torch.nn.functional.interpolate(
            load_tensor(style_file), size=x.shape[-2:], mode="bilinear", antialias=True
        )
        rows.append([style[0], x[0], net(x)[0]])
    return save_image(image_grid(rows, pad=4), out)


@torch.no_grad()
def gallery(models: list[Path], photos: list[Path], size: int, out: Path) -> Path:
    """Top row: the paintings; then one row per photo: photo, then each model's result."""
    xs = [load_tensor(p, long_side=size) for p in photos]
    h, w = xs[0].shape[-2:]
    nets = [load_model(m) for m in models]
    header = [torch.ones(3, h, w)]
    for _, meta in nets:
        style = load_tensor(resolve_data_path(meta["training"]["style"]["image"]))
        header.append(cover_crop(style, (h, w))[0].clamp(0, 1))
    rows = [header]
    for x in xs:
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True)
        rows.append([x[0], *(net(x)[0].clamp(0, 1) for net, _ in nets)])
    return save_image(image_grid(rows, pad=4), out, quality=88)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="training run directory")
    ap.add_argument("--model", type=Path, help="model file (.safetensors/.ckpt)")
    ap.add_argument("--gallery", type=Path, help="folder of models: write gallery.jpg only")
    ap.add_argument("--photos", type=Path, nargs="+", required=True)
    ap.add_argument("--size", type=int, default=384, help="long side of the photos (px)")
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.gallery:
        models = sorted(args.gallery.glob("*.safetensors"))
        models = [m for m in models if "cpu_demo" not in m.name]
        print(gallery(models, args.photos, args.size, args.out / "gallery.jpg"))
        return
    if not (args.run and args.model):
        ap.error("--run and --model are needed (or --gallery DIR)")
    print(plot_losses(read_scalars(args.run), args.out / "loss_curves.png"))
    print(before_after(args.model, args.photos, args.size, args.out / "before_after.jpg"))


if __name__ == "__main__":
    main()
