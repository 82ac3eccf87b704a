"""Held-out losses of every style of a model, optionally next to single-style models.

    python scripts/eval_styles.py --model checkpoints/multi.safetensors \
        --photos ../shared/data/val --limit 30 --size 256 \
        --vgg ../shared/weights/vgg16-imagenet-features-fp16.pth \
        --compare starry_night=checkpoints/starry_night_cpu_demo.safetensors

For each style of ``--model`` the photos are stylised with that style alone and scored with
the style's own training criterion (``fast_style.loss.criterion.style_criterion``, built from
the model's per-style metadata as in ``scripts/bench_blend.py``): the mean weighted content and
style loss over the photos. Each ``--compare STYLE=FILE`` adds a single-style model, scored
with the same criterion as the multi-style model's STYLE, and the ratio of the shared
network's losses to it (above 1: the shared network is worse); ``--photo-rows`` adds the
unstylised photos' losses (what a network that did nothing scores). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_blend import criteria

from fast_style.core.imaging import list_images, load_rgb, load_tensor, resize_long_side
from fast_style.infer.stylizer import Stylizer

REPO = Path(__file__).resolve().parents[1]
VAL = REPO.parent / "shared" / "data" / "val"


@torch.no_grad()
def score(s: Stylizer, style: str | None, crit, photos: list[torch.Tensor]) -> list[float]:
    """Mean [content, style, total] loss of ``s`` with ``style`` (None: its first) over photos."""
    weights = None
    if style is not None and s.num_styles > 1:
        weights = torch.zeros(s.num_styles)
        weights[s.style_names.index(style)] = 1.0
    keys = ("content", "style", "total")
    per_photo = []
    for x in photos:
        y = s.stylize_tensor(x, style=weights)
        terms = crit.terms(crit.network(y), crit.network(x), y)
        per_photo.append([float(terms[k]) for k in keys])
    return [statistics.mean(col) for col in zip(*per_photo, strict=True)]


class _Identity:
    """Stands in for a Stylizer that leaves the photo as it is (the loss of doing nothing)."""

    num_styles = 1

    def stylize_tensor(self, x: torch.Tensor, style: object = None) -> torch.Tensor:
        return x


def left_right_mask(size: tuple[int, int]) -> Image.Image:
    """White on the left third, black on the right third, a linear ramp between."""
    w, h = size
    ramp = [min(255, max(0, round(255 * (2 - 3 * x / (w - 1))))) for x in range(w)]
    mask = Image.new("L", size)
    mask.putdata(ramp * h)
    return mask


def grid(
    s: Stylizer, compare: dict[str, str], files: list[str], size: int, tile: int
) -> Image.Image:
    """Rows: photos (stylised at long side ``size``, shown at ``tile``); columns: photo, each
    style (+ its single-style model), mix, painted."""
    singles = {k: Stylizer(v, device=str(s.device)) for k, v in compare.items()}
    onehot = torch.eye(s.num_styles)
    cols: list[tuple[str, object]] = [("photo", None)]
    for i, name in enumerate(s.style_names):
        width = s.meta.get("width") or "shared"  # column titles name each file's width
        cols.append((f"{name} ({width})", lambda im, i=i: s.stylize_image(im, style=onehot[i])))
        if name in singles:
            single = singles[name]
            label = f"{name} ({single.meta.get('width') or 'single'})"
            cols.append((label, lambda im, m=single: m.stylize_image(im)))
    if s.num_styles > 1:
        a, b = s.style_names[:2]
        mix = (onehot[0] + onehot[1]) / 2
        cols.append((f"50/50 {a}+{b}", lambda im: s.stylize_image(im, style=mix)))
        rows = onehot[:2]
        cols.append((f"painted {a} | {b}", lambda im: s.stylize_image(
            im, style=rows, style_mask=left_right_mask(im.size))))  # fmt: skip
    tiles = []
    for f in files:
        im = resize_long_side(load_rgb(f), size)
        tiles.append([im if fn is None else fn(im) for _, fn in cols])
    w, h = resize_long_side(tiles[0][0], tile).size
    pad, head = 2, 18
    out = Image.new("RGB", (len(cols) * (w + pad) + pad, head + len(tiles) * (h + pad)), "white")
    draw = ImageDraw.Draw(out)
    for j, (label, _) in enumerate(cols):
        draw.text((pad + j * (w + pad) + 4, 3), label, fill="black")
        for i, row in enumerate(tiles):
            out.paste(
                row[j].resize((w, h), Image.Resampling.LANCZOS),
                (pad + j * (w + pad), head + i * (h + pad)),
            )
    return out


def _row(style: str, model: str, values: list[float], ratios: list[float] | None = None) -> None:
    cells = [f"{v:.4g}" for v in values] + ([f"{r:.3f}" for r in ratios] if ratios else [""] * 3)
    print(f"| {style} | {model} | " + " | ".join(cells) + " |")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a model (file or name), usually multi-style")
    p.add_argument("--photos", default=str(VAL), help="folder of held-out photos")
    p.add_argument("--size", type=int, default=256, help="long side of the photos (px)")
    p.add_argument("--limit", type=int, default=30, help="number of photos (first by name)")
    p.add_argument("--vgg", default=None, help="loss network weights (state_dict file)")
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="STYLE=FILE",
        help="a single-style model to score with STYLE's criterion (repeatable)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--photo-rows", action="store_true", help="also score the unstylised photos")
    p.add_argument("--grid", default=None, help="also write a picture grid here (.jpg)")
    p.add_argument("--grid-photos", nargs="+", default=[], help="the grid's photos")
    p.add_argument("--grid-tile", type=int, default=None, help="shown long side (px; --size)")
    p.add_argument("--grid-quality", type=int, default=85, help="JPEG quality of the grid")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    s = Stylizer(args.model, device=args.device)
    compare = dict(c.split("=", 1) for c in args.compare)
    if unknown := set(compare) - set(s.style_names):
        raise SystemExit(f"error: {sorted(unknown)} not in the model's styles {s.style_names}")
    if args.grid:
        picture = grid(s, compare, args.grid_photos, args.size, args.grid_tile or args.size)
        picture.save(args.grid, quality=args.grid_quality, optimize=True)
        print(f"wrote {args.grid} ({Path(args.grid).stat().st_size // 1024} KB)")
        if args.limit == 0:
            return 0
    files = list_images(Path(args.photos))[: args.limit]
    photos = [load_tensor(f, long_side=args.size).to(s.device) for f in files]
    print(f"{len(photos)} photos from {args.photos}, long side {args.size}\n")
    print("| style | model | content | style | total | shared ÷ this: content | style | total |")
    print("|---|---|---|---|---|---|---|---|")
    for name, crit in zip(s.style_names, criteria(s, s.style_names, args.vgg), strict=True):
        crit = crit.to(s.device)
        shared = score(s, name, crit, photos)
        _row(name, Path(args.model).stem, shared)
        if name in compare:
            single = score(Stylizer(compare[name], device=args.device), None, crit, photos)
            ratios = [a / b for a, b in zip(shared, single, strict=True)]
            _row(name, Path(compare[name]).stem, single, ratios)
        if args.photo_rows:
            _row(name, "photo (unstylised)", score(_Identity(), None, crit, photos))
    return 0


if __name__ == "__main__":
    sys.exit(main())
