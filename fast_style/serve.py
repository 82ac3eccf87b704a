"""``python -m fast_style.serve [--host 127.0.0.1] [--port 8000] [--models checkpoints/]``

A web page and a JSON API for stylising photos, for people who never open a terminal.

* ``GET /`` the page (``fast_style/web``: plain HTML/JS/CSS, everything served locally);
* ``GET /api/styles`` every model in the folder: name, thumbnail URL, metadata, and the limits;
* ``GET /api/styles/{name}/thumbnail`` a JPEG thumbnail of the painting;
* ``POST /api/stylize`` multipart ``image``, ``style``, ``strength``, ``preserve_color``,
  optional ``mask`` (greyscale PNG, white = style), ``max_size`` and ``format``; returns the image;
* ``GET /healthz``; ``GET /docs`` the API page (``web/docs.html``, rendered from
  ``/openapi.json`` by local script; FastAPI's CDN-loaded Swagger UI and ReDoc are off).

Stylisation is ``fast_style.inference.Stylizer.stylize_image``, exactly as in ``stylize.py``;
uploads are decoded by ``fast_style.imaging.open_image_bytes`` (pixel limit before decoding,
EXIF orientation). Errors are JSON ``{"error": "...", "detail": ...}``.

Load is bounded at every stage (see ``Limits``; each is a command-line option):

* admission, before the body is read: at most ``queue`` stylise requests at once (more get 503)
  and at most ``per_client`` (default ``queue // 4``) from one client address (more get 429),
  so that one client cannot take every slot; both with ``Retry-After``;
* the body: it must arrive within ``body_timeout`` seconds (default 30) with no gap longer than
  ``body_idle_timeout`` (default 10), else 408 and the connection is closed: a stalled upload
  holds its slot for seconds, not for ever;
* memory: at most ``max_images`` requests hold an upload's bytes or an image (the rest wait with
  their upload spooled by the multipart parser), and together they hold at most
  ``max_inflight_pixels`` decoded pixels (default ``2 × max_pixels``), reserved from the image
  headers before decoding, first come first served, until the result is back; a request
  needing more than the whole budget gets 413. Pillow holds RGB and RGBA in 4 bytes a pixel;
  decoding a JPEG peaks at 8, the alpha split of an RGBA image at 13, so decoded images take
  at most ``13 × max_inflight_pixels`` bytes (1.0 GB by default). The network's working set is
  bounded by ``workers`` and ``max_side`` instead: about 600 bytes a pixel (full-width model,
  CPU 'fused' backend), so 2.5 GB for a 2048² image; ``README.md`` has the whole bound;
* compute: the network runs in a pool of ``workers`` threads, and images above
  ``large_pixels`` may use at most ``workers - 1`` of them (at least one), so with two or more
  workers a large image never blocks small ones.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import ipaddress
import logging
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from PIL import Image, ImageOps

from fast_style.config import PROJECT_ROOT, resolve_path
from fast_style.imaging import (
    UPLOAD_FORMATS,
    ImageReadError,
    ImageTooLargeError,
    NotAnImageError,
    open_image_bytes,
    split_alpha,
)
from fast_style.inference import BACKENDS, DEFAULT_MODEL_DIRS, Stylizer, resolve_device
from fast_style.model_io import ModelFileError, find_models, read_checkpoint, read_safetensors

try:
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError("fast_style.serve needs FastAPI: pip install 'fast_style[serve]'") from e

log = logging.getLogger("fast_style.serve")

WEB_DIR = Path(__file__).resolve().parent / "web"
THUMBNAIL_SIZE = 256
DRAIN_FACTOR = 4  # a refused body is read (and dropped) up to this many times the upload limit
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
PAGE_HEADERS = {
    # Everything is local: no CDN, no inline script; blob:/data: for previews and results.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Limits:
    """Server limits; every one is a command-line option of ``main``."""

    max_upload_bytes: int = 20 * 1024 * 1024  # whole request body (image + mask), else 413
    max_pixels: int = 40_000_000  # decoded pixel count of an upload, checked before decoding
    max_side: int = 2048  # long side the image is downscaled to before stylising
    workers: int = 2  # threads running the network
    max_images: int = 4  # requests holding a decoded image in memory at once
    queue: int = 32  # requests admitted at once (waiting + running); more get 503
    large_pixels: int = 1_000_000  # above this (after downscaling) an image is "large"
    per_client: int | None = None  # admitted requests of one client address; None: queue // 4
    body_timeout: float = 30.0  # seconds for a whole request body to arrive, else 408
    body_idle_timeout: float = 10.0  # seconds a body may send nothing, else 408
    max_inflight_pixels: int | None = None  # decoded pixels in memory at once; None: 2 × max_pixels

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, float) and not value > 0:  # timeouts: any positive number
                raise ValueError(f"{name} must be positive, got {value}")
            if isinstance(value, int) and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.max_side < 8:
            raise ValueError(f"max_side must be at least 8, got {self.max_side}")
        if self.client_share > self.queue:
            raise ValueError(
                f"per_client ({self.client_share}) must be at most queue ({self.queue})"
            )
        if self.pixel_budget < self.max_pixels:
            raise ValueError(
                f"max_inflight_pixels ({self.pixel_budget}) must be at least max_pixels "
                f"({self.max_pixels}), or the largest accepted image could never be decoded"
            )

    @property
    def client_share(self) -> int:
        """Admitted requests one client may hold at once."""
        return self.per_client or max(1, self.queue // 4)

    @property
    def pixel_budget(self) -> int:
        """Decoded pixels (images and masks) all admitted requests may hold at once."""
        return self.max_inflight_pixels or 2 * self.max_pixels

    def public(self) -> dict[str, int]:
        """The limits a client needs to know (shown by the page)."""
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "max_pixels": self.max_pixels,
            "max_side": self.max_side,
        }


class ApiError(Exception):
    """An error answered as JSON ``{"error": message, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, message: str, detail: Any = None):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


