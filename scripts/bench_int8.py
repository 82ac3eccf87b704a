"""Benchmark the ``ort-int8`` backend: PSNR against fp32 on held-out photos and the speed-up, for
the full, slim and nano networks (docs/int8.md).

    python scripts/bench_int8.py                        # the table of docs/int8.md
    python scripts/bench_int8.py --alternatives         # recipe variants: PSNR and speed-up
    python scripts/bench_int8.py --networks slim --repeats 5 --nano PATH

Per network: the median latency at 512² of ONNX Runtime fp32 (``onnxruntime``), int8
(``ort-int8``, ``fast_style.infer.backends.ort_int8``) and, for reference, the ``fused`` backend,
timed *interleaved* (each of ``--repeats`` rounds runs every backend once, in rotating order:
robust to other jobs on the host), the speed-up as the median of the per-round ratios, and the
PSNR of int8 against fp32 on held-out photos: ``--val-photos`` of ../shared's validation split
(BSDS500 test, 256² upscaled to 512²) and ``--kodak-photos`` Kodak photos at 512 px (long
side), without the two shipped ones the int8 model is calibrated on. "int8 by default": the
least PSNR over those photos ≥ 38 dB (the bar of ``auto``'s rule) and int8 at least ×1.1
faster here; for those networks the script prints the metadata entry (``int8_psnr_db``) that
makes ``auto`` pick int8 for a model file. The least PSNR is only as good as the photo set:
decide on all of them (``--val-photos 200 --kodak-photos 22``; docs/int8.md).

Networks: ``full`` = checkpoints/starry_night.safetensors, ``slim`` =
checkpoints/starry_night_cpu_demo.safetensors, ``nano`` = ``--nano`` (default
checkpoints/starry_night_nano.safetensors) or, where that file does not exist, a random-weight
network of conf/model/nano.yaml (its speed is that of a trained one; its PSNR is not a model's).
Also written as JSON (``--json``, default outputs/bench_int8.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import yaml

from fast_style.core.imaging import list_images, load_rgb, pil_to_tensor, resize_long_side
from fast_style.core.model_io import describe, load_model
from fast_style.core.network import TransformerNet
from fast_style.core.resources import config_dir
from fast_style.infer.allocator import tune_malloc
from fast_style.infer.backends.ort import OrtRunner
from fast_style.infer.backends.ort_int8 import (
    DEFAULT_RECIPE,
    INT8_MIN_PSNR_DB,
    INT8_PSNR_KEY,
    Int8Recipe,
    Int8Runner,
    calibration_photos,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stylize import cpu_name

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
NETWORKS = {
    "full": REPO / "checkpoints" / "starry_night.safetensors",
    "slim": REPO / "checkpoints" / "starry_night_cpu_demo.safetensors",
    "nano": REPO / "checkpoints" / "starry_night_nano.safetensors",
}
# --alternatives (docs/int8.md): round 1 from int8 everywhere to a float encoder with MinMax
# ranges ("r1 ..."), round 2 changes of the default (residual convs only, percentile ranges).
R1 = Int8Recipe(float_groups=("encoder", "output"), calibration="minmax")
_replace = dataclasses.replace
ALTERNATIVES: dict[str, Int8Recipe] = {
    "r1 all convs int8": _replace(R1, float_groups=()),
    "r1 all but the output conv": _replace(R1, float_groups=("output",)),
    "r1 float encoder and output": R1,
    "r1 no equalisation": _replace(R1, equalise=False),
    "r1 residual adds int8": _replace(R1, quantize_adds=True),
    "r1 per-tensor weights": _replace(R1, per_channel=False),
    "r1 symmetric activations": _replace(R1, symmetric=True),
    "r1 calibration at 512 px only": _replace(R1, calib_sizes=(512,)),
    "r1 entropy calibration": _replace(R1, calibration="entropy"),
    "r1 percentile calibration": _replace(R1, calibration="percentile"),
    "r1 residual convs only": _replace(R1, float_groups=("encoder", "decoder", "output")),
    "default": DEFAULT_RECIPE,
    "default no equalisation": _replace(DEFAULT_RECIPE, equalise=False),
    "default minmax calibration": _replace(DEFAULT_RECIPE, calibration="minmax"),
    "default entropy calibration": _replace(DEFAULT_RECIPE, calibration="entropy"),
    "default calibration at 512 px only": _replace(DEFAULT_RECIPE, calib_sizes=(512,)),
    "default per-tensor weights": _replace(DEFAULT_RECIPE, per_channel=False),
    "default symmetric activations": _replace(DEFAULT_RECIPE, symmetric=True),
    "default residual adds int8": _replace(DEFAULT_RECIPE, quantize_adds=True),
    "default decoder int8 too": _replace(DEFAULT_RECIPE, float_groups=("encoder", "output")),
}
Runner = Callable[[torch.Tensor], torch.Tensor]
MIN_SPEEDUP = 1.1  # int8 is worth a default only where it is clearly faster (on this CPU)


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


# --- networks and photos ------------------------------------------------------------------


def nano_net() -> TransformerNet:
    """A random-weight network of conf/model/nano.yaml (seed 0)."""
    cfg = yaml.safe_load((config_dir() / "model" / "nano.yaml").read_text())
    torch.manual_seed(0)
    net = TransformerNet(
        cfg["channels"], cfg["num_residual"], block=cfg["block"], kernels=cfg["kernels"]
    )
    return net.eval()


def load_network(name: str, nano: Path) -> tuple[TransformerNet, str, dict]:
    """(network, what its weights are, its metadata) of ``name``."""
    path = nano if name == "nano" else NETWORKS[name]
    if path.is_file():
        net, meta = load_model(path, "cpu")
        return net, path.name, meta
    if name == "nano":
        net = nano_net()
        return net, "random (conf/model/nano.yaml; no trained nano file)", describe(net, "x")
    raise SystemExit(f"model file not found: {path}")


def held_out(val: Path, kodak: Path, n_val: int, n_kodak: int) -> dict[str, list[torch.Tensor]]:
    """The held-out photos, (1, 3, H, W) in [0, 1]: ``n_val`` evenly spaced photos of ``val``
    (sorted; every 20th of 200 for 10) at 512², and the first ``n_kodak`` of ``kodak`` that
    are not calibration photos, at 512 px (long side)."""
    for d in (val, kodak):
        if not d.is_dir():
            raise SystemExit(f"held-out photos not found: {d} (see ../shared/README.md)")
    calib = {p.name for p in calibration_photos()}
    val_files = list_images(val)
    val_files = val_files[:: max(1, len(val_files) // max(1, n_val))][:n_val]
    kodak_files = [p for p in list_images(kodak) if p.name not in calib][:n_kodak]
    return {
        "val": [pil_to_tensor(load_rgb(f).resize((512, 512)))[None] for f in val_files],
        "kodak": [pil_to_tensor(resize_long_side(load_rgb(f), 512))[None] for f in kodak_files],
    }


# --- measurements -------------------------------------------------------------------------


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def quality(int8: Runner, fp32: Runner, photos: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Mean and least PSNR (dB) of ``int8`` against ``fp32`` per photo set, and overall; how
    many photos reach ``INT8_MIN_PSNR_DB`` (``passed``) of how many (``photos``)."""
    out: dict[str, float] = {}
    every = []
    for name, xs in photos.items():
        scores = [psnr(int8(x), fp32(x)) for x in xs]
        every += scores
        out[f"{name}_mean"], out[f"{name}_min"] = statistics.mean(scores), min(scores)
    out["min"] = min(every)
    out["passed"], out["photos"] = sum(s >= INT8_MIN_PSNR_DB for s in every), len(every)
    return out


