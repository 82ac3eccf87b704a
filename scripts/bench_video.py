"""Video speed: ``stylize_video`` end to end (decode and encode included) against the network's
own frame rate on the same frames, for the full-width and the slim shipped models.

    python scripts/fetch_footage.py          # optional: real footage (Big Buck Bunny, CC BY 3.0)
    python scripts/bench_video.py [--frames 40] [--batch 4] [--rounds 2] [--codec h264]

The clip is the first ``--frames`` frames of ``data/footage/bigbuckbunny_640x360.mp4`` (its
sound remuxed) when present, else a synthetic 640×360 camera path over a Kodak photo with a sine
tone. Each round times the network alone (``Stylizer.stylize_tensor`` on the decoded frames, in
batches of ``--batch``) and then the whole pipeline, back to back, so that a busy host slows
both alike; the table gives the medians and the median per-round ratio. Target (issue): end to
end within 15 % of the network's frame rate. ``--stabilise`` runs the pipeline with
``stylize.py``'s default frame function for clips (the flow blend) instead of the bare network:
the blend in its own pipeline stage (``--inline``: on the network's thread, as before).
Prints Markdown; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from fast_style.core.fileio import atomic_write
from fast_style.core.imaging import pil_to_tensor
from fast_style.core.resources import shipped_models_dir
from fast_style.infer.allocator import tune_malloc
from fast_style.infer.clip_jobs import ClipOptions, ClipStylizer
from fast_style.infer.stylizer import Stylizer
from fast_style.video import (
    ClipWriter,
    Frame,
    encoder_settings,
    iter_frames,
    pipeline,
    probe,
    read_clip,
    stylize_video,
)
from fast_style.video.clips import camera_path_clip
from fast_style.video.io import open_input
from fast_style.video.pipeline import Staged

FOOTAGE = Path("data/footage/bigbuckbunny_640x360.mp4")
MODELS = {"full": "starry_night.safetensors", "slim": "starry_night_cpu_demo.safetensors"}


def first_frames(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` frames of ``src`` re-encoded into ``dst`` (CRF 18), every sound packet
    remuxed (the sound may run past the last frame)."""
    info = probe(src)
    size = (info.width, info.height)
    with atomic_write(dst) as tmp, open_input(src) as tpl:
        w = ClipWriter(
            tmp,
            encoder_settings(dst, *size),
            size=size,
            time_base=info.time_base,
            fps=info.fps,
            audio=[tpl.streams[a.index] for a in info.audio],
        )
        for item in read_clip(info):
            if not isinstance(item, Frame):
                w.write_audio(item)
            elif item.index < n:
                w.write_frame(item.image, item.pts)
        w.close()
    return dst


def bench_clip(folder: Path, n: int) -> tuple[Path, str]:
    if FOOTAGE.is_file():
        return first_frames(FOOTAGE, folder / "bbb.mp4", n), f"{FOOTAGE.name} (first {n} frames)"
    clip = camera_path_clip(None, folder / "pan.mp4", (640, 360), n, 25, "pan").path
    return clip, f"synthetic 640×360 pan, {n} frames"


def network_fps(st: Stylizer, frames: list[Image.Image], batch: int) -> float:
    """The network alone, as ``stylize_video`` calls it (batches, inference mode), timing only
    the calls. Each batch's tensor is built just before its call: tensors decoded ahead sit
    untouched between rounds and, on a host short of memory, are paged out, which made the
    network look slower alone than inside the pipeline."""
    seconds = 0.0
    with torch.inference_mode():
        for i in range(0, len(frames), batch):
            x = torch.stack([pil_to_tensor(img) for img in frames[i : i + batch]])
            t0 = time.perf_counter()
            st.stylize_tensor(x)
            seconds += time.perf_counter() - t0
    return len(frames) / seconds