def error_response(status: int, message: str, detail: Any = None, **headers: str) -> JSONResponse:
    """The JSON body of every error."""
    return JSONResponse({"error": message, "detail": detail}, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------------
# Models: listed from their metadata, loaded lazily once, cached.


@dataclass(frozen=True)
class StyleEntry:
    """One model file in the folder and its metadata."""

    name: str
    path: Path
    meta: dict[str, Any]

    def painting(self) -> Path | None:
        """The painting the model was trained on, if it can be found."""
        spec = (self.meta.get("training") or {}).get("style", {}).get("image")
        candidates = [resolve_path(spec)] if isinstance(spec, str) and spec else []
        candidates.append(PROJECT_ROOT / "assets" / "styles" / f"{self.meta.get('style')}.jpg")
        return next((p for p in candidates if p.is_file()), None)

    def public_meta(self) -> dict[str, Any]:
        """Metadata safe to show: no local paths beyond the painting's file name."""
        keys = (
            "style",
            "width",
            "channels",
            "num_residual",
            "dtype",
            "created",
            "fast_style_version",
            "global_step",
        )
        out = {k: self.meta[k] for k in keys if k in self.meta}
        painting = self.painting()
        out["painting"] = painting.name if painting else None
        out["file"] = self.path.name
        out["size_mb"] = round(self.path.stat().st_size / 1e6, 2)
        return out


class ModelRegistry:
    """The models in one folder. The folder is rescanned when styles are listed (metadata is
    cached per file version); each model is loaded on its first use, once, and cached."""

    def __init__(
        self, folder: Path, device: str = "auto", backend: str = "auto", half: bool | str = False
    ):
        self.folder, self.device, self.backend, self.half = folder, device, backend, half
        self._meta: dict[tuple[Path, int, int], dict[str, Any] | None] = {}
        self._loaded: dict[str, tuple[tuple[Path, int, int], Stylizer]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._thumbs: dict[str, bytes] = {}

    @staticmethod
    def _key(path: Path) -> tuple[Path, int, int]:
        st = path.stat()
        return path, st.st_mtime_ns, st.st_size

    def _read_meta(self, path: Path) -> dict[str, Any] | None:
        key = self._key(path)
        if key not in self._meta:
            reader = read_safetensors if path.suffix == ".safetensors" else read_checkpoint
            try:
                self._meta[key] = reader(path)[1]
            except ModelFileError as e:
                log.warning("skipping %s", e)
                self._meta[key] = None
        return self._meta[key]

    def entries(self) -> dict[str, StyleEntry]:
        """Name (file stem) → entry; a ``.safetensors`` wins over a ``.ckpt`` of the same name."""
        out: dict[str, StyleEntry] = {}
        for path in sorted(find_models([self.folder]), key=lambda p: p.suffix != ".safetensors"):
            if path.stem in out:
                continue
            meta = self._read_meta(path)
            if meta is not None:
                out[path.stem] = StyleEntry(path.stem, path, meta)
        return dict(sorted(out.items()))

    def get(self, name: str) -> StyleEntry:
        """The entry of ``name``; 404 when there is no such style."""
        entries = self.entries()
        if name not in entries:
            raise ApiError(404, f"unknown style {name!r}", {"available": sorted(entries)})
        return entries[name]

    def loaded(self) -> list[str]:
        """Names of the models loaded so far."""
        return sorted(self._loaded)

    def listing(self) -> list[dict[str, Any]]:
        """``GET /api/styles`` items: name, style, thumbnail URL (None without a painting),
        metadata and whether the model is loaded."""
        loaded = set(self._loaded)
        return [
            {
                "name": e.name,
                "style": e.meta.get("style", e.name),
                "thumbnail": f"/api/styles/{quote(e.name)}/thumbnail" if e.painting() else None,
                "metadata": e.public_meta(),
                "loaded": e.name in loaded,
            }
            for e in self.entries().values()
        ]

    def stylizer(self, entry: StyleEntry) -> Stylizer:
        """The loaded model of ``entry`` (loaded now if needed; thread-safe, loads once)."""
        with self._lock:
            lock = self._locks.setdefault(entry.name, threading.Lock())
        with lock:
            key = self._key(entry.path)
            cached = self._loaded.get(entry.name)
            if cached is None or cached[0] != key:
                t0 = time.perf_counter()
                model = Stylizer(
                    entry.path, device=self.device, half=self.half, backend=self.backend
                )
                log.info(
                    "loaded %s on %s (%s) in %.1f s",
                    entry.name,
                    model.device,
                    model.backend,
                    time.perf_counter() - t0,
                )
                self._loaded[entry.name] = (key, model)
            return self._loaded[entry.name][1]

    def thumbnail(self, entry: StyleEntry) -> bytes | None:
        """A JPEG of the painting, at most ``THUMBNAIL_SIZE`` a side (cached)."""
        if entry.name not in self._thumbs:
            painting = entry.painting()
            if painting is None:
                return None
            with Image.open(painting) as im:
                im.draft("RGB", (2 * THUMBNAIL_SIZE, 2 * THUMBNAIL_SIZE))  # JPEG: decode small
                im = split_alpha(ImageOps.exif_transpose(im) or im)[0]
                im.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=85)
            self._thumbs[entry.name] = buf.getvalue()
        return self._thumbs[entry.name]


# ---------------------------------------------------------------------------------------------
# Load control.


def client_key(scope: dict) -> str:
    """The client a request counts against for ``per_client``: the peer address of the
    connection (``X-Forwarded-For`` only counts where uvicorn is told to trust a proxy). IPv6
    peers are grouped by /64, the block one host or home network is usually given."""
    client = scope.get("client")
    if not client:
        return "unknown"
    try:
        ip = ipaddress.ip_address(client[0])
    except ValueError:
        return str(client[0])  # a name, e.g. Starlette's test client
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class PixelBudget:
    """A first-come, first-served budget of decoded pixels on one event loop. Served in order,
    so that a large image waiting for the budget is not overtaken forever by small ones."""

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, n: int) -> None:
        """Take ``n`` pixels (at most ``total``), waiting until they are free."""
        if not self._waiters and self.used + n <= self.total:
            self.used += n
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted just as the request was cancelled
            else:
                self._waiters.remove((n, fut))
                self._grant()  # the next in line may fit now
            raise

    def release(self, n: int) -> None:
        self.used -= n
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.total:
            n, fut = self._waiters.popleft()
            self.used += n
            fut.set_result(None)


