"""Issue 16's independent judge of style models on held-out photos (``fast_style.baseline.judge``).

    python scripts/judge_styles.py \
        --photos ../shared/data/val --limit 30 \
        --photos ../shared/data/eval/kodak24 --limit 12 \
        --size 512 --vgg ../shared/weights/vgg16-imagenet-features-fp16.pth \
        --grid outputs/judge_grids --json outputs/judge/shipped.json

For every style of every model (``--models``: files or names; default, or the word
``shipped``: every shipped single-style model except the demos and nanos) and every photo set
(``--photos``, repeatable; ``--limit`` once for all sets or once per set, in order): the mean
Gram reduction and content kept, the share of photos meeting each ≥ 0.55, and whether the goal
(both means ≥ 0.55) is met, as a Markdown table. Photos are judged at long side ``--size``, or
their own when smaller (``--upscale`` blows them up); each painting at its training size from
the model's metadata. ``--grid DIR`` writes one JPEG per style of the last photo set's first
``--grid-count`` photos, photo above output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from fast_style.baseline.judge import (
    GOAL,
    Photo,
    StyleJudgement,
    judge_model,
    judge_network,
    judgement_grid,
    load_photos,
    shipped_style_models,
)
from fast_style.core.model_io import find_style
from fast_style.core.resources import model_dirs
from fast_style.infer.stylizer import Stylizer
from fast_style.loss.vgg import LossNetworkWeightsError


def resolve_models(specs: Sequence[str]) -> list[tuple[Path, str | None]]:
    """(model file, one style or None for all of its styles) per spec; ``shipped``: the
    default set (``judge.shipped_style_models``); a bare style name of a multi-style file
    judges that style only."""
    out: list[tuple[Path, str | None]] = []
    for spec in specs or ["shipped"]:
        if spec == "shipped":
            out += [(p, None) for p in shipped_style_models()]
        else:
            out.append(find_style(spec, model_dirs()))
    return out


def per_folder_limits(folders: Sequence[str], limits: Sequence[int]) -> list[int]:
    """``--limit`` given never (0: all), once (for every folder) or once per folder."""
    if len(limits) not in (0, 1, len(folders)):
        raise SystemExit("error: give --limit once, or once per --photos")
    return (
        list(limits) if len(limits) == len(folders) else [limits[0] if limits else 0] * len(folders)
    )


def photo_sets(
    vgg, folders: Sequence[str], limits: Sequence[int], size: int, upscale: bool
) -> list[tuple[str, list[Photo]]]:
    """(label, photos) per folder; the label names the folder, count and judged long side."""
    out = []
    for folder, limit in zip(folders, per_folder_limits(folders, limits), strict=True):
        photos = load_photos(vgg, folder, size, limit, upscale)
        if not photos:
            raise SystemExit(f"error: no images in {folder}")
        px = sorted({max(p.image.shape[-2:]) for p in photos})
        sides = f"{px[0]}" if len(px) == 1 else f"{px[0]}–{px[-1]}"
        out.append((f"{Path(folder).name} ({len(photos)}, {sides} px)", photos))
    return out


def markdown_table(rows: Sequence[StyleJudgement]) -> str:
    """One line per (model, style, photo set): means, shares meeting ``GOAL``, the goal."""
    head = [
        "model", "style", "photos", "Gram reduction", "content kept",
        f"share G ≥ {GOAL}", f"share C ≥ {GOAL}", "goal met",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for j in rows:
        cells = [
            j.model, j.style, j.photos, f"{j.gram_reduction:.3f}", f"{j.content_kept:.3f}",
            f"{j.share_reduction_ok:.0%}", f"{j.share_content_ok:.0%}",
            "yes" if j.goal_met else "**no**",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_grids(rows: Sequence[StyleJudgement], folder: Path) -> list[Path]:
    """``judgement_grid`` of each judgement that kept pictures, as ``<model>[__<style>].jpg``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for j in rows:
        if j.pictures:
            name = j.model if j.model == j.style else f"{j.model}__{j.style}"
            path = folder / f"{name}.jpg"
            judgement_grid(j).save(path, quality=88, optimize=True)
            out.append(path)
    return out


def judge_all(args: argparse.Namespace) -> list[StyleJudgement]:
    """Every style of every model on every photo set, in the order model, style, set;
    pictures kept for the last set."""
    per_folder_limits(args.photos, args.limit)  # before any loading
    try:
        vgg = judge_network(args.vgg, args.device)
    except LossNetworkWeightsError as e:
        raise SystemExit(f"error: {e}") from None
    sets = photo_sets(vgg, args.photos, args.limit, args.size, args.upscale)
    rows: list[StyleJudgement] = []
    for path, style in resolve_models(args.models):
        stylizer = Stylizer(path, device=args.device, backend=args.backend)
        per_set = []
        for i, (label, photos) in enumerate(sets):
            keep = args.grid_count if args.grid and i == len(sets) - 1 else 0
            t0 = time.perf_counter()
            per_set.append(
                judge_model(vgg, stylizer, photos, [style] if style else None, label, keep)
            )
            for j in per_set[-1]:
                print(
                    f"{j.model}/{j.style} on {label}: G {j.gram_reduction:.3f} "
                    f"C {j.content_kept:.3f} ({time.perf_counter() - t0:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        rows += [found for by_style in zip(*per_set, strict=True) for found in by_style]
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=[], help="files or names; 'shipped': default")
    p.add_argument("--photos", action="append", required=True, help="photo folder (repeatable)")
    p.add_argument("--limit", action="append", type=int, default=[], help="first N per folder")
    p.add_argument("--size", type=int, default=512, help="long side of photos and outputs (px)")
    p.add_argument("--upscale", action="store_true", help="also enlarge smaller photos to --size")
    p.add_argument("--vgg", default=None, help="VGG16 weights file (state_dict)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    p.add_argument("--backend", default="eager", help="the Stylizer's backend (eager: reference)")
    p.add_argument("--grid", default=None, help="folder for one JPEG per style")
    p.add_argument("--grid-count", type=int, default=12, help="photos in each grid")
    p.add_argument("--json", default=None, help="write every figure here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    rows = judge_all(args)
    print(markdown_table(rows))
    if args.grid:
        for path in write_grids(rows, Path(args.grid)):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        settings |= {"torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 1)}
        payload = {"settings": settings, "results": [j.to_dict() for j in rows]}
        out.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
