"""``fast-style serve`` / ``python -m fast_style.serve``: parse options, say where, run uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

from fast_style.core.device import resolve_device
from fast_style.core.resources import shipped_models_dir
from fast_style.infer.allocator import tune_malloc
from fast_style.infer.backends import BACKENDS
from fast_style.serve.app import create_app
from fast_style.serve.limits import Limits


def build_parser() -> argparse.ArgumentParser:
    d = Limits()
    p = argparse.ArgumentParser(
        prog="fast-style serve",
        description="Serve a web page and a JSON API for stylising photos.",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--models",
        default=None,
        metavar="DIR",
        help="folder of .safetensors/.ckpt models (default: the shipped models)",
    )
    p.add_argument(
        "--show-demos",
        action="store_true",
        help='list demo models too (*_cpu_demo, or "demo": true in the metadata); hidden by '
        "default, usable by name either way",
    )
    p.add_argument("--device", default="auto", help="auto (GPU when present) | cpu | cuda")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: on CPU the fused kernels, else ONNX Runtime, else PyTorch; on GPU PyTorch",
    )
    p.add_argument(
        "--half", nargs="?", const="fp16", choices=["fp16", "bf16"], help="half precision on GPU"
    )
    _add_size_limits(p.add_argument_group("limits: sizes and work"), d)
    _add_client_limits(p.add_argument_group("limits: clients and request bodies"), d)
    return p


def _add_size_limits(g: argparse._ArgumentGroup, d: Limits) -> None:
    """Upload size, pixels, downscaling, threads, images in memory, large images."""
    g.add_argument(
        "--max-upload-mb",
        type=float,
        default=d.max_upload_bytes / 2**20,
        help=f"largest request body in MB (default {d.max_upload_bytes / 2**20:g})",
    )
    g.add_argument(
        "--max-pixels",
        type=int,
        default=d.max_pixels,
        help=f"largest upload in pixels (default {d.max_pixels})",
    )
    g.add_argument(
        "--max-side",
        type=int,
        default=d.max_side,
        help=f"long side images are downscaled to (default {d.max_side})",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help=f"threads running the network (default {d.workers})",
    )
    g.add_argument(
        "--max-images",
        type=int,
        default=d.max_images,
        help=f"requests holding an image in memory at once (default {d.max_images})",
    )
    g.add_argument(
        "--large-pixels",
        type=int,
        default=d.large_pixels,
        help="images above this many pixels use at most workers-1 threads, so small "
        f"ones keep one (default {d.large_pixels})",
    )


def _add_client_limits(g: argparse._ArgumentGroup, d: Limits) -> None:
    """The queue, per-client share, body deadlines, pixel budget and proxies."""
    g.add_argument(
        "--queue",
        type=int,
        default=d.queue,
        help=f"requests admitted at once; more get 503 (default {d.queue})",
    )
    g.add_argument(
        "--per-client",
        type=int,
        default=None,
        help="requests one client address may have admitted at once; more get 429 "
        f"(default queue // 4 = {d.client_share})",
    )
    g.add_argument(
        "--body-timeout",
        type=float,
        default=d.body_timeout,
        metavar="S",
        help="seconds a request body may take to arrive, else 408 and its slot is freed "
        f"(default {d.body_timeout:g})",
    )
    g.add_argument(
        "--body-idle-timeout",
        type=float,
        default=d.body_idle_timeout,
        metavar="S",
        help=f"seconds a request body may send nothing, else 408 (default {d.body_idle_timeout:g})",
    )
    g.add_argument(
        "--max-inflight-pixels",
        type=int,
        default=None,
        help="decoded pixels (images and masks) held in memory at once; requests wait for "
        f"their share (default 2 x max-pixels = {d.pixel_budget})",
    )
    g.add_argument(
        "--forwarded-allow-ips",
        default=None,
        metavar="IPS",
        help="behind a reverse proxy: its addresses, whose X-Forwarded-For then names the client "
        "for --per-client (default: none, the header is ignored)",
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def startup_message(host: str, port: int, models: Path, count: int, hidden: int = 0) -> str:
    """What the server says when it starts: where, which models (``hidden``: demo styles not
    listed), and who can reach it."""
    shown = f"[{host}]" if ":" in host else host
    lines = [f"fast_style: serving {count} style(s) from {models} at http://{shown}:{port}/"]
    if hidden:
        lines.append(f"  {hidden} demo style(s) not listed on the page: --show-demos lists them")
    if _is_loopback(host):
        lines.append(
            f"  bound to loopback ({host}) only: reachable from this machine, not from "
            "others. Use --host 0.0.0.0 to share it on your network."
        )
    else:
        lines.append(
            f"  WARNING: bound to {host}, not loopback: anyone who can reach this "
            "machine can use it."
        )
    if count == 0:
        lines.append(f"  no models in {models}: train one (python train.py) or pass --models DIR")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, print where the server listens, and run it until Ctrl-C."""
    parser = build_parser()
    a = parser.parse_args(argv)
    models = Path(a.models).expanduser() if a.models else shipped_models_dir()
    if not models.is_dir():
        parser.error(f"--models {a.models}: no such folder")
    try:
        limits = Limits(
            max_upload_bytes=int(a.max_upload_mb * 2**20),
            max_pixels=a.max_pixels,
            max_side=a.max_side,
            workers=a.workers,
            max_images=a.max_images,
            queue=a.queue,
            large_pixels=a.large_pixels,
            per_client=a.per_client,
            body_timeout=a.body_timeout,
            body_idle_timeout=a.body_idle_timeout,
            max_inflight_pixels=a.max_inflight_pixels,
        )
        device = resolve_device(a.device)
    except ValueError as e:
        parser.error(str(e))
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if device.type == "cpu":
        tune_malloc()  # reuse freed activations across requests (fast_style.infer.allocator)
    app = create_app(models, limits, a.device, a.backend, a.half or False, a.show_demos)
    registry = app.state.registry
    count, every = len(registry.entries()), len(registry.all_entries())
    print(
        startup_message(a.host, a.port, models, count, every - count), file=sys.stderr, flush=True
    )
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default; the per-client share must not
    # be dodged with a made-up header, so proxies are trusted only when named.
    proxy = {"proxy_headers": a.forwarded_allow_ips is not None}
    if a.forwarded_allow_ips is not None:
        proxy["forwarded_allow_ips"] = a.forwarded_allow_ips
    uvicorn.run(app, host=a.host, port=a.port, log_level="info", **proxy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