class Limiter:
    """Admission (``queue``, ``per_client``), images in memory (``max_images``), decoded pixels
    (``max_inflight_pixels``) and the worker pool (``workers``, with at most ``workers - 1``
    busy on large images)."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="fast-style")
        self._admitted = 0
        self._per_client: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._memory: asyncio.Semaphore
        self._large: asyncio.Semaphore
        self._pixels: PixelBudget

    @property
    def in_flight(self) -> int:
        return self._admitted

    def admit(self, client: str = "unknown") -> str | None:
        """Take a queue slot for ``client`` without waiting. None when admitted, else why not:
        ``"queue"`` (the server is full) or ``"client"`` (this client holds its share)."""
        with self._count_lock:
            if self._admitted >= self.limits.queue:
                return "queue"
            if self._per_client[client] >= self.limits.client_share:
                return "client"
            self._admitted += 1
            self._per_client[client] += 1
            return None

    def release(self, client: str = "unknown") -> None:
        with self._count_lock:
            self._admitted -= 1
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]  # the counter does not grow with every address seen

    def _primitives(self) -> tuple[asyncio.Semaphore, asyncio.Semaphore, PixelBudget]:
        # asyncio primitives belong to one event loop; a server has one, tests may use several.
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._memory = asyncio.Semaphore(self.limits.max_images)
            self._large = asyncio.Semaphore(max(1, self.limits.workers - 1))
            self._pixels = PixelBudget(self.limits.pixel_budget)
        return self._memory, self._large, self._pixels

    @contextlib.asynccontextmanager
    async def image_slot(self) -> AsyncIterator[None]:
        """Held while a request has its upload's bytes or its image in memory."""
        async with self._primitives()[0]:
            yield

    @contextlib.asynccontextmanager
    async def pixels(self, n: int) -> AsyncIterator[None]:
        """Held while ``n`` decoded pixels are in memory; 413 when ``n`` exceeds the budget."""
        budget = self._primitives()[2]
        if n > budget.total:
            raise ApiError(
                413,
                f"image and mask: {n:,} pixels together, more than the {budget.total:,} "
                "this server decodes at once",
                {"max_inflight_pixels": budget.total},
            )
        await budget.acquire(n)
        try:
            yield
        finally:
            budget.release(n)

    @contextlib.asynccontextmanager
    async def lane(self, pixels: int) -> AsyncIterator[None]:
        """Large images queue here before they may take a worker."""
        if pixels <= self.limits.large_pixels:
            yield
            return
        async with self._primitives()[1]:
            yield

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the worker pool (see ``settle``)."""
        return await settle(asyncio.get_running_loop().run_in_executor(self.pool, fn, *args))


async def settle(fut: asyncio.Future) -> Any:
    """Await a thread's result. If the request is cancelled, the slots it holds are kept until
    the thread has finished (its memory is in use until then)."""
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait({fut})
        raise


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in the default thread pool, kept to its end as ``settle`` says."""
    return await settle(asyncio.get_running_loop().run_in_executor(None, fn, *args))


