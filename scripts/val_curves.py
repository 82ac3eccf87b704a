"""Held-out loss curves of training runs, from their TensorBoard logs: a table and a plot.

    python scripts/val_curves.py fast=outputs/fast johnson=outputs/reference \
        --out docs/images/val_curves.png

Each ``LABEL=RUN_DIR`` names a Hydra run folder (``RUN_DIR/tensorboard``); a run resumed from
its checkpoint (``ckpt_path=…``) is ``LABEL=DIR1+DIR2+…``, its parts joined in order (the
minutes of later parts continue from the previous part's last point). For every run it
prints the ``val/total`` points (step, images seen, minutes since the first logged training
step) and the final value, and, with two or more runs, how far each final value lies from the
last run's. The plot shows ``val/total`` against images seen and against wall-clock
minutes, with a dashed line at the last run's final value + 5%.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import yaml

TAG = "val/total"


def read_run(run_dir: Path) -> dict:
    """``{"batch", "steps", "images", "minutes", "values"}`` for one run (lists share order)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    if TAG not in scalars:
        raise SystemExit(f"error: no {TAG!r} in {run_dir}/tensorboard")
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    batch = int(cfg["data"]["batch_size"])
    # t0: the first logged training scalar (a few dozen steps after the start of fit)
    t0 = min(acc.Scalars(t)[0].wall_time for t in scalars if t.startswith("train/"))
    points = acc.Scalars(TAG)
    return {
        "batch": batch,
        "steps": [p.step + 1 for p in points],
        "images": [(p.step + 1) * batch for p in points],
        "minutes": [round((p.wall_time - t0) / 60, 3) for p in points],
        "values": [round(p.value, 5) for p in points],
    }


def join_parts(parts: list[dict]) -> dict:
    """One run from the parts of a resumed run: points a later part recomputed are dropped, and
    later parts' minutes are shifted to follow on."""
    run = {k: list(v) if isinstance(v, list) else v for k, v in parts[0].items()}
    for part in parts[1:]:
        # points logged after the checkpoint the next part resumed from were recomputed: drop
        keep = sum(1 for step in run["steps"] if step < part["steps"][0])
        for key in ("steps", "images", "values", "minutes"):
            del run[key][keep:]
        shift = run["minutes"][-1] if run["minutes"] else 0.0
        for key in ("steps", "images", "values"):
            run[key] += part[key]
        run["minutes"] += [round(m + shift, 3) for m in part["minutes"]]
    return run


def plot(runs: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, r in runs.items():
        axes[0].plot([i / 1000 for i in r["images"]], r["values"], marker=".", label=label)
        axes[1].plot(r["minutes"], r["values"], marker=".", label=label)
    axes[0].set_xlabel("training images seen (thousands)")
    axes[1].set_xlabel("minutes since the first logged step")
    axes[0].set_ylabel("held-out loss (val/total)")
    ref_label, ref = list(runs.items())[-1]
    band = ref["values"][-1] * 1.05
    for ax in axes:
        ax.axhline(band, color="grey", ls="--", lw=1, label=f"{ref_label} final + 5%")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    lo = min(min(r["values"]) for r in runs.values())
    axes[0].set_ylim(lo * 0.95, lo * 1.6)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    p.add_argument("--out", default=None, help="write the plot here (PNG)")
    p.add_argument("--json", default=None, help="write the curves here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, _, path = spec.partition("=")
        runs[label] = join_parts([read_run(Path(p)) for p in path.split("+")])
    ref_label = list(runs)[-1]
    ref = runs[ref_label]["values"][-1]
    for label, r in runs.items():
        print(f"\n## {label} (batch {r['batch']})\n\n| step | images | minutes | {TAG} |")
        print("|---|---|---|---|")
        for s, i, m, v in zip(r["steps"], r["images"], r["minutes"], r["values"], strict=True):
            print(f"| {s} | {i} | {m:.2f} | {v:.4f} |")
        gap = 100 * (r["values"][-1] / ref - 1)
        print(f"\nfinal {TAG} = {r['values'][-1]:.4f} ({gap:+.2f}% vs {ref_label})")
    if args.out:
        plot(runs, Path(args.out))
        print(f"\nwrote {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