class _Timed:
    """A frame function with the seconds spent in its network part counted; staged
    (``head``/``tail``, as ``stylize_video`` runs the flow blend in its own thread) unless
    ``inline``."""

    def __init__(self, fn: Any, inline: bool) -> None:
        self.fn, self.seconds = fn, 0.0
        if isinstance(fn, Staged) and not inline:
            self.head, self.tail = self._head, fn.tail

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        y = self.fn.head(x)
        self.seconds += time.perf_counter() - t0
        return y

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        y = self.fn(x)
        self.seconds += time.perf_counter() - t0
        return y


def pipeline_fps(
    st: Stylizer, clip: Path, out: Path, args: argparse.Namespace
) -> tuple[float, float]:
    """(frames/s end to end, share of the wall time spent inside the network): the network
    alone, or with ``--stabilise`` stylize.py's default frame function for clips
    (``ClipStylizer``: the output blended along the motion, ``fast_style.video.stabilize``)."""
    frame_fn = ClipStylizer(st, ClipOptions()) if args.stabilise else st.stylize_tensor
    fn = _Timed(frame_fn, args.inline)
    report = stylize_video(clip, out, fn, batch=args.batch, codec=args.codec, progress=False)
    return report.fps, fn.seconds / report.seconds


def bench_model(name: str, clip: Path, args: argparse.Namespace, tmp: Path) -> dict:
    st = Stylizer(shipped_models_dir() / MODELS[name], device="cpu")
    frames = list(iter_frames(clip))
    network_fps(st, frames[: args.batch], args.batch)  # warm-up: backend build, allocator
    nets, pipes, shares = [], [], []
    ext = ".mkv" if args.codec == "vp9" else ".mp4"  # Matroska holds VP9 and AAC
    for r in range(args.rounds):
        # Alternate which goes first, so that a drifting host load favours neither.
        for which in ("net", "pipe") if r % 2 == 0 else ("pipe", "net"):
            if which == "net":
                nets.append(network_fps(st, frames, args.batch))
            else:
                fps, share = pipeline_fps(st, clip, tmp / f"out{ext}", args)
                pipes.append(fps)
                shares.append(share)
    ratios = [p / n for p, n in zip(pipes, nets, strict=True)]
    return {
        "model": name,
        "network_fps": statistics.median(nets),
        "pipeline_fps": statistics.median(pipes),
        "ratio": statistics.median(ratios),
        "network_share": statistics.median(shares),
        "rounds": {"network": nets, "pipeline": pipes},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--models", default="full,slim")
    p.add_argument("--codec", default=None, help="h264 (mp4, default) or vp9 (mkv)")
    p.add_argument(
        "--stabilise",
        action="store_true",
        help="end to end with stylize.py's default for clips (the flow blend), not the bare "
        "network",
    )
    p.add_argument(
        "--inline",
        action="store_true",
        help="with --stabilise: the blend on the network's thread, not in its own stage",
    )
    p.add_argument(
        "--tail-threads",
        type=int,
        default=None,
        help="intra-op threads of the blend's stage (default: the network's)",
    )
    p.add_argument("--json", type=Path, default=Path("outputs/bench_video.json"))
    args = p.parse_args()
    pipeline.TAIL_THREADS = args.tail_threads
    tune_malloc()  # as the command-line tools do (fast_style.infer.allocator)
    with tempfile.TemporaryDirectory() as d:
        clip, what = bench_clip(Path(d), args.frames)
        rows = [bench_model(m, clip, args, Path(d)) for m in args.models.split(",")]
    load = os.getloadavg()[0]
    print(f"{what}, batch {args.batch}, {torch.get_num_threads()} threads, load {load:.1f}\n")
    print(
        "| model | network alone, frames/s | end to end, frames/s | end to end / network "
        "| wall time inside the network |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['model']} | {r['network_fps']:.2f} | {r['pipeline_fps']:.2f} | "
            f"{r['ratio']:.0%} | {r['network_share']:.0%} |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"clip": what, "batch": args.batch, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