class BodyClock:
    """``receive`` with the body deadlines: the whole body within ``body_timeout`` seconds of
    the headers, and never ``body_idle_timeout`` seconds without a chunk. Past either it answers
    ``http.disconnect`` (which stops the multipart parser) and records why in ``expired``."""

    def __init__(self, receive: Callable, limits: Limits):
        self._receive = receive
        self._end = time.monotonic() + limits.body_timeout
        self.total, self.idle = limits.body_timeout, limits.body_idle_timeout
        self.bytes = 0
        self.done = False  # the last chunk has arrived: no deadline from here on
        self.expired: str | None = None  # "body_timeout" or "body_idle_timeout"

    async def __call__(self) -> dict:
        if self.done:
            return await self._receive()
        if self.expired:
            return {"type": "http.disconnect"}
        left = self._end - time.monotonic()
        try:
            message = await asyncio.wait_for(self._receive(), max(0.0, min(left, self.idle)))
        except asyncio.TimeoutError:
            # Cancelling uvicorn's receive() loses nothing: it only waits for data to arrive.
            self.expired = "body_timeout" if left <= self.idle else "body_idle_timeout"
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            self.bytes += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
        return message

    async def drain(self, cap: int) -> None:
        """Read and drop the rest of the body (at most ``cap`` bytes, within the deadlines)."""
        seen = 0
        while not self.done and not self.expired and seen <= cap:
            message = await self()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))

    def response(self) -> JSONResponse:
        """The 408 for an expired body."""
        total = self.expired == "body_timeout"
        seconds = self.total if total else self.idle
        why = f"it must arrive within {seconds:g} s" if total else f"no data for {seconds:g} s"
        return error_response(
            408,
            f"request body too slow: {why}; retry on a faster connection",
            {"timeout": self.expired, "seconds": seconds, "received_bytes": self.bytes},
        )


