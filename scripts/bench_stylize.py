"""Benchmark stylisation latency: model widths × backends × image sizes, on CPU or GPU.

    python scripts/bench_stylize.py                 # full table (several minutes on a 2-core CPU)
    python scripts/bench_stylize.py --quick         # 256² and 512² only, fewer repeats
    python scripts/bench_stylize.py --int8 --model checkpoints/starry_night.safetensors

Prints a Markdown table of the median latency (batch 1, one image) and images/s, and writes the
same rows as JSON (``--json``, default ``outputs/bench_stylize.json``). Backends:

* ``eager``: PyTorch ``TransformerNet`` as trained, NCHW (the baseline);
* ``deploy``: PyTorch ``fast_style.infer.export.DeployNet`` (the same function re-parameterised:
  sub-pixel decoder, row-split output conv), NCHW;
* ``channels_last``: ``DeployNet`` with channels_last tensors (``Stylizer``'s PyTorch path);
* ``compile``: ``torch.compile`` of the channels_last ``DeployNet``; each new shape compiles
  for minutes on a 2-core CPU, so on CPU it is timed at ``--compile-sizes`` only (512²);
* ``onnxruntime``: the model exported by ``fast_style.infer.export``, ONNX Runtime with all graph
  optimisations (``Stylizer``'s CPU default when no C compiler is available);
* ``fused``: ``fast_style.infer.backends.fused`` (PyTorch's oneDNN convolutions, the layers
  between them fused into C kernels built at first use; ``Stylizer``'s CPU default). The CLIs
  raise glibc's malloc thresholds, process-wide (``fast_style.infer.allocator``), so the script
  does that up front for every backend (``--no-malloc-tuning``: for none, to measure what it
  brings);
* ``ort-int8`` (``--int8``): ONNX Runtime static int8 quantisation (QDQ, per-channel weights),
  calibrated on photos, with its PSNR against fp32 on held-out photos;
* on GPU also ``fp16``/``bf16`` autocast (``--half``) of the channels_last ``DeployNet``, and
  ``fast``: bf16 + channels_last + ``torch.compile`` (one static graph per shape); ``fast-w``
  casts weights and input to bf16 instead of autocast (no per-call casts); more variants
  (``VARIANTS``): ``bf16w``, ``*-plain`` (``TransformerNet`` instead of ``DeployNet``),
  ``graphs`` (``fast-w`` + CUDA graphs, ``mode="reduce-overhead"``), ``autotune``
  (``mode="max-autotune-no-cudagraphs"``). On GPU the input is already in GPU memory.

``--styles N`` compares, instead, a multi-style network (N styles, conditional instance norm)
against today's one-style network of the same width: one style selected, a 50/50 mix, and with
``--style-mask`` two styles painted by a soft half/half mask, timed *interleaved* (each round
runs every variant once, in rotating order) and reported as medians and as the median of the
per-round ratios to the one-style network (robust to the host's drift). Backends there:
``fused`` (default), ``onnxruntime`` (weights only), ``deploy``. ``--baseline-rev REV`` adds,
for ``fused``, the one-style network run by the fused backend *as of git revision REV* (its
``fused.py`` and C source read with ``git show``, built and imported next to today's): the
ratios are then to that baseline, "today's single-style speed" before a change.

``--batch N`` times batches of N frames (video); ``--memory`` adds the peak GPU memory of a
3840×2160 photo stylised whole and in tiles through ``Stylizer``; ``--profile B1,B2`` prints
each backend's top CUDA kernels at 1920×1080.

Weights are random unless ``--model`` is given (latency does not depend on them; the int8 PSNR
does, so give a trained model for that). Speed targets (docs/benchmarks.md): on the 2-core
AVX2 reference CPU, 512² full width ≤ 0.60 s, slim ≤ 0.15 s.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from fast_style.core.device import resolve_device, sync_device
from fast_style.core.imaging import list_images, load_rgb, pil_to_tensor, resize_long_side
from fast_style.core.model_io import load_model
from fast_style.core.network import TransformerNet
from fast_style.infer.allocator import tune_malloc
from fast_style.infer.backends.fused import FusedRunner
from fast_style.infer.deploy import PaintedStyle
from fast_style.infer.export import DeployNet, to_onnx_bytes

REPO = Path(__file__).resolve().parents[1]
WIDTHS = {"full": (32, 64, 128), "slim": (16, 32, 64)}
SIZES = {
    "256²": (256, 256),
    "512²": (512, 512),
    "1024²": (1024, 1024),
    "1280×720": (720, 1280),
    "1920×1080": (1080, 1920),
    "3840×2160": (2160, 3840),
}
CPU_BACKENDS = ("eager", "deploy", "channels_last", "compile", "onnxruntime", "fused")
GPU_BACKENDS = ("eager", "deploy", "channels_last", "compile", "fp16", "bf16", "fast", "fast-w")
PHOTOS = REPO.parent / "shared" / "data" / "eval" / "kodak24"

Runner = Callable[[torch.Tensor], object]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def ort_session(onnx_bytes: bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


# PyTorch variants: name -> (DeployNet?, precision, channels_last, torch.compile mode or None).
# "autocast-*" keeps fp32 weights under autocast; "bf16" casts weights and input to bf16.
VARIANTS: dict[str, tuple[bool, str | None, bool, str | None]] = {
    "eager": (False, None, False, None),
    "deploy": (True, None, False, None),
    "channels_last": (True, None, True, None),
    "compile": (True, None, True, "default"),
    "fp16": (True, "autocast-fp16", True, None),
    "bf16": (True, "autocast-bf16", True, None),
    "fast": (True, "autocast-bf16", True, "default"),
    "bf16w": (True, "bf16", True, None),
    "bf16w-plain": (False, "bf16", True, None),
    "fast-w": (True, "bf16", True, "default"),
    "fast-w-plain": (False, "bf16", True, "default"),
    "graphs": (True, "bf16", True, "reduce-overhead"),
    "autotune": (True, "bf16", True, "max-autotune-no-cudagraphs"),
}
AUTOCAST = {"autocast-fp16": torch.float16, "autocast-bf16": torch.bfloat16}


def make_runner(backend: str, net: TransformerNet, device: torch.device, threads: int) -> Runner:
    """A callable running one forward pass of (B, 3, H, W) in [0, 1] with ``backend``."""
    if backend in ("onnxruntime", "ort-int8"):
        session = ort_session(
            to_onnx_bytes(net) if backend == "onnxruntime" else quantize_int8(net), threads
        )
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x.numpy()})[0]
    if backend == "fused":
        fused = FusedRunner(net, threads)
        return lambda x: fused(x)
    if backend not in VARIANTS:
        raise ValueError(f"unknown backend {backend!r}")
    deploy, precision, cl, mode = VARIANTS[backend]
    cast = torch.bfloat16 if precision == "bf16" else None
    fmt = torch.channels_last if cl else torch.contiguous_format
    # A copy: Module.to() works in place, and DeployNet shares layers with its net, so casting
    # or re-laying out one variant must not change the net the next variant is built from.
    model = copy.deepcopy(DeployNet(net) if deploy else net).eval()
    model = model.to(device, dtype=cast, memory_format=fmt)
    if mode is not None:
        model = torch.compile(model, dynamic=False, mode=mode)
    dtype = AUTOCAST.get(precision or "")

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, dtype=cast).contiguous(memory_format=fmt)
        with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype is not None):
            y = model(x)
        sync_device(device)
        return y

    return run


def profile_gpu(net: TransformerNet, device: torch.device, backends: list[str], top: int) -> None:
    """Print the ``top`` CUDA kernels by time for each backend at 1920×1080 (5 runs)."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand(1, 3, 1080, 1920, device=device)
    for backend in backends:
        run = make_runner(backend, net, device, 1)
        for _ in range(3):
            run(x)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                run(x)
        print(f"\n## profile: {backend}, 1920x1080, 5 runs", flush=True)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=top), flush=True)


