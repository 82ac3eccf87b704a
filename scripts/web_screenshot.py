"""Make the README's screenshot of the web page (``docs/images/web_page.png``).

    python scripts/web_screenshot.py                       # checkpoints/, kodim23, painted
    python scripts/web_screenshot.py --blend 40 --out /tmp/web_blend.png

Starts ``python -m fast_style.serve`` on a free loopback port with the shipped models
(``--models checkpoints --show-demos``: the shipped two-style ``multi`` is a CPU demo, which
the picker lists only then; the default backend) and waits until it answers ``/healthz``. Then,
in Debian's headless Chromium (``/usr/bin/chromium`` or ``$FAST_STYLE_CHROMIUM``, driven by
Playwright: its own browser download does not work here) at a desktop viewport (1280×900 CSS
pixels, rendered at ``--scale 0.8``: a 1024 px wide image, about the README's width), it uploads a
shipped Kodak photo, picks the two-style model's styles (style A: ``multi:starry_night``, style
B: ``multi:great_wave``), paints style B over the right part of the photo (or, with
``--blend PERCENT``, mixes the two everywhere instead), stylizes on the server, waits for the
result, moves the before/after divider to the left so the result shows, and saves a full-page
screenshot. The PNG is quantized to a palette (``--colors``, default 192; 0 keeps full colour:
about 1 MB instead of about 360 KB) and written with
Pillow's ``optimize=True``. The server is stopped (SIGTERM, then SIGKILL) in any case.

It fails, with the server's log, when the server does not start, and when the page shows an
error, raises a JavaScript error, or asks for anything off this server.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("FAST_STYLE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
PHOTOS = REPO / "fast_style" / "assets" / "photos"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"the server did not answer {url}/healthz within {timeout:.0f} s")


@contextlib.contextmanager
def serve(models: str, backend: str, log: Path, timeout: float) -> Iterator[str]:
    """``python -m fast_style.serve`` on a free loopback port (one worker, one thread); its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "fast_style.serve", "--host", "127.0.0.1", "--port", str(port)]
    # --show-demos: the shipped two-style model is a CPU demo, which the picker hides otherwise
    cmd += ["--models", models, "--backend", backend, "--workers", "1", "--show-demos"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc, log, timeout)
            yield url
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)


def paint(page, fx0: float, fx1: float, rows: int = 12) -> None:
    """Drag the brush back and forth over the photo between ``fx0`` (inside it: the stroke
    starts there) and ``fx1`` of its width, top to bottom; then move the mouse off it."""
    page.locator("#overlay").scroll_into_view_if_needed()
    box = page.locator("#overlay").bounding_box()

    def at(fx: float, fy: float) -> tuple[float, float]:
        return box["x"] + box["width"] * fx, box["y"] + box["height"] * fy

    page.mouse.move(*at(fx0, 0.01))
    page.mouse.down()
    for i in range(rows + 1):
        fy = i / rows
        page.mouse.move(*at(fx1 if i % 2 == 0 else fx0, fy), steps=8)
        page.mouse.move(*at(fx0 if i % 2 == 0 else fx1, min(1.0, fy + 0.5 / rows)), steps=4)
    page.mouse.up()
    page.mouse.move(2, 2)  # no hover state on the photo