class AdmissionMiddleware:
    """ASGI middleware for ``POST /api/stylize``, before the multipart parser runs: 413 for a
    body above the upload limit (from Content-Length, or counted while it streams in), 503 when
    the queue is full, 429 when the client holds its ``per_client`` share, 408 when the body
    does not arrive in time (``BodyClock``)."""

    def __init__(self, app: Any, limiter: Limiter, path: str = "/api/stylize"):
        self.app, self.limiter, self.path = app, limiter, path

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        limits = self.limiter.limits
        limit, body = limits.max_upload_bytes, BodyClock(receive, limits)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _refuse(_too_large(int(length), limit), body, scope, send, limit)
            return
        client = client_key(scope)
        refused = self.limiter.admit(client)
        if refused is not None:
            await _refuse(_busy(refused, limits), body, scope, send, limit)
            return
        try:
            await self._call_guarded(scope, body, send, limit)
        finally:
            self.limiter.release(client)

    async def _call_guarded(self, scope: dict, body: BodyClock, send: Callable, limit: int) -> None:
        """The app, with the body cut off above ``limit`` bytes or past its deadline; the
        app's answer to a cut-off body is then replaced by a 413 or a 408."""
        state = {"over": False, "started": False}

        async def counted_receive() -> dict:
            message = await body()
            if message["type"] == "http.request" and body.bytes > limit:
                state["over"] = True
                return {"type": "http.disconnect"}  # stops the parser here
            return message

        async def guarded_send(message: dict) -> None:
            if state["over"] or body.expired:
                return
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not (state["over"] or body.expired):
                raise
        if state["started"]:
            return
        if state["over"]:
            await _refuse(_too_large(body.bytes, limit), body, scope, send, limit)
        elif body.expired:
            await _refuse(body.response(), body, scope, send, limit)  # closes the connection


async def _refuse(
    response: JSONResponse, body: BodyClock, scope: dict, send: Callable, limit: int
) -> None:
    """Answer ``response`` after reading (and dropping) the rest of the body, up to
    ``DRAIN_FACTOR`` times the upload limit, so that a client still sending gets to read the
    error instead of a reset connection."""
    await body.drain(DRAIN_FACTOR * limit)
    if not body.done:
        response.headers["Connection"] = "close"  # the rest of the body is never read
    await response(scope, body, send)


def _busy(reason: str, limits: Limits) -> JSONResponse:
    """The answer to a request not admitted: the client holds its share, or the queue is full."""
    if reason == "client":
        return error_response(
            429,
            f"too many requests from your address at once (at most {limits.client_share}): "
            "wait for one to finish",
            {"per_client": limits.client_share},
            **{"Retry-After": "2"},
        )
    return error_response(
        503,
        "server busy: too many requests at once, retry shortly",
        {"queue": limits.queue},
        **{"Retry-After": "2"},
    )


def human_size(n: int) -> str:
    """Bytes as a short readable size."""
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} B"


def _too_large(size: int, limit: int) -> JSONResponse:
    return error_response(
        413,
        f"upload too large: the limit is {human_size(limit)}",
        {"limit_bytes": limit, "received_bytes": size},
    )