def others_busy(interval: float = 0.5) -> float:
    """Share of all CPU time (0..1) used by *other* processes over ``interval`` seconds (Linux;
    0 elsewhere). This process sleeps meanwhile, so system busy time is the others'."""
    try:

        def snap() -> tuple[int, int]:
            with open("/proc/stat") as f:
                vals = [int(v) for v in f.readline().split()[1:9]]
            return sum(vals), vals[3] + vals[4]  # total, idle + iowait

        t0, i0 = snap()
        time.sleep(interval)
        t1, i1 = snap()
    except OSError:
        return 0.0
    return max(0.0, 1 - (i1 - i0) / max(1, t1 - t0))


def wait_idle(max_wait: float, threshold: float = 0.08) -> bool:
    """Wait (up to ``max_wait`` s) until other processes leave the CPU idle; True if they did."""
    deadline = time.monotonic() + max_wait
    while others_busy() > threshold:
        if time.monotonic() > deadline:
            return False
    return True


def time_runner(
    run: Runner,
    shape: tuple[int, int],
    repeats: int,
    warmup: int,
    idle_wait: float = 0,
    batch: int = 1,
    device: torch.device | None = None,
    cold: bool = False,
) -> tuple[list[float], int]:
    """Latencies of ``repeats`` runs, and how many of them started on an otherwise idle CPU.

    With ``idle_wait`` > 0 each run first waits up to that long for other jobs to pause, then
    (unless ``cold``) makes one untimed run: the host clocks its cores down while idle, and a
    run right after an idle pause was 20-30% slower for every backend (docs/benchmarks.md).
    On a GPU the input is created there: frame upload is not timed (as for decoded video)."""
    x = torch.rand(batch, 3, *shape, device=device if device and device.type == "cuda" else None)
    for _ in range(warmup):
        run(x)
    times, idle = [], 0
    for _ in range(repeats):
        if idle_wait > 0:
            idle += wait_idle(idle_wait)
            if not cold:
                run(x)
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return times, idle


