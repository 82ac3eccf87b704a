"""Benchmark one training step (transform net + perceptual loss + Adam) under several settings.

    python scripts/bench_train.py                       # GPU: naive eager fp32 → fast path
    python scripts/bench_train.py --batch 16 --size 256 --steps 50 --json out.json

Every row runs the real training code (``StyleTransferSystem.compute_terms``: content pass,
transform net, loss network, perceptual terms) on the same batch of photos, then backward and
an Adam step, in one process, so the rows' ratios compare like with like:

* ``eager-fp32``: PyTorch defaults, NCHW, float32 (TF32 convolutions, as PyTorch allows by
  default), foreach Adam: the naive baseline;
* ``bf16``: + bf16 autocast;
* ``bf16-cl``: + channels_last tensors;
* ``compile``: + ``torch.compile`` of the transform and loss networks, fused Adam;
* ``compile-nchw``: the same without channels_last (to see what channels_last brings).

Prints a Markdown table (ms/step, images/s, ratio to the baseline) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from fast_style.core.device import resolve_device, sync_device
from fast_style.core.imaging import list_images
from fast_style.core.resources import config_dir
from fast_style.train.config import validate
from fast_style.train.data import GPUImageBank
from fast_style.train.system import StyleTransferSystem

CONFIGS = {
    "eager-fp32": {"bf16": False, "channels_last": False, "compile": False},
    "bf16": {"bf16": True, "channels_last": False, "compile": False},
    "bf16-cl": {"bf16": True, "channels_last": True, "compile": False},
    "compile": {"bf16": True, "channels_last": True, "compile": True},
    "compile-nchw": {"bf16": True, "channels_last": False, "compile": True},
}


def photos(folder: str | None, n: int, size: int) -> torch.Tensor:
    """(n, 3, size, size) photos in [0, 1] from ``folder``, prepared as ``data.gpu_cache``
    stores them (random noise when there are none)."""
    files = list_images(folder)[:n] if folder else []
    if not files:
        return torch.rand(n, 3, size, size)
    images = GPUImageBank(files, size).images
    return images.repeat(-(-n // len(images)), 1, 1, 1)[:n].float() / 255


def build_system(overrides: list[str], flags: dict) -> StyleTransferSystem:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            [
                *overrides,
                f"train.compile={flags['compile']}",
                f"train.channels_last={flags['channels_last']}",
            ],
        )
    return StyleTransferSystem(validate(cfg))


def profile_steps(name: str, step: Callable[[], None], n: int, device: torch.device) -> None:
    """Print the top operators of ``n`` steps by device time (CPU time on the CPU): what is
    launch-bound (many short kernels), memory-bound (element-wise, norms) and not bf16."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=False) as prof:
        for _ in range(n):
            step()
        sync_device(device)
    print(f"\n## profile: {name}, {n} steps\n", file=sys.stderr)
    table = prof.key_averages()
    if device.type != "cuda":
        text = table.table(sort_by="cpu_time_total", row_limit=30)
    else:
        try:  # torch >= 2.4 names it device time
            text = table.table(sort_by="device_time_total", row_limit=30)
        except (AttributeError, KeyError, ValueError):
            text = table.table(sort_by="cuda_time_total", row_limit=30)
    print(text, file=sys.stderr, flush=True)


def time_config(
    name: str,
    flags: dict,
    batch: torch.Tensor,
    steps: int,
    warmup: int,
    overrides: list[str],
    profile: int = 0,
) -> dict:
    device = batch.device
    system = build_system(overrides, flags).to(device)
    system.on_fit_start()  # builds the loss network; applies channels_last / compile
    fused = flags["compile"] and device.type == "cuda"
    opt = torch.optim.Adam(system.parameters(), lr=1e-3, fused=fused)

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=flags["bf16"]):
            terms = system.compute_terms(batch)
            loss = torch.stack([t["total"] for t in terms]).sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync_device(device)
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(3):  # three timed blocks; the median block is reported
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync_device(device)
        times.append((time.perf_counter() - t0) / steps)
    if profile:
        profile_steps(name, step, profile, device)
    ms = 1000 * statistics.median(times)
    row = {
        "config": name,
        **flags,
        "batch": len(batch),
        "styles": len(system.nets),
        "ms_per_step": round(ms, 2),
        "images_per_s": round(len(batch) * len(system.nets) * 1000 / ms, 1),
        "warmup_s": round(warm_s, 1),
    }
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma list of the rows")
    p.add_argument("--batch", type=int, default=4, help="content images per step")
    p.add_argument("--size", type=int, default=256, help="crop size (px)")
    p.add_argument("--steps", type=int, default=30, help="steps per timed block")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation)")
    p.add_argument("--photos", default=None, help="folder of photos (default: noise)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--json", default=str(Path("outputs") / "bench_train.json"))
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also profile N steps of each row (torch.profiler) and print the top kernels",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=slim")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    batch = photos(args.photos, args.batch, args.size).to(device)
    rows = []
    for name in args.configs.split(","):
        try:
            rows.append(
                time_config(
                    name,
                    CONFIGS[name],
                    batch,
                    args.steps,
                    args.warmup,
                    args.overrides,
                    args.profile,
                )
            )
        except Exception as e:  # one failing row (a compiler error, say) keeps the others
            print(f"{name}: failed: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
        torch._dynamo.reset()
    base = rows[0]["ms_per_step"] if rows else None
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{dev}, torch {torch.__version__}, batch {args.batch} at {args.size}²\n")
    print("| config | ms/step | images/s | × baseline | peak GiB |\n|---|---|---|---|---|")
    for r in rows:
        ratio = base / r["ms_per_step"] if base else float("nan")
        print(
            f"| {r['config']} | {r['ms_per_step']} | {r['images_per_s']} | {ratio:.2f} "
            f"| {r.get('peak_memory_gib', '-')} |"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": dev, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