# ---------------------------------------------------------------------------------------------
# One stylise request: decode (413/415/400/422), stylise, encode.


@dataclass
class Job:
    """A decoded request, ready for the network."""

    image: Image.Image
    mask: Image.Image | None
    strength: float
    preserve_color: bool
    max_side: int

    @property
    def pixels(self) -> int:
        """Pixels the network will see (after downscaling to ``max_side``)."""
        w, h = self.image.size
        scale = min(1.0, self.max_side / max(w, h))
        return round(w * scale) * round(h * scale)


def header_pixels(data: bytes | None, limits: Limits) -> int:
    """The pixel count an upload decodes to, read from its header alone; 0 for what
    ``decode_upload`` refuses before decoding (not an image, above ``max_pixels``)."""
    if not data:
        return 0
    Image.init()  # as open_image_bytes: only the accepted formats this Pillow has
    formats = [f for f in UPLOAD_FORMATS if f in Image.OPEN]
    try:
        with Image.open(io.BytesIO(data), formats=formats) as im:
            pixels = im.size[0] * im.size[1]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 0
    return pixels if pixels <= limits.max_pixels else 0


def decode_upload(data: bytes, limits: Limits, name: str) -> Image.Image:
    """Bytes → image, with the errors mapped to status codes."""
    if not data:
        raise ApiError(400, f"{name}: empty upload")
    try:
        return open_image_bytes(data, limits.max_pixels, name)
    except ImageTooLargeError as e:
        raise ApiError(413, str(e), {"max_pixels": limits.max_pixels}) from None
    except NotAnImageError as e:
        raise ApiError(415, str(e)) from None
    except ImageReadError as e:
        raise ApiError(400, str(e)) from None


def mask_to_l(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A mask upload as L (white = style); transparent pixels count as black. Its aspect ratio
    must match the image's (it is resized to the image by the stylizer); else 422."""
    # A local import keeps this change inside mask_to_l; it may join the imports above.
    from fast_style.imaging import MaskSizeError, check_mask_size

    rgb, alpha = split_alpha(mask)
    m = rgb.convert("L")
    if alpha is not None:
        m = Image.composite(m, Image.new("L", m.size, 0), alpha)
    try:
        check_mask_size(m.size, size)
    except MaskSizeError as e:
        detail = {"mask_size": list(e.mask_size), "image_size": list(e.image_size)}
        raise ApiError(422, str(e), detail) from None
    return m


def run_job(registry: ModelRegistry, entry: StyleEntry, job: Job) -> Image.Image:
    """The network and post-processing (in a worker thread): the same call as ``stylize.py``."""
    try:
        model = registry.stylizer(entry)
    except (ModelFileError, ValueError) as e:
        raise ApiError(500, f"model {entry.name!r} could not be loaded", str(e)) from None
    try:
        return model.stylize_image(
            job.image,
            strength=job.strength,
            preserve_color=job.preserve_color,
            max_size=job.max_side,
            mask=job.mask,
        )
    except ValueError as e:
        raise ApiError(422, str(e)) from None
    except MemoryError:
        raise ApiError(503, "out of memory: try a smaller max_size") from None
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            raise ApiError(503, "out of memory: try a smaller max_size") from None
        raise


def encode(img: Image.Image, fmt: str) -> bytes:
    """The result as PNG (keeps alpha), JPEG or WebP."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=3)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=92)
    else:
        img.convert("RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


async def read_limited(upload: UploadFile, limit: int, name: str) -> bytes:
    """The upload's bytes; 413 above ``limit``."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(
            413,
            f"{name}: upload too large: the limit is {human_size(limit)}",
            {"limit_bytes": limit},
        )
    return data


