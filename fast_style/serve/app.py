"""``python -m fast_style.serve [--host 127.0.0.1] [--port 8000] [--models checkpoints/]``

A web page and a JSON API for stylising photos, for people who never open a terminal.

* ``GET /`` the page (``fast_style/web``: plain HTML/JS/CSS, everything served locally);
* ``GET /api/styles`` every style in the folder (one per single-style file, one per style of a
  multi-style file: ``fast_style.serve.registry``): name, painting caption, thumbnail URL,
  metadata; which one is the ``default``; and the limits. Demo models only with ``show_demos``;
* ``GET /api/styles/{name}/thumbnail`` a JPEG thumbnail of the painting;
* ``POST /api/stylize`` multipart ``image``, ``style``, ``strength``, ``preserve_color``,
  optional ``mask`` (greyscale PNG, white = style, black = photo), ``max_size`` and ``format``;
  for two styles of one multi-style model, ``style_b`` with ``blend`` (its weight in a mix) or a
  ``style_mask`` (white = ``style``, black = ``style_b``); returns the image;
* ``GET /healthz``; ``GET /docs`` the API page (``web/docs.html``, rendered from
  ``/openapi.json`` by local script; FastAPI's CDN-loaded Swagger UI and ReDoc are off);
* the page's "on this device" mode (``web/ondevice.js``; ``docs/browser.md``), where the photo
  and the camera's frames never leave the visitor's machine: ``GET /api/ondevice`` the light
  models it offers (nano, slim) and whether the runtime is there; ``GET /api/models/{model}.onnx``
  a model's ONNX export (built once per file version and cached); ``GET /ort/{file}`` the files of
  ONNX Runtime Web, put in ``web/vendor/onnxruntime-web`` (or ``$FAST_STYLE_WEB_RUNTIME``) at
  build time from the npm registry by ``scripts/build_web_runtime.py``: 404 with that hint when
  they are not there. The page is served cross-origin isolated (COOP/COEP), so that WebAssembly
  may use threads.

Stylisation is ``fast_style.infer.stylizer.Stylizer.stylize_image``, exactly as in ``stylize.py``;
uploads are decoded by ``fast_style.core.imaging.open_image_bytes`` (pixel limit before decoding,
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
  workers a large image never blocks small ones."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from fast_style.core.device import resolve_device
from fast_style.core.resources import shipped_models_dir
from fast_style.serve.errors import ApiError, error_response
from fast_style.serve.jobs import (
    Job,
    choose_styles,
    decode_upload,
    download_name,
    encode,
    header_pixels,
    mask_to_l,
    read_limited,
    run_job,
)
from fast_style.serve.limits import AdmissionMiddleware, Limiter, Limits, in_thread
from fast_style.serve.registry import ModelRegistry, StyleEntry

WEB_DIR = Path(__file__).resolve().parent / "web"
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
PAGE_HEADERS = {
    # Everything is local: no CDN, no inline script; blob:/data: for previews and results.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# The main page also compiles WebAssembly (ONNX Runtime Web: 'wasm-unsafe-eval', not 'unsafe-eval')
# and is cross-origin isolated, so that SharedArrayBuffer, hence WASM threads, are available: every
# resource is this server's own, so "require-corp" costs nothing.
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
}
INDEX_HEADERS = {
    **PAGE_HEADERS,
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
    "img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    **ISOLATION_HEADERS,
}
# ONNX Runtime Web (scripts/build_web_runtime.py writes it and its manifest.json there)
RUNTIME_DIR = WEB_DIR / "vendor" / "onnxruntime-web"
RUNTIME_ENV = "FAST_STYLE_WEB_RUNTIME"
RUNTIME_BUILD = "python scripts/build_web_runtime.py"
RUNTIME_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}


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
    models_dir: str | Path | None = None,
    limits: Limits | None = None,
    device: str = "auto",
    backend: str = "auto",
    half: bool | str = False,
    show_demos: bool = False,
    web_runtime: str | Path | None = None,
) -> FastAPI:
    """The FastAPI application serving the models in ``models_dir`` (default: the shipped
    models; see the module docstring); ``show_demos`` lists demo models too; ``web_runtime``:
    the folder of ONNX Runtime Web (default ``$FAST_STYLE_WEB_RUNTIME``, else ``RUNTIME_DIR``)."""
    limits = limits or Limits()
    folder = Path(models_dir or shipped_models_dir())
    registry = ModelRegistry(folder, device, backend, half, show_demos)
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
    runtime = WebRuntime(Path(web_runtime or os.environ.get(RUNTIME_ENV) or RUNTIME_DIR))
    _add_ondevice_routes(app, registry, runtime)
    return app


def _version() -> str:
    from fast_style import __version__

    return __version__


def _add_page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers=INDEX_HEADERS)

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

    @app.get("/api/styles", summary="Every style: name, painting, thumbnail URL and metadata")
    async def styles() -> dict[str, Any]:
        items = await asyncio.to_thread(registry.listing)
        default = await asyncio.to_thread(registry.default)
        return {
            "styles": items,
            "default": default,
            "limits": limits.public(),
            "device": device_type,
        }

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


class WebRuntime:
    """The ONNX Runtime Web files in ``folder``, as its ``manifest.json`` lists them
    (``scripts/build_web_runtime.py``); re-read when the manifest changes."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._manifest: tuple[tuple[int, int], dict[str, Any]] | None = None

    def manifest(self) -> dict[str, Any] | None:
        """The manifest, or None when the runtime is not built (or its manifest unreadable)."""
        path = self.folder / "manifest.json"
        try:
            st = path.stat()
            key = (st.st_mtime_ns, st.st_size)
            if self._manifest is None or self._manifest[0] != key:
                data = json.loads(path.read_text())
                if not isinstance(data.get("files"), dict):
                    return None
                self._manifest = (key, data)
            return self._manifest[1]
        except (OSError, ValueError):
            return None

    def files(self) -> dict[str, int]:
        """File name → size of every listed file that is present."""
        manifest = self.manifest() or {"files": {}}
        return {
            name: int(info.get("bytes", 0))
            for name, info in manifest["files"].items()
            if (self.folder / name).is_file()
        }

    def status(self) -> dict[str, Any]:
        """``GET /api/ondevice``'s ``runtime``: whether the files are there (``ready``), the
        version, which backends can load (``wasm``, ``webgpu``), and how to build them."""
        manifest = self.manifest()
        files = self.files()
        backends = [
            b
            for b, entry in (("wasm", "ort.wasm.min.mjs"), ("webgpu", "ort.webgpu.min.mjs"))
            if entry in files
        ]
        ready = manifest is not None and "wasm" in backends
        return {
            "ready": ready,
            "version": manifest.get("version") if manifest else None,
            "backends": backends,
            "base": "ort/",
            "bytes": files,
            "message": None
            if ready
            else f"on-device mode needs ONNX Runtime Web: run {RUNTIME_BUILD}",
        }

    def path(self, name: str) -> Path:
        """The file ``name`` (only names the manifest lists); 404 when it is not there."""
        if name not in self.files():
            if self.manifest() is None:
                why = f"ONNX Runtime Web is not built here: run {RUNTIME_BUILD}"
            else:
                why = (
                    f"{name!r} is not a file of ONNX Runtime Web here (to rebuild: {RUNTIME_BUILD})"
                )
            raise ApiError(404, why)
        return self.folder / name