def interleaved(runners: dict[str, Runner], rounds: int, size: int = 512) -> dict[str, dict]:
    """Per runner: the median wall time and process CPU time over ``rounds`` rounds (each
    runs every runner once, order rotated by one per round, after one untimed warm-up each),
    and the medians of its per-round times divided by the first runner's (``ratio``,
    ``cpu_ratio``). With one thread, CPU time is not inflated by waiting for cores that other
    jobs hold (nor by worker threads spinning): the steadier A/B on a busy host."""
    x = torch.rand(1, 3, size, size)
    names = list(runners)
    for name in names:
        runners[name](x)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            c0, t0 = time.process_time(), time.perf_counter()
            runners[name](x)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)

    def ratio(ts: list[float], base: list[float]) -> float:
        return statistics.median(t / b for t, b in zip(ts, base, strict=True))

    first = names[0]
    return {
        n: {
            "median_s": statistics.median(wall[n]),
            "cpu_s": statistics.median(cpu[n]),
            "ratio": ratio(wall[n], wall[first]),
            "cpu_ratio": ratio(cpu[n], cpu[first]),
        }
        for n in names
    }


def fused_runner(net: TransformerNet, threads: int) -> Runner | None:
    try:
        from fast_style.infer.backends.fused import FusedRunner

        return FusedRunner(net, threads)
    except Exception as e:  # no C compiler: the column reads "-"
        print(f"note: no fused backend ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def timed_quantise(net: TransformerNet, recipe: Int8Recipe, threads: int) -> tuple[Runner, float]:
    """The int8 runner (quantised now unless cached) and the seconds it took to build."""
    t0 = time.perf_counter()
    runner = Int8Runner(net, threads, recipe=recipe)
    return runner, time.perf_counter() - t0


# --- the two reports ----------------------------------------------------------------------


def verdict(row: dict) -> str:
    """Whether int8 should be this network's default: "yes" where the least PSNR is at least
    ``INT8_MIN_PSNR_DB`` and it is at least ``MIN_SPEEDUP`` times faster, else why not."""
    if row["weights"].startswith("random"):
        return "n/a (random weights)"
    if row["min"] < INT8_MIN_PSNR_DB:
        return f"no (least PSNR {row['min']:.1f} dB < {INT8_MIN_PSNR_DB:g})"
    if row["speedup"] < MIN_SPEEDUP:
        return f"no (×{row['speedup']:.2f}: not faster)"
    return "yes"


def model_files(net: TransformerNet, meta: dict) -> tuple[dict[str, int], TransformerNet]:
    """Bytes of the network as a float16 and an int8 model file with its metadata ``meta``
    (``fast-style export --dtype``) and of its ``ort-int8`` ONNX model; and the network as read
    back from the int8 file (weight-only int8, ``model_io.INT8``)."""
    import tempfile

    from fast_style.core.model_io import save_safetensors
    from fast_style.infer.backends.ort_int8 import cached_int8

    sizes = {"ort_int8_onnx_bytes": len(cached_int8(net))}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float16", "int8"):
            path = save_safetensors(net, Path(tmp) / f"{dtype}.safetensors", meta, dtype)
            sizes[f"{dtype}_file_bytes"] = path.stat().st_size
        return sizes, load_model(path, "cpu")[0]  # the int8 file, written last


def bench_network(name: str, args: argparse.Namespace, photos: dict) -> dict:
    net, weights, meta = load_network(name, Path(args.nano))
    fp32 = OrtRunner(net, args.threads)
    int8, build_s = timed_quantise(net, DEFAULT_RECIPE, args.threads)
    sizes, int8_file = model_files(net, meta)
    weight_only = quality(OrtRunner(int8_file, args.threads), fp32, photos)
    runners: dict[str, Runner] = {"onnxruntime": fp32, "ort-int8": int8}
    fused = fused_runner(net, args.threads)
    if fused is not None:
        runners["fused"] = fused
    speed = interleaved(runners, args.repeats)
    q = quality(int8, fp32, photos)
    row = {"network": name, "weights": weights, "int8_build_s": round(build_s, 1), **q}
    row.update(sizes)
    row.update({f"int8_file_{k}": v for k, v in weight_only.items()})
    for backend, t in speed.items():
        row[f"{backend}_s"], row[f"{backend}_cpu_s"] = t["median_s"], t["cpu_s"]
    row["speedup"] = 1 / speed["ort-int8"]["ratio"]
    row["cpu_speedup"] = 1 / speed["ort-int8"]["cpu_ratio"]
    row["int8_default"] = verdict(row)
    print(f"{name}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


def print_table(rows: list[dict], env: dict) -> None:
    print(f"\n{env['cpu']}, {env['threads']} threads, onnxruntime {env['onnxruntime']}, torch "
          f"{env['torch']}, load average {env['load_before']} → {env['load_after']}\n")  # fmt: skip
    print(
        "| network | weights | fp32 ORT 512² | int8 512² | speed-up (wall / CPU time) "
        "| fused 512² | PSNR val mean / min | PSNR Kodak mean / min | photos ≥ 38 dB "
        "| int8 by default |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fused = f"{r['fused_s'] * 1e3:.0f} ms" if "fused_s" in r else "-"
        print(
            f"| {r['network']} | {r['weights']} | {r['onnxruntime_s'] * 1e3:.0f} ms "
            f"| {r['ort-int8_s'] * 1e3:.0f} ms | ×{r['speedup']:.2f} / ×{r['cpu_speedup']:.2f} "
            f"| {fused} "
            f"| {r['val_mean']:.2f} / {r['val_min']:.2f} dB "
            f"| {r['kodak_mean']:.2f} / {r['kodak_min']:.2f} dB | {r['passed']}/{r['photos']} "
            f"| {r['int8_default']} |"
        )
    print(
        "\n| network | float16 file | int8 file (weight-only) | its PSNR val mean / min "
        "| its PSNR Kodak mean / min | ort-int8 ONNX |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['network']} | {r['float16_file_bytes'] / 1e3:.1f} KB "
            f"| {r['int8_file_bytes'] / 1e3:.1f} KB "
            f"| {r['int8_file_val_mean']:.2f} / {r['int8_file_val_min']:.2f} dB "
            f"| {r['int8_file_kodak_mean']:.2f} / {r['int8_file_kodak_min']:.2f} dB "
            f"| {r['ort_int8_onnx_bytes'] / 1e3:.1f} KB |"
        )
    for r in rows:
        if r["int8_default"] == "yes":
            print(f"\n{r['network']}: record {INT8_PSNR_KEY} = {r['min']:.2f} in its metadata")


def bench_alternatives(name: str, args: argparse.Namespace, photos: dict) -> list[dict]:
    """One row per recipe of ``ALTERNATIVES`` (or ``--recipes``) for network ``name``."""
    net = load_network(name, Path(args.nano))[0]
    fp32 = OrtRunner(net, args.threads)
    picked = args.recipes.split(",") if args.recipes else list(ALTERNATIVES)
    rows = []
    for label in picked:
        int8, build_s = timed_quantise(net, ALTERNATIVES[label], args.threads)
        speed = interleaved({"fp32": fp32, "int8": int8}, args.repeats)
        row = {"network": name, "recipe": label, "speedup": 1 / speed["int8"]["ratio"]}
        row["cpu_speedup"] = 1 / speed["int8"]["cpu_ratio"]
        row.update(quality(int8, fp32, photos), int8_build_s=round(build_s, 1))
        rows.append(row)
        print(f"{name}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return rows


def print_alternatives(rows: list[dict], env: dict) -> None:
    print(f"\n{env['cpu']}, {env['threads']} threads, load average {env['load_before']} → "
          f"{env['load_after']}\n")  # fmt: skip
    print(
        "| network | recipe | PSNR val mean / min | PSNR Kodak mean / min | photos ≥ 38 dB "
        "| speed-up (wall) | speed-up (CPU time) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['network']} | {r['recipe']} | {r['val_mean']:.2f} / {r['val_min']:.2f} dB "
            f"| {r['kodak_mean']:.2f} / {r['kodak_min']:.2f} dB | {r['passed']}/{r['photos']} "
            f"| ×{r['speedup']:.2f} | ×{r['cpu_speedup']:.2f} |"
        )


# --- main -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", default=None, help="comma list of full, slim, nano")
    p.add_argument("--nano", default=str(NETWORKS["nano"]), help="the nano model file")
    p.add_argument("--repeats", type=int, default=9, help="timed rounds (default 9)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--val", default=str(SHARED / "val"), help="held-out photos (validation)")
    p.add_argument("--kodak", default=str(SHARED / "eval" / "kodak24"), help="Kodak photos")
    p.add_argument("--val-photos", type=int, default=10, help="how many of --val (default 10)")
    p.add_argument("--kodak-photos", type=int, default=8, help="how many of --kodak (default 8)")
    p.add_argument("--alternatives", action="store_true", help="compare recipe variants")
    p.add_argument(
        "--recipes", default=None, help=f"with --alternatives, of: {', '.join(ALTERNATIVES)}"
    )
    p.add_argument("--json", default=str(REPO / "outputs" / "bench_int8.json"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.recipes and any(r not in ALTERNATIVES for r in args.recipes.split(",")):
        raise SystemExit(f"--recipes: choose from {', '.join(ALTERNATIVES)}")
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    tune_malloc()  # as the CLIs do (process-wide): every backend is timed alike
    default = "slim,full" if args.alternatives else "full,slim,nano"
    networks = (args.networks or default).split(",")
    photos = held_out(Path(args.val), Path(args.kodak), args.val_photos, args.kodak_photos)
    env = {"cpu": cpu_name(), "threads": args.threads, "load_before": _loadavg()}
    if args.alternatives:
        rows = [r for n in networks for r in bench_alternatives(n, args, photos)]
    else:
        rows = [bench_network(n, args, photos) for n in networks]
    import onnxruntime

    env.update(onnxruntime=onnxruntime.__version__, torch=torch.__version__, load_after=_loadavg())
    (print_alternatives if args.alternatives else print_table)(rows, env)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