def download_name(filename: str | None, style: str, fmt: str) -> str:
    """``<photo>_<style>.<ext>`` with only safe characters."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(filename or "photo").stem)[:60] or "photo"
    return f"{stem}_{re.sub(r'[^A-Za-z0-9_-]+', '_', style)}.{'jpg' if fmt == 'jpeg' else fmt}"


# ---------------------------------------------------------------------------------------------
# The app.


def _validation_response(_request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [
        {
            "field": ".".join(str(p) for p in err.get("loc", ())[1:]) or "request",
            "message": err.get("msg", "invalid"),
        }
        for err in exc.errors()
    ]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return error_response(422, f"invalid parameters: {summary}", details)


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.detail)

    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), None, **(exc.headers or {}))

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(request, exc)

    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette still re-raises the exception afterwards, so the server logs its traceback.
        return error_response(500, "internal server error", type(exc).__name__)

    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)


def create_app(
    models_dir: str | Path = DEFAULT_MODEL_DIRS[0],
    limits: Limits | None = None,
    device: str = "auto",
    backend: str = "auto",
    half: bool | str = False,
) -> FastAPI:
    """The FastAPI application serving the models in ``models_dir`` (see the module docstring)."""
    limits = limits or Limits()
    registry = ModelRegistry(Path(models_dir), device, backend, half)
    limiter = Limiter(limits)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        limiter.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="fast_style",
        version=_version(),
        lifespan=lifespan,
        description="Fast neural style transfer: stylise a photo with a trained model.",
        # FastAPI's /docs and /redoc load their scripts from a CDN: /docs is our own page.
        docs_url=None,
        redoc_url=None,
    )
    app.state.registry, app.state.limiter, app.state.limits = registry, limiter, limits
    app.state.run_job = run_job  # tests may wrap it
    _install_error_handlers(app)
    app.add_middleware(AdmissionMiddleware, limiter=limiter)
    _add_page_routes(app)
    _add_api_routes(app, registry, limiter, limits, device)
    return app


def _version() -> str:
    from fast_style import __version__

    return __version__


def _add_page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers=PAGE_HEADERS)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(WEB_DIR / "docs.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")


def _add_api_routes(
    app: FastAPI, registry: ModelRegistry, limiter: Limiter, limits: Limits, device: str
) -> None:
    device_type = resolve_device(device).type

    @app.get("/healthz", summary="Liveness and load")
    async def healthz() -> dict[str, Any]:
        entries = await asyncio.to_thread(registry.entries)
        return {
            "status": "ok",
            "device": device_type,
            "styles": len(entries),
            "loaded": registry.loaded(),
            "in_flight": limiter.in_flight,
            "queue": limits.queue,
        }

    @app.get("/api/styles", summary="Every style: name, thumbnail URL and metadata")
    async def styles() -> dict[str, Any]:
        items = await asyncio.to_thread(registry.listing)
        return {"styles": items, "limits": limits.public(), "device": device_type}

    @app.get(
        "/api/styles/{name}/thumbnail",
        summary="A JPEG thumbnail of the painting",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    async def thumbnail(name: str) -> Response:
        entry = await asyncio.to_thread(registry.get, name)
        data = await asyncio.to_thread(registry.thumbnail, entry)
        if data is None:
            raise ApiError(404, f"no painting found for style {name!r}")
        return Response(
            data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"}
        )

    app.post(
        "/api/stylize",
        summary="Stylise an image",
        response_class=Response,
        responses={
            200: {"content": {m: {} for m in MIME.values()}},
            **{c: {"description": d} for c, d in _ERRORS.items()},
        },
    )(_stylize_endpoint(app, registry, limiter, limits))


_ERRORS = {
    400: "corrupt image",
    404: "unknown style",
    408: "request body too slow (closes the connection)",
    413: "upload too large, or too many pixels (in one image, or image + mask over the budget)",
    415: "not an image",
    422: "bad parameters",
    429: "this client already has its share of requests in progress (retry later)",
    503: "server busy (retry later)",
}


def _stylize_endpoint(
    app: FastAPI, registry: ModelRegistry, limiter: Limiter, limits: Limits
) -> Callable[..., Awaitable[Response]]:
    async def stylize(
        image: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, …)")],
        style: Annotated[str, Form(description="a style name from /api/styles")],
        strength: Annotated[float, Form(ge=0.0, le=1.0, description="0 photo, 1 full style")] = 1.0,
        preserve_color: Annotated[bool, Form(description="keep the photo's colours")] = False,
        mask: Annotated[UploadFile | None, File(description="greyscale PNG, white = style")] = None,
        max_size: Annotated[
            int | None, Form(ge=8, le=65536, description="downscale the long side to this")
        ] = None,
        format: Annotated[
            Literal["png", "jpeg", "webp"], Form(description="result format")
        ] = "png",
    ) -> Response:
        t0 = time.perf_counter()
        entry = await asyncio.to_thread(registry.get, style)
        side = min(max_size or limits.max_side, limits.max_side)
        async with limiter.image_slot():
            data = await read_limited(image, limits.max_upload_bytes, "image")
            mask_data = (
                await read_limited(mask, limits.max_upload_bytes, "mask")
                if mask is not None
                else None
            )
            # Pixels are reserved from the headers before anything is decoded, and held until
            # the result is back (the job holds the full-size image until then).
            need = await in_thread(_header_pixels, data, mask_data, limits)
            async with limiter.pixels(need):
                job = await in_thread(
                    _decode_job, data, mask_data, limits, strength, preserve_color, side
                )
                del data, mask_data
                async with limiter.lane(job.pixels):
                    out = await limiter.run(app.state.run_job, registry, entry, job)
                del job
            body = await asyncio.to_thread(encode, out, format)
        filename = download_name(image.filename, style, format)
        headers = {
            "Content-Disposition": f'inline; filename="{filename}"',
            "X-Image-Size": f"{out.width}x{out.height}",
            "X-Elapsed-Ms": str(round((time.perf_counter() - t0) * 1000)),
        }
        return Response(body, media_type=MIME[format], headers=headers)

    return stylize


def _header_pixels(data: bytes, mask_data: bytes | None, limits: Limits) -> int:
    return header_pixels(data, limits) + header_pixels(mask_data, limits)


def _decode_job(
    data: bytes,
    mask_data: bytes | None,
    limits: Limits,
    strength: float,
    preserve_color: bool,
    side: int,
) -> Job:
    img = decode_upload(data, limits, "image")
    mask = mask_to_l(decode_upload(mask_data, limits, "mask"), img.size) if mask_data else None
    return Job(img, mask, strength, preserve_color, side)


# ---------------------------------------------------------------------------------------------
# Command line.


def build_parser() -> argparse.ArgumentParser:
    d = Limits()
    p = argparse.ArgumentParser(
        prog="python -m fast_style.serve",
        description="Serve a web page and a JSON API for stylising photos.",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--models",
        default=str(DEFAULT_MODEL_DIRS[0]),
        metavar="DIR",
        help="folder of .safetensors/.ckpt models (default checkpoints/)",
    )
    p.add_argument("--device", default="auto", help="auto (GPU when present) | cpu | cuda")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: ONNX Runtime on CPU when installed, else PyTorch",
    )
    p.add_argument(
        "--half", nargs="?", const="fp16", choices=["fp16", "bf16"], help="half precision on GPU"
    )
    g = p.add_argument_group("limits")
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
    g.add_argument(
        "--large-pixels",
        type=int,
        default=d.large_pixels,
        help="images above this many pixels use at most workers-1 threads, so small "
        f"ones keep one (default {d.large_pixels})",
    )
    return p


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def startup_message(host: str, port: int, models: Path, count: int) -> str:
    """What the server says when it starts: where, which models, and who can reach it."""
    shown = f"[{host}]" if ":" in host else host
    lines = [f"fast_style: serving {count} style(s) from {models} at http://{shown}:{port}/"]
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
    models = Path(a.models).expanduser()
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
        resolve_device(a.device)
    except ValueError as e:
        parser.error(str(e))
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    app = create_app(models, limits, a.device, a.backend, a.half or False)
    count = len(app.state.registry.entries())
    print(startup_message(a.host, a.port, models, count), file=sys.stderr, flush=True)
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default; the per-client share must not
    # be dodged with a made-up header, so proxies are trusted only when named.
    proxy = {"proxy_headers": a.forwarded_allow_ips is not None}
    if a.forwarded_allow_ips is not None:
        proxy["forwarded_allow_ips"] = a.forwarded_allow_ips
    uvicorn.run(app, host=a.host, port=a.port, log_level="info", **proxy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