# --- int8 ---------------------------------------------------------------------------------


def photos(n: int, long_side: int, skip: int = 0) -> list[torch.Tensor]:
    """Calibration/evaluation photos: Kodak from ../shared if present, else synthetic ones."""
    if PHOTOS.is_dir():
        files = list_images(PHOTOS)[skip : skip + n]
        return [pil_to_tensor(resize_long_side(load_rgb(f), long_side))[None] for f in files]
    g = torch.Generator().manual_seed(skip)
    small = [torch.rand(1, 3, 6, 8, generator=g) for _ in range(n)]
    return [
        torch.nn.functional.interpolate(s, (long_side * 3 // 4, long_side), mode="bicubic").clamp(
            0, 1
        )
        for s in small
    ]


def quantize_int8(net: TransformerNet, calib: int = 16, size: int = 256) -> bytes:
    """Static int8 QDQ quantisation with ONNX Runtime: per-channel int8 weights, uint8
    activations, percentile calibration on ``size``² crops of ``calib`` photos. The first and
    the last conv (image in, image out: the most sensitive layers) stay in fp32. The best of
    the variants tried on the trained demo model: MinMax 32.4 dB, entropy 32.4 dB, percentile
    35.1 dB mean PSNR; quantising the first and last convs as well cost another 2 dB."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Histogram calibrations need equally sized inputs: centre crops.
    data = [_centre_crop(x, size).numpy() for x in photos(calib, size * 3 // 2)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(data)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"image": x}

    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre, q = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        fp32.write_bytes(to_onnx_bytes(net))
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
        quantize_static(
            str(pre),
            str(q),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=[convs[0], convs[-1]],
            calibrate_method=CalibrationMethod.Percentile,
        )
        return q.read_bytes()


def _centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    y, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return x[..., y : y + size, x0 : x0 + size].contiguous()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def int8_quality(net: TransformerNet, threads: int, n: int = 8, size: int = 512) -> float:
    """Mean PSNR (dB) of int8 against fp32 ONNX Runtime on ``n`` held-out photos."""
    fp32 = ort_session(to_onnx_bytes(net), threads)
    int8 = ort_session(quantize_int8(net), threads)
    scores = []
    for x in photos(n, size, skip=16):  # not the calibration photos
        a = fp32.run(None, {"image": x.numpy()})[0]
        b = int8.run(None, {"image": x.numpy()})[0]
        scores.append(psnr(a, b))
    return statistics.mean(scores)


# --- multi-style ----------------------------------------------------------------------------

StyleArg = torch.Tensor | PaintedStyle | None


def style_variants(n: int, shape: tuple[int, int], mask: bool) -> dict[str, StyleArg]:
    """The style inputs timed with ``--styles n``: one style, a 50/50 mix, and (``mask``) two
    styles painted by a half/half mask with a soft 16-pixel edge (like a feathered mask)."""
    eye = torch.eye(n)
    out: dict[str, StyleArg] = {"one style": eye[:1], "mix 50/50": (eye[0] + eye[1])[None] / 2}
    if mask:
        h, w = shape
        ramp = ((w / 2 + 8 - torch.arange(w, dtype=torch.float32)) / 16).clamp(0, 1)
        out["painted 2 styles"] = PaintedStyle(eye[:2], ramp.expand(1, 1, h, w).contiguous())
    return out


def make_style_runner(backend: str, net: TransformerNet, threads: int, style: StyleArg) -> Runner:
    """One forward pass of ``net`` with ``style`` (None: a one-style network) by ``backend``."""
    if backend == "fused":
        fused = FusedRunner(net, threads)
        return lambda x: fused(x, style=style)
    if backend == "onnxruntime":
        if isinstance(style, PaintedStyle):
            raise ValueError("the ONNX export takes style weights only")
        session = ort_session(to_onnx_bytes(net), threads)
        feed = {} if style is None else {"style": style.numpy()}
        return lambda x: session.run(None, {"image": x.numpy(), **feed})[0]
    if backend == "deploy":
        d = DeployNet(copy.deepcopy(net)).eval()
        smap = style.to_map() if isinstance(style, PaintedStyle) else style

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return d(x) if smap is None else d(x, smap)

        return run
    raise ValueError(f"--styles times fused, onnxruntime or deploy, not {backend!r}")


def fused_at_revision(rev: str) -> type:
    """``FusedRunner`` of the fused backend as of git revision ``rev``: its ``fused.py`` and
    ``csrc/fused_glue.c`` (``git show``, read-only) in a temporary folder, imported under
    another module name against today's other modules, its kernels built from that source
    (their own cache key). The A/B baseline of ``--baseline-rev``."""
    root = Path(tempfile.mkdtemp(prefix="fast_style_rev_"))
    (root / "csrc").mkdir()
    for rel, dst in (("fused.py", "fused_rev.py"), ("csrc/fused_glue.c", "csrc/fused_glue.c")):
        spec = f"{rev}:fast_style/infer/backends/{rel}"
        res = subprocess.run(["git", "-C", str(REPO), "show", spec], capture_output=True)
        if res.returncode != 0:
            raise SystemExit(f"--baseline-rev: git show {spec} failed: {res.stderr.decode()}")
        (root / dst).write_bytes(res.stdout)
    name = f"fast_style_fused_{rev.replace('~', '_').replace('^', '_')}"
    mod_spec = importlib.util.spec_from_file_location(name, root / "fused_rev.py")
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    mod_spec.loader.exec_module(module)
    return module.FusedRunner


def bench_styles(args: argparse.Namespace, threads: int) -> list[dict]:
    """``--styles``: interleaved rounds of the one-style network and the multi-style variants,
    per width, backend and size; one row per variant with its median and paired ratio (to the
    first variant: the one-style network, or with ``--baseline-rev`` that revision's)."""
    rows = []
    baseline = fused_at_revision(args.baseline_rev) if args.baseline_rev else None
    for width in args.widths.split(","):
        for backend in (args.backends or "fused").split(","):
            for size in (args.sizes or "512²").split(","):
                shape = SIZES[size]
                torch.manual_seed(0)
                single = TransformerNet(WIDTHS[width]).eval()
                runners: dict[str, Runner] = {}
                if baseline is not None and backend == "fused":
                    old = baseline(single, threads)
                    runners[f"one-style network @{args.baseline_rev}"] = old
                runners["one-style network"] = make_style_runner(backend, single, threads, None)
                torch.manual_seed(0)
                multi = TransformerNet(WIDTHS[width], num_styles=args.styles).eval()
                for name, style in style_variants(args.styles, shape, args.style_mask).items():
                    try:
                        runners[name] = make_style_runner(backend, multi, threads, style)
                    except ValueError as e:
                        print(f"skip {width}/{backend}/{name}: {e}", file=sys.stderr)
                times = interleaved(runners, shape, args.repeats or 15, args.wait_idle)
                rows += style_rows(width, backend, size, times)
    return rows


def interleaved(
    runners: dict[str, Runner], shape: tuple[int, int], rounds: int, idle_wait: float
) -> dict[str, dict[str, list[float]]]:
    """``rounds`` rounds; each runs every runner once (order rotated by one each round), after
    an optional idle wait and one untimed warm run (as ``time_runner``). Returns per runner the
    wall-clock times and this process's CPU times (``time.process_time``: all its threads; on
    a busy host it is not inflated by waiting for the cores, a steadier A/B measure with
    ``--threads 1``, where no OpenMP worker spins)."""
    x = torch.rand(1, 3, *shape)
    names = list(runners)
    for name in names:
        runners[name](x)  # warm-up: allocations, oneDNN primitive caches
    times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if idle_wait > 0:
                wait_idle(idle_wait)
            runners[name](x)
            c0, t0 = time.process_time(), time.perf_counter()
            runners[name](x)
            times[name]["wall"].append(time.perf_counter() - t0)
            times[name]["cpu"].append(time.process_time() - c0)
    return times


def style_rows(
    width: str, backend: str, size: str, times: dict[str, dict[str, list[float]]]
) -> list[dict]:
    """Rows of ``bench_styles``: each variant's median and minimum, and the median over rounds
    of its time divided by the first variant's (the baseline) in the same round (wall and CPU
    time)."""
    base = next(iter(times.values()))
    rows = []
    for name, ts in times.items():
        row = {"width": width, "backend": backend, "size": size, "variant": name}
        for kind in ("wall", "cpu"):
            paired = (t / b for t, b in zip(ts[kind], base[kind], strict=True))
            suffix = "" if kind == "wall" else "_cpu"
            row[f"median_s{suffix}"] = round(statistics.median(ts[kind]), 4)
            row[f"min_s{suffix}"] = round(min(ts[kind]), 4)
            row[f"paired_ratio{suffix}"] = round(statistics.median(paired), 4)
        row["rounds"] = len(ts["wall"])
        rows.append(row)
        med, ratio = row["median_s"] * 1e3, row["paired_ratio"]
        line = f"{width:>5} {backend:<12} {size:>6} {name:<18} {med:8.1f} ms x{ratio:.3f}"
        print(f"{line} (CPU time x{row['paired_ratio_cpu']:.3f})", file=sys.stderr, flush=True)
    return rows


def print_style_table(rows: list[dict], env: dict) -> None:
    head = f"{env['device']}, {env['threads']} threads, torch {env['torch']}"
    print(f"\n{head}, {env['styles']} styles, load average {env['load_average']}")
    print(f"baseline (paired ratios): the first row of each width, {env['baseline']}\n")
    print(
        "| width | backend | size | variant | median s (min) | vs baseline, paired median |"
        " CPU time s | vs baseline, CPU time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["width"], r["backend"], r["size"], r["variant"]]
        cells += [f"{r['median_s']:.3f} ({r['min_s']:.3f})", _pct(r["paired_ratio"])]
        cells += [f"{r['median_s_cpu']:.3f}", _pct(r["paired_ratio_cpu"])]
        print("| " + " | ".join(cells) + " |")


def _pct(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.1f}%"


# --- main ---------------------------------------------------------------------------------


def peak_memory_4k(net: TransformerNet, device: torch.device) -> dict[str, float]:
    """Peak GPU memory (GiB, bf16) stylising one 3840×2160 photo whole and in 512 px tiles."""
    from fast_style.infer.stylizer import Stylizer

    out = {}
    x = torch.rand(1, 3, 2160, 3840, device=device)
    st = Stylizer(net, device=str(device), half="bf16", backend="eager")
    for name, tile in (("whole", None), ("tiled_512", 512)):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        st.stylize_tensor(x, tile=tile, overlap=32)
        torch.cuda.synchronize()
        out[f"{name}_gib"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 3)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="256² and 512² only, 3 repeats")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--widths", default="full,slim", help="comma list of: full, slim")
    p.add_argument("--backends", default=None, help="comma list (default: all for the device)")
    p.add_argument("--sizes", default=None, help=f"comma list of: {', '.join(SIZES)}")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per cell (default 7)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--model", default=None, help="use this model's weights (and width)")
    p.add_argument("--int8", action="store_true", help="add ONNX Runtime int8 and its PSNR")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="S",
        help="before each timed run wait up to S s for other processes to leave the CPU idle",
    )
    p.add_argument(
        "--cold",
        action="store_true",
        help="with --wait-idle: time the first run after the idle pause (no re-warm run)",
    )
    p.add_argument("--batch", type=int, default=1, help="images per forward (times per image)")
    p.add_argument("--memory", action="store_true", help="GPU: peak memory at 3840×2160")
    p.add_argument(
        "--profile",
        default=None,
        metavar="BACKENDS",
        help="GPU: print the top CUDA kernels of these backends (comma list) at 1920×1080",
    )
    p.add_argument("--compile-sizes", default="512²", help="sizes timed with torch.compile on CPU")
    p.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="leave glibc's malloc thresholds alone, for every backend (A/B of the tuning)",
    )
    p.add_argument(
        "--styles",
        type=int,
        default=0,
        metavar="N",
        help="compare an N-style network (one style, a mix) with the one-style network",
    )
    p.add_argument(
        "--style-mask", action="store_true", help="with --styles: also two styles painted by a mask"
    )
    p.add_argument(
        "--baseline-rev",
        default=None,
        metavar="REV",
        help="with --styles: also time the fused backend of git revision REV as the baseline",
    )
    p.add_argument("--json", default=str(REPO / "outputs" / "bench_stylize.json"))
    return p