def shoot(url: str, args: argparse.Namespace) -> bytes:
    """Drive the page as described in the module docstring; the full-page PNG's bytes."""
    from playwright.sync_api import sync_playwright

    a, b = f"{args.model}:{args.style_a}", f"{args.model}:{args.style_b}"
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(args.chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(
                viewport={"width": args.width, "height": args.height},
                device_scale_factor=args.scale,
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "console",
                lambda m: m.type == "error" and problems.append(f"console: {m.text}"),
            )
            page.on(
                "request",
                lambda r: (
                    r.url.startswith((url, "blob:", "data:"))
                    or problems.append(f"external request: {r.url}")
                ),
            )
            page.goto(url)
            page.wait_for_selector(f'.style-card[data-style="{a}"]')
            page.set_input_files("#file-input", str(args.photo))
            page.wait_for_selector("#editor:not([hidden])")
            page.click(f'.style-card[data-style="{a}"]')
            page.select_option("#style-b", b)
            page.select_option("#max-size", args.size)
            if args.blend is None:
                page.check("#use-mask")
                page.click("#tool-b")
                page.fill("#brush-size", str(args.brush))
                paint(page, args.paint_from, 1.05)
            else:
                page.fill("#blend", str(args.blend))
            page.click("#stylize")
            page.wait_for_selector("#result-panel:not([hidden])", timeout=args.timeout * 1000)
            if page.is_visible("#error"):
                raise RuntimeError(f"the page shows an error: {page.inner_text('#error')}")
            page.fill("#compare-slider", str(args.compare))
            # Every thumbnail (lazy ones too) and both result images decoded.
            page.evaluate("document.querySelectorAll('img').forEach(i => (i.loading = 'eager'))")
            page.wait_for_function(
                "[...document.images].every(i => !i.src || (i.complete && i.naturalWidth))"
            )
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_timeout(500)
            png = page.screenshot(full_page=True)
        finally:
            browser.close()
    if problems:
        raise RuntimeError("the page had problems:\n" + "\n".join(problems))
    return png


def save_small(png: bytes, out: Path, colors: int, exact: int = 32) -> None:
    """The screenshot as an optimized palette PNG of ``colors`` colours (0: full colour).

    The ``exact`` most frequent colours (the page's flat background, panels, text and buttons)
    are kept exactly, so flat areas stay clean; the rest of the palette is an octree palette of
    the other pixels (the photos), which are Floyd-Steinberg dithered."""
    im = Image.open(io.BytesIO(png)).convert("RGB")
    if colors:
        im = quantize(im, colors, min(exact, colors // 2))
    out.parent.mkdir(parents=True, exist_ok=True)
    im.save(out, optimize=True)


def quantize(im: Image.Image, colors: int, exact: int) -> Image.Image:
    rgb = np.asarray(im).reshape(-1, 3)
    key = (rgb[:, 0].astype(np.int32) << 16) | (rgb[:, 1].astype(np.int32) << 8) | rgb[:, 2]
    values, counts = np.unique(key, return_counts=True)
    top = values[np.argsort(-counts, kind="stable")[:exact]]
    kept = np.stack([(top >> 16) & 255, (top >> 8) & 255, top & 255], axis=1)
    rest = rgb[~np.isin(key, top)]
    palette = [kept]
    if len(rest):
        side = int(np.ceil(np.sqrt(len(rest))))
        square = np.resize(rest, (side * side, 3)).reshape(side, side, 3)  # repeats to fill
        octree = Image.fromarray(square).quantize(
            colors - len(kept), method=Image.Quantize.FASTOCTREE
        )
        used = sorted(i for _, i in octree.getcolors(256))
        palette.append(np.asarray(octree.getpalette()).reshape(-1, 3)[used])
    entries = np.concatenate(palette).astype(np.uint8)
    entries = np.concatenate([entries, np.repeat(entries[-1:], 256 - len(entries), axis=0)])
    target = Image.new("P", (1, 1))
    target.putpalette(entries.flatten().tolist())
    out = np.asarray(im.quantize(palette=target, dither=Image.Dither.FLOYDSTEINBERG)).copy()
    # Pillow matches colours to the palette at reduced precision: put the kept ones back exactly.
    order = np.argsort(top)
    exact_px = np.isin(key, top)
    out.reshape(-1)[exact_px] = order[np.searchsorted(top[order], key[exact_px])]
    result = Image.fromarray(out, "P")
    result.putpalette(entries.flatten().tolist())
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "web_page.png")
    ap.add_argument("--models", default="checkpoints", help="models folder (default checkpoints)")
    ap.add_argument("--backend", default="auto", help="the server's --backend (default auto)")
    ap.add_argument("--photo", type=Path, default=PHOTOS / "kodim23.jpg")
    ap.add_argument("--model", default="multi", help="the multi-style model (default multi)")
    ap.add_argument("--style-a", default="starry_night")
    ap.add_argument("--style-b", default="great_wave")
    ap.add_argument(
        "--blend", type=int, metavar="PERCENT", help="blend A and B everywhere, not paint B"
    )
    ap.add_argument(
        "--paint-from", type=float, default=0.55, help="paint B right of this fraction of the photo"
    )
    ap.add_argument("--brush", type=int, default=60, help="brush size (page's slider)")
    ap.add_argument("--size", default="1024", help="the page's Size: 512, 1024 or 2048")
    ap.add_argument("--compare", type=int, default=8, help="before/after divider, percent")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument(
        "--scale",
        type=float,
        default=0.8,
        help="device pixels per CSS pixel (default 0.8: 1024 px wide, about the README's width)",
    )
    ap.add_argument("--colors", type=int, default=192, help="palette colours, 0: full colour")
    ap.add_argument("--chromium", type=Path, default=CHROMIUM)
    ap.add_argument("--timeout", type=float, default=300, help="seconds for start and result")
    ap.add_argument("--log", type=Path, default=Path("/tmp/web_screenshot_server.log"))
    args = ap.parse_args(argv)
    if not args.chromium.is_file():
        ap.error(f"no Chromium at {args.chromium} (Debian's 'chromium' package)")
    if not args.photo.is_file():
        ap.error(f"no photo at {args.photo}")

    t0 = time.perf_counter()
    with serve(args.models, args.backend, args.log, args.timeout) as url:
        print(f"server at {url} in {time.perf_counter() - t0:.1f} s (log: {args.log})")
        png = shoot(url, args)
    save_small(png, args.out, args.colors)
    with Image.open(args.out) as im:
        size = im.size
    print(
        f"wrote {args.out} ({size[0]}×{size[1]}, {args.out.stat().st_size / 1024:.0f} KB) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
