"""The blend path between two styles of a multi-style model: each style's loss along the mix.

    python scripts/bench_blend.py --model checkpoints/multi.safetensors \
        --styles starry_night,great_wave --steps 11 --size 512

For t = 0, 1/(steps-1), …, 1 the photos are stylised with the mix (1 - t, t) of the two styles
(``Stylizer.stylize_tensor(style=...)``, one forward pass), and each output is scored with each
style's own training criterion (``fast_style.loss.criterion.style_criterion``: content loss
against the photo, style loss against that painting, with the weights and layers stored in the
model's per-style metadata). Prints a Markdown table of the means over the photos and whether
each style loss is monotone along t (the loss against style A should rise and the one against
style B fall: a blend path that moves steadily from one painting to the other).

Photos: ``--photos DIR``, default the held-out Kodak set in ``../shared/data/eval/kodak24`` if
present, else the two photos shipped with the package. The loss network's weights: ``--vgg``
(a state_dict file; default ``$FAST_STYLE_VGG_WEIGHTS`` or torchvision's; ``random`` only for a
smoke run). Writes the rows as JSON too (``--json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from fast_style.core.imaging import list_images, load_tensor
from fast_style.core.resources import photos_dir
from fast_style.infer.stylizer import Stylizer
from fast_style.loss.config import LossConfig, StyleConfig
from fast_style.loss.criterion import style_criterion
from fast_style.loss.perceptual import PerceptualLoss

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = REPO.parent / "shared" / "data" / "eval" / "kodak24"
_LOSS_KEYS = ("content_weight", "style_weight", "tv_weight", "content_layers", "style_layers")


def style_config(entry: dict) -> StyleConfig:
    """A style's criterion settings from its metadata entry (name, image, size, loss)."""
    painting = entry.get("painting") or {}
    image = entry.get("image") or painting.get("file") or f"{entry['name']}.jpg"
    loss = {k: v for k, v in (entry.get("loss") or {}).items() if k in _LOSS_KEYS}
    return StyleConfig(name=entry["name"], image=image, size=entry.get("size") or 512, **loss)


def criteria(s: Stylizer, names: list[str], vgg: str | None) -> list[PerceptualLoss]:
    """Each named style's criterion (one loss network shared when the layers allow)."""
    entries = {e.get("name"): e for e in s.meta.get("styles") or [] if isinstance(e, dict)}
    out: list[PerceptualLoss] = []
    for name in names:
        cfg = style_config(entries.get(name) or {"name": name})
        network = out[0].network if out and set(out[0].network.taps) >= _taps(cfg) else None
        out.append(style_criterion(cfg, LossConfig(weights=vgg), network)[0].eval())
    return out


def _taps(cfg: StyleConfig) -> set[str]:
    return set(cfg.content_layers) | set(cfg.style_layers)


@torch.no_grad()
def blend_rows(
    s: Stylizer, pair: tuple[int, int], crits: list[PerceptualLoss], photos: list, steps: int
) -> list[dict]:
    """Per t: the mean content and style loss of each criterion over ``photos``. Each output
    is stylised once and goes through each distinct loss network once (criteria sharing one
    network score the same features); the photos' content features are computed once."""
    nets = list({id(c.network): c.network for c in crits}.values())
    content = [[net(x) for net in nets] for x in photos]  # per photo, per loss network
    rows = []
    for k in range(steps):
        t = k / (steps - 1)
        weights = torch.zeros(s.num_styles)
        weights[pair[0]] += 1 - t
        weights[pair[1]] += t
        terms: list[list[dict]] = [[] for _ in crits]
        for x, cfeats in zip(photos, content, strict=True):
            y = s.stylize_tensor(x, style=weights)
            feats = [net(y) for net in nets]
            for i, crit in enumerate(crits):
                j = next(j for j, net in enumerate(nets) if net is crit.network)
                terms[i].append(crit.terms(feats[j], cfeats[j], y))
        row: dict = {"t": round(t, 4)}
        for i, per_photo in enumerate(terms):
            for key in ("content", "style"):
                row[f"{key}_{'AB'[i]}"] = statistics.mean(float(d[key]) for d in per_photo)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def monotone(values: Sequence[float], rising: bool) -> bool:
    pairs = itertools.pairwise(values)
    return all(b >= a for a, b in pairs) if rising else all(b <= a for a, b in pairs)


def print_table(rows: list[dict], names: list[str]) -> None:
    a, b = names
    print(f"\n| t (weight of {b}) | content ({a}) | style vs {a} | content ({b}) | style vs {b} |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[k]:.4g}" for k in ("content_A", "style_A", "content_B", "style_B")]
        print(f"| {r['t']:.2f} | " + " | ".join(cells) + " |")
    up = monotone([r["style_A"] for r in rows], rising=True)
    down = monotone([r["style_B"] for r in rows], rising=False)
    print(f"\nstyle loss vs {a} rises along t: {'yes' if up else 'NO'}; ", end="")
    print(f"vs {b} falls: {'yes' if down else 'NO'}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a multi-style model (file or name)")
    p.add_argument("--styles", default=None, help="A,B: two of its styles (default: the first two)")
    p.add_argument("--photos", default=None, help="folder of held-out photos")
    p.add_argument("--max-photos", type=int, default=8)
    p.add_argument("--size", type=int, default=512, help="long side of the photos (px)")
    p.add_argument("--steps", type=int, default=11, help="points along t in [0, 1] (≥ 2)")
    p.add_argument("--vgg", default=None, help="loss network weights (state_dict file)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=str(REPO / "outputs" / "bench_blend.json"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    s = Stylizer(args.model, device=args.device)
    names = args.styles.split(",") if args.styles else s.style_names[:2]
    if s.num_styles < 2 or len(names) != 2 or not set(names) <= set(s.style_names):
        raise SystemExit(f"error: need two styles of the model, which has {s.style_names}")
    folder = Path(args.photos) if args.photos else HELD_OUT if HELD_OUT.is_dir() else photos_dir()
    files = list_images(folder)[: args.max_photos]
    photos = [load_tensor(f, long_side=args.size).to(s.device) for f in files]
    crits = [c.to(s.device) for c in criteria(s, names, args.vgg)]
    pair = (s.style_names.index(names[0]), s.style_names.index(names[1]))
    rows = blend_rows(s, pair, crits, photos, max(2, args.steps))
    print(f"{len(photos)} photos from {folder}, long side {args.size}")
    print_table(rows, names)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "styles": names, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