def _net(width: str, model: str | None) -> TransformerNet:
    if model:
        return load_model(model, "cpu")[0]
    torch.manual_seed(0)
    return TransformerNet(WIDTHS[width]).eval()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    # The CLIs raise glibc's malloc thresholds (fast_style.infer.allocator.tune_malloc) and
    # that is process-wide: set it up front so that every PyTorch backend is timed alike.
    if args.no_malloc_tuning:
        os.environ["FAST_STYLE_MALLOC_TUNING"] = "0"  # the fused backend would set it too
    malloc_tuned = tune_malloc()
    gpu = device.type == "cuda"
    if args.styles:
        return main_styles(args, threads, malloc_tuned)
    default = GPU_BACKENDS if gpu else CPU_BACKENDS
    backends = args.backends.split(",") if args.backends else list(default)
    if args.int8 and not gpu:
        backends.append("ort-int8")
    quick_sizes = ["256²", "512²"]
    gpu_only = ("1280×720", "3840×2160")  # video batches; a minute a run on the 2-core CPU
    default_sizes = list(SIZES) if gpu else [k for k in SIZES if k not in gpu_only]
    sizes = args.sizes.split(",") if args.sizes else (quick_sizes if args.quick else default_sizes)
    repeats = args.repeats or (3 if args.quick else 7)
    if args.model:
        widths = [str(load_model(args.model)[1].get("width") or "model")]
    else:
        widths = args.widths.split(",")
    rows = []
    for width in widths:
        for backend in backends:
            try:
                run = make_runner(backend, _net(width, args.model), device, threads)
            except Exception as e:  # a missing optional backend is reported, not fatal
                msg = str(e).splitlines()[0][:120] if str(e) else ""
                print(f"skip {width}/{backend}: {type(e).__name__}: {msg}", file=sys.stderr)
                continue
            for size in sizes:
                if backend == "compile" and not gpu and size not in args.compile_sizes.split(","):
                    continue
                compiled = backend in VARIANTS and VARIANTS[backend][3] is not None
                warmup = 3 if compiled else 1  # compile, and record CUDA graphs
                times, idle = time_runner(
                    run, SIZES[size], repeats, warmup, args.wait_idle, args.batch, device, args.cold
                )
                med = statistics.median(times) / args.batch
                rows.append(
                    {
                        "width": width,
                        "backend": backend,
                        "size": size,
                        "median_s": round(med, 4),
                        "min_s": round(min(times) / args.batch, 4),
                        "batch": args.batch,
                        "images_per_s": round(1 / med, 2),
                        "runs_on_idle_cpu": f"{idle}/{repeats}"
                        if args.wait_idle
                        else "not checked",
                    }
                )
                print(
                    f"{width:>5} {backend:<14} {size:>10} {med * 1e3:8.1f} ms {1 / med:7.2f} img/s",
                    file=sys.stderr,
                    flush=True,
                )
    if args.profile and gpu:
        profile_gpu(_net(widths[0], args.model), device, args.profile.split(","), 20)
    if args.memory and gpu:
        env_memory = peak_memory_4k(_net("full", args.model), device)
        print(json.dumps(env_memory), file=sys.stderr)
    else:
        env_memory = None
    quality = {}
    if args.int8 and not gpu:
        for width in widths:
            quality[width] = round(int8_quality(_net(width, args.model), threads), 2)
    env = {
        "device": torch.cuda.get_device_name(device) if gpu else cpu_name(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
        "load_average": _loadavg(),
        "weights": args.model or "random",
        "malloc_tuned": malloc_tuned,
        "cold_runs": bool(args.cold and args.wait_idle),
        "peak_memory_3840x2160": env_memory,
    }
    print_table(rows, sizes, env, quality)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "rows": rows, "int8_psnr_db": quality}, indent=2))
    print(f"\nwrote {out}")
    return 0


