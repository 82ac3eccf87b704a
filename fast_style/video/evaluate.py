"""Flicker, measured: the rows of ``fast-style evaluate video`` (its command line is
``fast_style.baseline.video_eval``, which brings the model and its losses).

Rows: ``input`` (the identity: the floor that flow errors leave), ``per-frame`` (the network on
each frame alone), and whatever stabilised rows a caller adds. For each: E_warp (Lai et al.
2018, ``fast_style.video.metrics``) with the flow of the input clip, the share of pixels the
occlusion check keeps, the frame function's own frames/s, and, given a ``losses_fn(frames_in,
frames_out) -> {name: value}`` (the model's content and style losses), their means.

The clip is decoded once and every row sees the same batches in order (so a stateful
stabiliser works), and the flows are computed once, for all rows. A synthetic benchmark follows:
camera paths (pan, zoom, rotation) over the held-out Kodak photos with exact flow and masks, so
no flow error enters. Writes ``results.json``, ``results.md`` and ``strip.png`` (input | rows
for a few frames).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from fast_style.core.fileio import atomic_write
from fast_style.core.imaging import pil_to_tensor, tensor_to_pil
from fast_style.core.resources import photos_dir
from fast_style.video.clips import KINDS, render_camera_path
from fast_style.video.io import VideoError, iter_frames, probe
from fast_style.video.metrics import InputFlow, WarpErrorMeter

FrameFn = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) float [0, 1] → the same
LossesFn = Callable[[torch.Tensor, torch.Tensor], Mapping[str, float]]
STRIP_FRAMES = 4  # columns of the side-by-side strip
STRIP_HEIGHT = 160  # pixels per row of the strip


@dataclass
class _Row:
    """One row's running totals."""

    fn: FrameFn
    meter: WarpErrorMeter = field(default_factory=WarpErrorMeter)
    seconds: float = 0.0
    frames: int = 0
    losses: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    strip: list[Image.Image] = field(default_factory=list)

    def summary(self, name: str) -> dict[str, Any]:
        r = self.meter.result()
        means = {
            k: sum(v * n for v, n in xs) / sum(n for _, n in xs) for k, xs in self.losses.items()
        }
        return {
            "name": name,
            "e_warp": r["e_warp"],
            "valid_fraction": r["valid_fraction"],
            "pairs": r["pairs"],
            "fps": self.frames / self.seconds if self.seconds > 0 else float("inf"),
            "losses": means,
        }


