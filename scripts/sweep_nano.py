"""The variant sweep behind model=nano: each candidate of ``scripts/bench_nano.py`` learns the
teacher's outputs for the same steps on the same cached pairs, then ``bench_nano.py
--trained`` scores the files against the teacher. A capacity test, cheap enough for a 2-core
CPU: only the pixel term of the distillation loss (no loss-network pass), so it ranks how well
each architecture can imitate the teacher, not a full training recipe (experiment=cpu_nano).

    python scripts/sweep_nano.py --teacher starry_night --photos ../shared/data/train \
        --max-images 1600 --cache-size 256 --crop 128 --steps 1500 --out outputs/nano/sweep

Writes ``<out>/<variant slug>.safetensors`` and prints one line per variant (steps, seconds,
final pixel L1). The cache is ``fast_style.train.distill.TeacherCache`` (the one
``python train.py … distill.teacher=…`` builds and reuses).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nano import VARIANTS

from fast_style.core.imaging import list_images
from fast_style.core.model_io import describe, save_safetensors
from fast_style.core.network import TransformerNet
from fast_style.train.distill import DistillDataset, TeacherCache, default_cache_root, load_teacher


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def train_variant(
    kw: dict, pairs: DistillDataset, steps: int, batch: int, lr: float, seed: int
) -> tuple[TransformerNet, float]:
    """``steps`` of Adam on mean |y − t| with a cosine schedule; returns the net and the
    final loss (mean of the last 50 steps)."""
    torch.manual_seed(seed)
    net = TransformerNet(**kw)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(pairs, batch_size=batch, shuffle=True, drop_last=True, generator=gen)
    losses: list[float] = []
    while len(losses) < steps:
        for x, t in loader:
            loss = (net(x) - t).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return net.eval(), sum(losses[-50:]) / len(losses[-50:])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="starry_night")
    p.add_argument("--photos", required=True, help="training photos (the cache's)")
    p.add_argument("--max-images", type=int, default=1600)
    p.add_argument("--cache-size", type=int, default=256)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="*", default=None, help="names (default: all but full)")
    p.add_argument("--out", default="outputs/nano/sweep")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    teacher, _, teacher_file = load_teacher(args.teacher, torch.device("cpu"))
    files = list_images(Path(args.photos))[: args.max_images]
    cache = TeacherCache.build(teacher, teacher_file, files, args.cache_size, default_cache_root())
    pairs = DistillDataset(cache, args.crop)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.variants or [n for n in VARIANTS if n != "full"]
    for name in names:
        t0 = time.perf_counter()
        net, loss = train_variant(VARIANTS[name], pairs, args.steps, args.batch, args.lr, args.seed)
        path = out / f"{slug(name)}.safetensors"
        meta = describe(net, style=teacher_file.stem, width=slug(name))
        save_safetensors(net, path, meta, dtype="float16")
        print(
            f"{name}: {args.steps} steps, {time.perf_counter() - t0:.0f} s, L1 {loss:.4f} → {path}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