def main_styles(args: argparse.Namespace, threads: int, malloc_tuned: bool) -> int:
    """``main`` for ``--styles``: the multi-style comparison (CPU)."""
    if args.styles < 2:
        raise SystemExit("--styles needs at least 2 styles")
    rows = bench_styles(args, threads)
    env = {
        "device": cpu_name(),
        "threads": threads,
        "torch": torch.__version__,
        "load_average": _loadavg(),
        "malloc_tuned": malloc_tuned,
        "styles": args.styles,
        "weights": "random",
        "baseline": args.baseline_rev or "one-style network",
        "rounds": args.repeats or 15,
    }
    print_style_table(rows, env)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


def print_table(rows: list[dict], sizes: list[str], env: dict, quality: dict) -> None:
    print(
        f"\n{env['device']}, {env['threads']} threads, torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}, load average {env['load_average']}\n"
    )
    print("| width | backend | " + " | ".join(f"{s} s (img/s)" for s in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    keys = dict.fromkeys((r["width"], r["backend"]) for r in rows)
    for width, backend in keys:
        cells = []
        for s in sizes:
            key = (width, backend, s)
            r = next((r for r in rows if (r["width"], r["backend"], r["size"]) == key), None)
            cells.append(f"{r['median_s']:.3f} ({r['images_per_s']:.2f})" if r else "-")
        print(f"| {width} | {backend} | " + " | ".join(cells) + " |")
    for width, db in quality.items():
        print(f"\nint8 ({width}): PSNR against fp32 = {db:.2f} dB (mean over held-out photos)")


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