def _add_ondevice_routes(app: FastAPI, registry: ModelRegistry, runtime: WebRuntime) -> None:
    """The routes of the page's on-device mode (module docstring)."""

    @app.get("/api/ondevice", summary="Light models for on-device (in-browser) use; the runtime")
    async def ondevice() -> dict[str, Any]:
        items = await asyncio.to_thread(registry.on_device_listing)
        default = await asyncio.to_thread(registry.on_device_default)
        return {"styles": items, "default": default, "runtime": runtime.status()}

    @app.get(
        "/api/models/{model}.onnx",
        summary="A light model's ONNX export, for the page's on-device mode",
        response_class=Response,
        responses={
            200: {"content": {"application/octet-stream": {}}},
            404: {"description": "no such model, or not a light one (nano, slim)"},
            503: {"description": "this server cannot export ONNX (pip install fast_style[export])"},
        },
    )
    async def model_onnx(model: str, request: Request) -> Response:
        data = await asyncio.to_thread(registry.onnx, model)
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": "no-cache", **_SAME_ORIGIN}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="application/octet-stream", headers=headers)

    @app.get("/ort/{name}", include_in_schema=False)
    async def ort_file(name: str) -> FileResponse:
        path = runtime.path(name)
        kind = RUNTIME_TYPES.get(path.suffix, "application/octet-stream")
        # FileResponse answers conditional requests (ETag, Last-Modified) with 304.
        return FileResponse(
            path, media_type=kind, headers={"Cache-Control": "no-cache", **_SAME_ORIGIN}
        )


# Subresources of the isolated page: same-origin only, and workers (ONNX Runtime's proxy and
# threads) isolated like the page.
_SAME_ORIGIN = {"Cross-Origin-Resource-Policy": "same-origin", **ISOLATION_HEADERS}


_ERRORS = {
    400: "corrupt image",
    404: "unknown style (or style_b)",
    408: "request body too slow (closes the connection)",
    413: "upload too large, or too many pixels (in one image, or image + mask over the budget)",
    415: "not an image",
    422: "bad parameters (a mask that does not fit the image; style_b not of style's model, "
    "or without blend or style_mask)",
    429: "this client already has its share of requests in progress (retry later)",
    503: "server busy (retry later)",
}


