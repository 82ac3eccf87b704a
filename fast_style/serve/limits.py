"""Server limits and load control: admission, per-client fairness, body deadlines, pixel budget."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from fastapi.responses import JSONResponse

from fast_style.serve.errors import ApiError, error_response, human_size

DRAIN_FACTOR = 4  # a refused body is read (and dropped) up to this many times the upload limit


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


def _too_large(size: int, limit: int) -> JSONResponse:
    return error_response(
        413,
        f"upload too large: the limit is {human_size(limit)}",
        {"limit_bytes": limit, "received_bytes": size},
    )