def _batches(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_batch(row: _Row, x: torch.Tensor, pairs: list, keep: list[int], losses_fn: Any) -> None:
    """Run one row's function on a batch, time it, feed the meter, the losses and the strip."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        y = row.fn(x)
    row.seconds += time.perf_counter() - t0
    row.frames += x.shape[0]
    for i, pair in enumerate(pairs):
        row.meter.update(y[i], pair)
    if losses_fn is not None:
        for k, v in losses_fn(x, y).items():
            row.losses.setdefault(k, []).append((float(v), x.shape[0]))
    row.strip += [tensor_to_pil(y[i]) for i in keep]


def _strip_indices(total: int | None) -> set[int]:
    if not total:
        return set(range(STRIP_FRAMES))
    return {round(i) for i in np.linspace(0, total - 1, min(STRIP_FRAMES, total))}


def _evaluate_stream(
    frames: Iterable[Image.Image | np.ndarray],
    rows: Mapping[str, FrameFn],
    *,
    batch: int,
    total: int | None,
    exact: tuple[np.ndarray, np.ndarray] | None = None,
    losses_fn: LossesFn | None = None,
) -> tuple[list[dict[str, Any]], list[Image.Image], list[Image.Image]]:
    """Feed ``frames`` to every row in the same batches; flows from the input (DIS) or
    ``exact`` = (flows, masks). Returns the row summaries, the strip's input frames, and the
    strip's output frames row by row (concatenated). A stateful row (a temporal stabiliser with
    a ``reset()``) starts afresh: this is a new clip."""
    for fn in rows.values():
        reset = getattr(fn, "reset", None)
        if callable(reset):
            reset()
    state = {name: _Row(fn) for name, fn in rows.items()}
    flows, shown = InputFlow(), _strip_indices(total)
    strip_in: list[Image.Image] = []
    t = 0
    for chunk in _batches(frames, batch):
        imgs = [f if isinstance(f, Image.Image) else Image.fromarray(f) for f in chunk]
        x = torch.stack([pil_to_tensor(img) for img in imgs])
        pairs = [
            (None if t + i == 0 else (exact[0][t + i - 1], exact[1][t + i - 1]))
            if exact is not None
            else flows.update(img)
            for i, img in enumerate(imgs)
        ]
        keep = [i for i in range(len(imgs)) if t + i in shown]
        strip_in += [imgs[i] for i in keep]
        for row in state.values():
            _run_batch(row, x, pairs, keep, losses_fn)
        t += len(imgs)
    if t < 2:
        raise VideoError(f"E_warp needs at least 2 frames, got {t}")
    summaries = [row.summary(name) for name, row in state.items()]
    return summaries, strip_in, [img for row in state.values() for img in row.strip]


def evaluate_rows(
    src: str | Path,
    rows: Mapping[str, FrameFn],
    *,
    batch: int = 4,
    max_frames: int | None = None,
    size: int | None = None,
    losses_fn: LossesFn | None = None,
) -> dict[str, Any]:
    """E_warp, frames/s (and losses) of each row on the clip ``src``, long side ≤ ``size``, the
    first ``max_frames`` frames. Returns {"clip", "frames", "size", "rows", "strip"}; "strip" is
    (inputs, outputs row by row) as images, for ``write_report``."""
    info = probe(src)
    known = [n for n in (info.frames_estimate, max_frames) if n]
    total = min(known) if known else None  # for the strip's frame choice
    frames = iter_frames(src, max_size=size, max_frames=max_frames)
    summaries, strip_in, strip_out = _evaluate_stream(
        frames, rows, batch=batch, total=total, losses_fn=losses_fn
    )
    w, h = strip_in[0].size
    return {
        "clip": str(src),
        "frames": summaries[0]["pairs"] + 1 if summaries else 0,
        "size": [w, h],
        "rows": summaries,
        "strip": (strip_in, strip_out),
    }


def synthetic_benchmark(
    rows: Mapping[str, FrameFn],
    *,
    photos: Sequence[str | Path] | None = None,
    size: tuple[int, int] = (256, 144),
    frames: int = 16,
    batch: int = 4,
    losses_fn: LossesFn | None = None,
) -> dict[str, Any]:
    """E_warp of each row with exact flow: camera paths (``KINDS``) over ``photos`` (default:
    the shipped Kodak photos, held out from training). Returns {"size", "frames", "photos",
    "rows": [{"name", "e_warp": {kind: mean over photos, "mean": …}, "fps"}]}."""
    photos = list(photos) if photos is not None else sorted(photos_dir().glob("*.jpg"))
    per: dict[str, dict[str, list[float]]] = {name: {k: [] for k in KINDS} for name in rows}
    speed: dict[str, list[float]] = {name: [] for name in rows}
    losses: dict[str, list[dict[str, float]]] = {name: [] for name in rows}
    for photo in photos:
        for kind in KINDS:
            cam = render_camera_path(photo, size, frames, kind)
            summaries, _, _ = _evaluate_stream(
                list(cam.frames),
                rows,
                batch=batch,
                total=frames,
                exact=(cam.flows, cam.masks),
                losses_fn=losses_fn,
            )
            for s in summaries:
                per[s["name"]][kind].append(s["e_warp"])
                speed[s["name"]].append(s["fps"])
                if s.get("losses"):
                    losses[s["name"]].append(s["losses"])
    out_rows = []
    for name in rows:
        e = {k: float(np.mean(v)) for k, v in per[name].items()}
        e["mean"] = float(np.mean(list(e.values())))
        row: dict[str, Any] = {"name": name, "e_warp": e, "fps": float(np.mean(speed[name]))}
        if losses[name]:
            row["losses"] = {
                k: float(np.mean([d[k] for d in losses[name]])) for k in losses[name][0]
            }
        out_rows.append(row)
    return {
        "size": list(size),
        "frames": frames,
        "photos": [Path(p).name for p in photos],
        "rows": out_rows,
    }


def identity(x: torch.Tensor) -> torch.Tensor:
    """The ``input`` row: the clip itself, the floor of E_warp."""
    return x


def _fmt(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"


def markdown(results: Mapping[str, Any]) -> str:
    """The results as Markdown tables: the clip's rows, then the synthetic benchmark's."""
    w, h = results["size"]
    keys = sorted({k for r in results["rows"] for k in r["losses"]})
    lines = [
        f"E_warp (Lai et al. 2018; DIS flow of the input) on `{Path(results['clip']).name}`, "
        f"{results['frames']} frames at {w}×{h}:",
        "",
        "| row | E_warp | valid pixels | frames/s |" + "".join(f" {k} |" for k in keys),
        "| --- | ---: | ---: | ---: |" + " ---: |" * len(keys),
    ]
    for r in results["rows"]:
        losses = "".join(f" {_fmt(r['losses'].get(k))} |" for k in keys)
        lines.append(
            f"| {r['name']} | {_fmt(r['e_warp'])} | {r['valid_fraction']:.0%} | "
            f"{_fmt(r['fps'])} |{losses}"
        )
    syn = results.get("synthetic")
    if syn:
        sw, sh = syn["size"]
        lines += [
            "",
            f"Synthetic camera paths, exact flow and masks ({sw}×{sh}, {syn['frames']} frames, "
            f"photos {', '.join(syn['photos'])}):",
            "",
            "| row |"
            + "".join(f" {k} |" for k in KINDS)
            + " mean | frames/s |"
            + "".join(f" {k} |" for k in keys),
            "| --- |" + " ---: |" * (len(KINDS) + 2 + len(keys)),
        ]
        for r in syn["rows"]:
            cells = "".join(f" {_fmt(r['e_warp'][k])} |" for k in (*KINDS, "mean"))
            extra = "".join(f" {_fmt(r.get('losses', {}).get(k))} |" for k in keys)
            lines.append(f"| {r['name']} |{cells} {_fmt(r['fps'])} |{extra}")
    return "\n".join(lines) + "\n"


def strip_image(
    inputs: Sequence[Image.Image], outputs: Sequence[Image.Image], names: Sequence[str]
) -> Image.Image:
    """A grid: one row per name (``input`` first, then ``outputs`` row by row), one column per
    frame, each cell ``STRIP_HEIGHT`` pixels high, labelled on the left."""
    k = len(inputs)
    w0, h0 = inputs[0].size
    cw = max(1, round(w0 * STRIP_HEIGHT / h0))
    label = 110
    grid = Image.new("RGB", (label + k * cw, (len(names) + 1) * STRIP_HEIGHT), "white")
    draw = ImageDraw.Draw(grid)
    cells = [list(inputs)] + [list(outputs[i * k : (i + 1) * k]) for i in range(len(names))]
    for r, (name, row) in enumerate(zip(["input", *names], cells, strict=True)):
        # Pillow's built-in font has no Greek letters: "α" would be drawn as an empty box.
        text = name.replace("α=", "alpha ")
        draw.text((4, r * STRIP_HEIGHT + STRIP_HEIGHT // 2), text, fill="black")
        for c, img in enumerate(row):
            grid.paste(img.resize((cw, STRIP_HEIGHT)), (label + c * cw, r * STRIP_HEIGHT))
    return grid


def _jsonable(x: Any) -> Any:
    """NaN and infinity as null (JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``strip.png`` to ``out_dir`` (crash-safely)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in results.items() if k != "strip"}
    paths = {"json": out / "results.json", "md": out / "results.md", "strip": out / "strip.png"}
    with atomic_write(paths["json"]) as tmp:
        tmp.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    with atomic_write(paths["md"]) as tmp:
        tmp.write_text(markdown(results))
    inputs, outputs = results["strip"]
    k = len(inputs)
    # The strip's first row is the clip; an identity row named "input" would repeat it.
    kept = [(i, r["name"]) for i, r in enumerate(results["rows"]) if r["name"] != "input"]
    names = [name for _, name in kept]
    outputs = [img for i, _ in kept for img in outputs[i * k : (i + 1) * k]]
    with atomic_write(paths["strip"]) as tmp:
        strip_image(inputs, outputs, names).save(tmp, format="PNG")
    return paths
