"""The README's video clip: per-frame stylization next to the default for clips (the output
blended along the motion, ``fast_style.video.stabilize``), as an animated GIF.

    python scripts/fetch_footage.py          # data/footage/bigbuckbunny_640x360.mp4
    python scripts/video_demo.py [--model starry_night] [--start 30] [--frames 24]

Writes docs/images/video_demo.gif (``--out``). The clip is *Big Buck Bunny* (2008), © Blender
Foundation, www.bigbuckbunny.org, CC BY 3.0 (scripts/fetch_footage.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from fast_style.core.imaging import pil_to_tensor, tensor_to_pil
from fast_style.infer.clip_jobs import ClipOptions, ClipStylizer
from fast_style.infer.stylizer import Stylizer
from fast_style.video import iter_frames

REPO = Path(__file__).resolve().parents[1]
LABEL_H = 16  # pixels of caption above each panel


def frames(clip: Path, start: int, count: int, size: tuple[int, int]) -> torch.Tensor:
    """Frames ``start`` … ``start + count − 1`` of ``clip`` at ``size`` (W, H): (T, 3, H, W)."""
    out = []
    for i, frame in enumerate(iter_frames(clip)):
        if i >= start + count:
            break
        if i >= start:
            out.append(pil_to_tensor(frame.resize(size, Image.Resampling.LANCZOS)))
    if len(out) < count:
        raise SystemExit(f"{clip}: only {len(out) + start} frames")
    return torch.stack(out)


def panel(img: Image.Image, label: str) -> Image.Image:
    canvas = Image.new("RGB", (img.width, img.height + LABEL_H), "white")
    canvas.paste(img, (0, LABEL_H))
    ImageDraw.Draw(canvas).text((4, 2), label, fill="black")
    return canvas


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="starry_night")
    p.add_argument("--clip", default=str(REPO / "data" / "footage" / "bigbuckbunny_640x360.mp4"))
    p.add_argument("--start", type=int, default=30, help="first frame")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--size", default="192x108", help="WxH of each panel")
    p.add_argument("--out", default=str(REPO / "docs" / "images" / "video_demo.gif"))
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    x = frames(Path(args.clip), args.start, args.frames, (w, h))
    st = Stylizer(args.model, device="cpu")
    rows = {
        "per frame": ClipStylizer(st, ClipOptions(temporal=False)),
        "default (flow blend)": ClipStylizer(st, ClipOptions()),
    }
    styled = {name: torch.cat([fn(b) for b in x.split(4)]) for name, fn in rows.items()}
    gif = []
    for t in range(args.frames):
        panels = [panel(tensor_to_pil(x[t]), "input")]
        panels += [panel(tensor_to_pil(y[t]), name) for name, y in styled.items()]
        frame = Image.new("RGB", (sum(q.width for q in panels), panels[0].height))
        for i, q in enumerate(panels):
            frame.paste(q, (i * q.width, 0))
        # a palette per frame, no dithering (its noise would flicker itself, and bloat the file)
        gif.append(frame.quantize(128, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    out = Path(args.out)
    gif[0].save(out, save_all=True, append_images=gif[1:], duration=80, loop=0, optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} KB, {args.frames} frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
