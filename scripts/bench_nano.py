"""The lightweight variants side by side: weights, multiply-adds, file size, CPU latency and,
for trained files, held-out quality against their teacher. Prints a Markdown table.

    python scripts/bench_nano.py --repeats 15 --wait-idle 5 \
        --trained nano=outputs/nano/sweep_nano/starry_night.safetensors … \
        --teacher checkpoints/starry_night.safetensors --photos ../shared/data/val --limit 20 \
        --vgg ../shared/weights/vgg16-imagenet-features-fp16.pth

Latency: the ``fused`` CPU backend (the fastest on CPU, docs/benchmarks.md) on one 512² image,
the median of ``--repeats`` after two untimed runs; ``--wait-idle`` first waits until the
1-minute load average is below 0.5 (or that many minutes pass). Size: the model file in
float16 as ``python train.py … train.export_dtype=float16`` writes it (metadata included).
Quality (``--trained NAME=FILE``): content and style loss of the file ÷ the teacher's, on the
held-out photos, each with the style's training criterion (``scripts/eval_styles.py``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_blend import criteria
from eval_styles import score

from fast_style.core.imaging import list_images, load_tensor
from fast_style.core.model_io import describe, save_safetensors
from fast_style.core.network import TransformerNet
from fast_style.infer.backends.fused import FusedRunner
from fast_style.infer.stylizer import Stylizer

# name → TransformerNet arguments. "nano" is conf/model/nano.yaml.
VARIANTS: dict[str, dict] = {
    "full": {"channels": (32, 64, 128), "num_residual": 5},
    "slim": {"channels": (16, 32, 64), "num_residual": 5},
    "w8 basic ×3, 9/9": {"channels": (8, 16, 32), "num_residual": 3},
    "nano (w8 dwsep ×3, 5/5)": {
        "channels": (8, 16, 32), "num_residual": 3, "block": "dwsep", "kernels": (5, 5)},
    "w8 dwsep ×3, 3/3": {
        "channels": (8, 16, 32), "num_residual": 3, "block": "dwsep", "kernels": (3, 3)},
    "w8 dwsep ×5, 5/5, c3 48": {
        "channels": (8, 16, 48), "num_residual": 5, "block": "dwsep", "kernels": (5, 5)},
    "w12 dwsep ×3, 5/5": {
        "channels": (12, 24, 48), "num_residual": 3, "block": "dwsep", "kernels": (5, 5)},
}  # fmt: skip


def macs(net: nn.Module, size: int) -> int:
    """Multiply-adds of the convolutions for one size² image (norms, pads, adds not counted)."""
    total = 0

    def hook(m: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]  # per output value
        total += out.numel() * k

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(torch.rand(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


def fp16_bytes(net: TransformerNet) -> int:
    """Size of the net's float16 model file, metadata included."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.safetensors"
        save_safetensors(net, path, describe(net, style="starry_night"), dtype="float16")
        return path.stat().st_size


def latency(net: TransformerNet, size: int, repeats: int) -> float:
    """Median seconds of the fused backend on one size² image."""
    runner = FusedRunner(net.eval())
    x = torch.rand(1, 3, size, size)
    for _ in range(2):
        runner(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        runner(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def wait_idle(minutes: float) -> None:
    end = time.time() + 60 * minutes
    while os.getloadavg()[0] > 0.5 and time.time() < end:
        time.sleep(5)


def quality(
    files: dict[str, str], teacher: str, photos: str, limit: int, size: int, vgg: str | None
) -> dict[str, tuple[float, float]]:
    """(content, style) loss of each file ÷ the teacher's, on ``limit`` held-out photos."""
    t = Stylizer(teacher, device="cpu")
    crit = criteria(t, t.style_names[:1], vgg)[0]
    images = [load_tensor(f, long_side=size) for f in list_images(Path(photos))[:limit]]
    ref = score(t, None, crit, images)
    out = {}
    for name, path in files.items():
        got = score(Stylizer(path, device="cpu"), None, crit, images)
        out[name] = (got[0] / ref[0], got[1] / ref[1])
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="latency and MACs image side (px)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--wait-idle", type=float, default=0.0, help="minutes to wait for idle")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--trained", nargs="*", default=[], help="VARIANT=FILE for the quality columns")
    p.add_argument("--teacher", default="starry_night", help="the reference model")
    p.add_argument("--photos", default=str(Path(__file__).resolve().parents[2] / "shared/data/val"))
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--eval-size", type=int, default=256, help="long side of the quality photos")
    p.add_argument("--vgg", default=None, help="loss network weights (state_dict file)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    trained = dict(t.split("=", 1) for t in args.trained)
    if unknown := set(trained) - set(VARIANTS):
        raise SystemExit(f"error: unknown variants {sorted(unknown)}; have {list(VARIANTS)}")
    q = (
        quality(trained, args.teacher, args.photos, args.limit, args.eval_size, args.vgg)
        if trained
        else {}
    )
    print(f"| variant | weights | MMAC at {args.size}² | fp16 file (KB) | fused {args.size}² "
          "(ms) | frames/s | content ÷ teacher | style ÷ teacher |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, kw in VARIANTS.items():
        torch.manual_seed(0)
        net = TransformerNet(**kw).eval()
        if args.wait_idle:
            wait_idle(args.wait_idle)
        sec = latency(net, args.size, args.repeats)
        n = sum(p.numel() for p in net.parameters())
        c, s = (f"{v:.3f}" for v in q[name]) if name in q else ("–", "–")
        print(
            f"| {name} | {n:,} | {macs(net, args.size) / 1e6:,.0f} | {fp16_bytes(net) / 1e3:.1f} "
            f"| {sec * 1e3:.1f} | {1 / sec:.1f} | {c} | {s} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