# The form fields of ``POST /api/stylize`` (the descriptions are the API page's).
ImageField = Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, …)")]
StyleField = Annotated[str, Form(description="a style name from /api/styles")]
StrengthField = Annotated[float, Form(ge=0.0, le=1.0, description="0 photo, 1 full style")]
PreserveField = Annotated[bool, Form(description="keep the photo's colours")]
MaskField = Annotated[
    UploadFile | None, File(description="greyscale PNG, white = style, black = photo")
]
StyleBField = Annotated[
    str | None,
    Form(description="a second style of the same multi-style model: with blend or style_mask"),
]
BlendField = Annotated[
    float | None, Form(ge=0.0, le=1.0, description="with style_b: its weight in a mix (0 = style)")
]
StyleMaskField = Annotated[
    UploadFile | None,
    File(description="with style_b: greyscale PNG, white = style, black = style_b"),
]
MaxSizeField = Annotated[
    int | None, Form(ge=8, le=65536, description="downscale the long side to this")
]
FormatField = Annotated[Literal["png", "jpeg", "webp"], Form(description="result format")]


def _stylize_endpoint(
    app: FastAPI, registry: ModelRegistry, limiter: Limiter, limits: Limits
) -> Callable[..., Awaitable[Response]]:
    async def stylize(
        image: ImageField,
        style: StyleField,
        strength: StrengthField = 1.0,
        preserve_color: PreserveField = False,
        mask: MaskField = None,
        style_b: StyleBField = None,
        blend: BlendField = None,
        style_mask: StyleMaskField = None,
        max_size: MaxSizeField = None,
        format: FormatField = "png",
    ) -> Response:
        t0 = time.perf_counter()
        entry = await asyncio.to_thread(registry.get, style)
        weights, other = await asyncio.to_thread(
            choose_styles, registry, entry, style_b or None, blend, style_mask is not None
        )
        side = min(max_size or limits.max_side, limits.max_side)
        async with limiter.image_slot():
            uploads = Uploads(
                await read_limited(image, limits.max_upload_bytes, "image"),
                await _read_optional(mask, limits, "mask"),
                await _read_optional(style_mask, limits, "style_mask"),
            )
            # Pixels are reserved from the headers before anything is decoded, and held until
            # the result is back (the job holds the full-size image until then).
            need = await in_thread(uploads.header_pixels, limits)
            async with limiter.pixels(need):
                job = await in_thread(
                    uploads.decode, limits, strength, preserve_color, side, weights
                )
                del uploads
                async with limiter.lane(job.pixels):
                    out = await limiter.run(app.state.run_job, registry, entry, job)
                del job
            body = await asyncio.to_thread(encode, out, format)
        filename = download_name(image.filename, _result_name(style, entry, other), format)
        headers = {
            "Content-Disposition": f'inline; filename="{filename}"',
            "X-Image-Size": f"{out.width}x{out.height}",
            "X-Elapsed-Ms": str(round((time.perf_counter() - t0) * 1000)),
        }
        return Response(body, media_type=MIME[format], headers=headers)

    return stylize


async def _read_optional(upload: UploadFile | None, limits: Limits, name: str) -> bytes | None:
    return None if upload is None else await read_limited(upload, limits.max_upload_bytes, name)


def _result_name(style: str, entry: StyleEntry, other: StyleEntry | None) -> str:
    """The style part of the download's name: the name asked for (a single-style model), or
    the style(s) of a multi-style model (``great_wave``, ``great_wave-the_scream``)."""
    if entry.num_styles == 1:
        return style
    return entry.style if other is None else f"{entry.style}-{other.style}"


@dataclass
class Uploads:
    """The bytes of a request's image and masks, until they are decoded."""

    image: bytes
    mask: bytes | None
    style_mask: bytes | None

    def header_pixels(self, limits: Limits) -> int:
        """Pixels the three decode to, from their headers (``jobs.header_pixels``)."""
        return sum(header_pixels(d, limits) for d in (self.image, self.mask, self.style_mask))

    def decode(
        self,
        limits: Limits,
        strength: float,
        preserve_color: bool,
        side: int,
        style: torch.Tensor | None,
    ) -> Job:
        """The decoded job; a mask that does not fit the image is 422 (``jobs.mask_to_l``)."""
        img = decode_upload(self.image, limits, "image")
        masks = [
            mask_to_l(decode_upload(data, limits, name), img.size, name) if data else None
            for data, name in ((self.mask, "mask"), (self.style_mask, "style_mask"))
        ]
        return Job(img, masks[0], strength, preserve_color, side, style, masks[1])
