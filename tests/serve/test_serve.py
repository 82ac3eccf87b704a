"""The web server's API (FastAPI TestClient): every endpoint, every error, masks, load control."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (fastapi)")
pytest.importorskip("multipart", reason="the server needs python-multipart")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

with warnings.catch_warnings():  # newer Starlette prefers httpx2 for its TestClient
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from fast_style.core.model_io import describe, save_safetensors
from fast_style.core.network import TransformerNet
from fast_style.infer.backends.fused import fused_available
from fast_style.infer.backends.ort import onnxruntime_available
from fast_style.infer.stylizer import Stylizer
from fast_style.serve import app, cli, jobs, limits, registry
from fast_style.serve.app import create_app
from fast_style.serve.limits import Limits

STYLE = "starry_night"


# --- helpers ---------------------------------------------------------------------------------


def tiny_model(path: Path, style: str, training: dict | None = None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = TransformerNet((8, 16, 16), num_residual=1)
    with torch.no_grad():  # a visible effect: non-trivial instance-norm affine parameters
        for m in net.modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return save_safetensors(net, path, describe(net, style, width="tiny", training=training))


def photo(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A small textured RGB image (random blocks, so the style has something to change)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, h // 4), max(1, w // 4), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
    return img.convert(mode)


def encoded(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float32)


def post(
    client: TestClient,
    image: bytes | None = None,
    *,
    filename: str = "photo.png",
    mask: bytes | None = None,
    **fields: str,
):
    """POST /api/stylize with ``style`` defaulting to the test style."""
    files = {}
    if image is not None:
        files["image"] = (filename, image, "image/png")
    if mask is not None:
        files["mask"] = ("mask.png", mask, "image/png")
    data = {"style": STYLE, **fields}
    return client.post("/api/stylize", files=files, data=data)


def assert_error(res, status: int, *words: str) -> dict:
    assert res.status_code == status, res.text
    body = res.json()
    assert set(body) == {"error", "detail"} and isinstance(body["error"], str)
    for w in words:
        assert w in body["error"].lower(), body
    return body


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    tiny_model(
        d / f"{STYLE}.safetensors", STYLE, {"style": {"image": "assets/styles/starry_night.jpg"}}
    )
    tiny_model(d / "nameless.safetensors", "nameless", seed=1)  # no painting anywhere
    (d / "broken.safetensors").write_bytes(b"not a model")  # skipped, not listed
    return d


@pytest.fixture
def make_client(models_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**limits)``: a fresh app on the test models, CPU, eager PyTorch."""
    stack: list[TestClient] = []

    def make(**limits) -> TestClient:
        app = create_app(models_dir, Limits(**limits), device="cpu", backend="eager")
        client = TestClient(app)
        client.__enter__()
        stack.append(client)
        return client

    yield make
    for c in stack:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


# --- endpoints -------------------------------------------------------------------------------


def test_healthz(client):
    res = client.get("/healthz")
    assert res.status_code == 200
    body = res.json()
    assert body["status"] == "ok" and body["device"] == "cpu"
    assert body["styles"] == 2 and body["loaded"] == [] and body["in_flight"] == 0


def test_styles_lists_name_thumbnail_and_metadata_without_loading(client):
    res = client.get("/api/styles")
    assert res.status_code == 200
    body = res.json()
    by_name = {s["name"]: s for s in body["styles"]}
    assert sorted(by_name) == ["nameless", STYLE]  # the broken file is skipped
    s = by_name[STYLE]
    assert s["thumbnail"] == f"/api/styles/{STYLE}/thumbnail"
    assert s["metadata"]["channels"] == [8, 16, 16] and s["metadata"]["width"] == "tiny"
    assert s["metadata"]["painting"] == "starry_night.jpg" and s["loaded"] is False
    assert by_name["nameless"]["thumbnail"] is None
    assert body["limits"]["max_side"] == Limits().max_side and body["device"] == "cpu"
    assert client.get("/healthz").json()["loaded"] == []  # listing loads no model


def test_thumbnail_is_a_small_jpeg_of_the_painting(client):
    res = client.get(f"/api/styles/{STYLE}/thumbnail")
    assert res.status_code == 200 and res.headers["content-type"] == "image/jpeg"
    img = decode(res.content)
    assert img.format == "JPEG" and max(img.size) == registry.THUMBNAIL_SIZE
    assert_error(client.get("/api/styles/nameless/thumbnail"), 404, "painting")
    assert_error(client.get("/api/styles/nope/thumbnail"), 404, "unknown style")


def test_page_and_assets_are_served_locally(client):
    res = client.get("/")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in res.headers["content-security-policy"]
    html = res.text
    for asset in ("static/app.js", "static/style.css"):
        assert asset in html
        r = client.get("/" + asset)
        assert r.status_code == 200 and r.text
        html += r.text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    for element in (
        "file-input",
        "styles",
        "strength",
        "preserve-color",
        "overlay",
        "brush-size",
        "tool-eraser",
        "mask-invert",
        "mask-clear",
        "compare-slider",
        "download",
        "busy",
        "error",
    ):
        assert f'id="{element}"' in res.text


def test_openapi_schema_lists_the_api(client):
    schema = client.get("/openapi.json").json()
    assert {"/healthz", "/api/styles", "/api/styles/{name}/thumbnail", "/api/stylize"} <= set(
        schema["paths"]
    )
    form = schema["paths"]["/api/stylize"]["post"]["requestBody"]["content"]
    props = next(iter(form.values()))["schema"]
    ref = props.get("$ref", "").split("/")[-1]
    fields = schema["components"]["schemas"][ref]["properties"] if ref else props["properties"]
    assert {"image", "style", "strength", "preserve_color", "mask", "max_size"} <= set(fields)


def test_docs_page_is_local_and_renders_the_schema_offline(client):
    res = client.get("/docs")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    assert res.headers["content-security-policy"] == app.PAGE_HEADERS["Content-Security-Policy"]
    html = res.text
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assets = [r for r in refs if not r.startswith(("data:", "#"))]
    assert {"static/docs.js", "static/style.css", "openapi.json"} <= set(assets), assets
    for asset in assets:
        r = client.get(urljoin("/docs", asset))
        assert r.status_code == 200 and r.content, asset
        if asset.endswith((".js", ".css")):
            html += r.text
    assert not re.search(r"https?://|//cdn|@import", html), (
        "the API page must load nothing external"
    )
    assert client.get("/redoc").status_code == 404  # FastAPI's CDN-loaded page is off too


def test_unknown_route_is_a_json_404(client):
    assert_error(client.get("/nope"), 404, "not found")


# --- stylize ---------------------------------------------------------------------------------


def test_stylize_is_the_same_code_path_as_the_stylizer(client, models_dir):
    img = photo(40, 28)
    res = post(client, encoded(img), strength="0.6", preserve_color="true")
    assert res.status_code == 200, res.text
    assert res.headers["content-type"] == "image/png"
    assert res.headers["x-image-size"] == "40x28"
    assert 'filename="photo_starry_night.png"' in res.headers["content-disposition"]
    model = Stylizer(models_dir / f"{STYLE}.safetensors", device="cpu", backend="eager")
    ref = model.stylize_image(img, strength=0.6, preserve_color=True, max_size=Limits().max_side)
    np.testing.assert_array_equal(arr(decode(res.content)), arr(ref))
    assert np.abs(arr(ref) - arr(img)).mean() > 5  # the tiny model does change the image


def test_the_default_backend_serves_what_the_eager_stylizer_computes(models_dir, caplog):
    """``create_app`` as ``python -m fast_style.serve`` makes it: no backend given, so "auto",
    which on the CPU is the fused C kernels when they build here (else ONNX Runtime, else
    PyTorch). Its result equals eager PyTorch's on the same image; the server reports the
    backend in its log (the HTTP API does not expose it)."""
    if fused_available():
        expected = "fused"
    else:
        expected = "onnxruntime" if onnxruntime_available() else "eager"
    default_app = create_app(models_dir, device="cpu")
    img = photo(72, 48, seed=5)
    with caplog.at_level(logging.INFO, logger="fast_style.serve"), TestClient(default_app) as c:
        res = post(c, encoded(img), strength="0.8", preserve_color="true")
        assert res.status_code == 200, res.text
        registry = default_app.state.registry
        assert registry.stylizer(registry.get(STYLE)).backend == expected
    assert f"loaded {STYLE} on cpu ({expected})" in caplog.text
    eager = Stylizer(models_dir / f"{STYLE}.safetensors", device="cpu", backend="eager")
    ref = arr(eager.stylize_image(img, strength=0.8, preserve_color=True))
    got = arr(decode(res.content))
    assert got.shape == ref.shape == (48, 72, 3)
    assert np.abs(got - ref).max() <= 2 and np.abs(got - ref).mean() < 0.2
    assert np.abs(ref - arr(img)).mean() > 5  # the model does change the image


def test_stylize_formats_alpha_and_exif(client):
    rgba = photo(24, 16, mode="RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    out = decode(post(client, encoded(rgba)).content)
    assert out.mode == "RGBA" and out.size == (24, 16)
    np.testing.assert_array_equal(np.asarray(out)[..., 3], np.asarray(rgba)[..., 3])
    for fmt, pil in (("jpeg", "JPEG"), ("webp", "WEBP")):
        res = post(client, encoded(photo(24, 16)), format=fmt)
        assert res.status_code == 200 and res.headers["content-type"] == f"image/{fmt}"
        assert decode(res.content).format == pil
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: a 40×24 JPEG displays as 24×40
    res = post(client, encoded(photo(40, 24), "JPEG", exif=exif.tobytes()), filename="p.jpg")
    assert decode(res.content).size == (24, 40)


def test_max_size_downscales_and_the_server_caps_it(make_client):
    client = make_client(max_side=32)
    img = encoded(photo(80, 40))
    assert decode(post(client, img, max_size="20").content).size == (20, 10)
    assert decode(post(client, img).content).size == (32, 16)  # the server's max_side
    assert decode(post(client, img, max_size="4000").content).size == (32, 16)


def test_mask_stylizes_only_the_painted_half(client):
    img = photo(64, 32, seed=3)
    mask = Image.new("L", img.size, 0)
    mask.paste(255, (0, 0, 32, 32))  # left half painted
    full = arr(decode(post(client, encoded(img)).content))
    masked = arr(decode(post(client, encoded(img), mask=encoded(mask)).content))
    orig = arr(img)
    left, right = np.s_[:, :24], np.s_[:, 40:]  # away from the soft edge
    assert np.abs(full[left] - orig[left]).mean() > 10  # the style is visible
    assert np.abs(masked[left] - full[left]).max() <= 2  # painted: full style
    assert np.abs(masked[right] - orig[right]).max() <= 2  # unpainted: the photo
    edge = np.abs(masked[:, 30:34] - orig[:, 30:34]).mean()
    assert 0 < edge < np.abs(full[:, 30:34] - orig[:, 30:34]).mean()  # blended at the edge


def test_mask_may_have_another_resolution_and_transparency_counts_as_unpainted(client):
    img = photo(64, 32, seed=3)
    mask = Image.new("LA", (128, 64), (255, 0))  # white but fully transparent: unpainted
    res = post(client, encoded(img), mask=encoded(mask))
    assert res.status_code == 200
    assert np.abs(arr(decode(res.content)) - arr(img)).max() <= 2


# --- errors ----------------------------------------------------------------------------------


NOT_AN_IMAGE = "not an image of an accepted type (JPEG, PNG, WEBP, GIF, BMP, TIFF, AVIF)"


def huge_png_header(w: int, h: int) -> bytes:
    """A 1×1 PNG whose header claims w×h pixels: a decompression bomb's signature."""
    data = bytearray(encoded(Image.new("L", (1, 1))))
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_upload_too_large_is_413(make_client):
    client = make_client(max_upload_bytes=4000)
    body = assert_error(post(client, encoded(photo(100, 100, mode="RGB"))), 413, "too large")
    assert body["detail"]["limit_bytes"] == 4000


def test_streamed_upload_too_large_is_413_without_content_length(make_client):
    client = make_client(max_upload_bytes=4000)
    boundary = "fsboundary"
    payload = encoded(photo(100, 100))
    parts = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="style"\r\n\r\n{STYLE}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(parts), 1000):
            yield parts[i : i + 1000]

    res = client.post(
        "/api/stylize",
        content=chunks(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(res, 413, "too large")


@pytest.mark.parametrize(
    ("claimed", "mp"), [((100_000, 100_000), "10000.0"), ((5_000, 5_000), "25.0")]
)
def test_decompression_bomb_is_rejected_before_decoding(make_client, claimed, mp):
    """The file holds one pixel: decoding it would answer 400 (truncated), so a 413 naming the
    claimed size shows it was refused from the header alone."""
    client = make_client(max_pixels=1_000_000)
    body = assert_error(post(client, huge_png_header(*claimed)), 413)
    w, h = claimed
    assert body["error"] == f"image: {w}x{h} = {mp} MP exceeds the limit of 1.0 MP"
    assert body["detail"] == {"max_pixels": 1_000_000}


def test_pixel_count_limit_is_413(make_client):
    client = make_client(max_pixels=1000)
    body = assert_error(post(client, encoded(photo(40, 40))), 413, "exceeds the limit")
    assert body["detail"]["max_pixels"] == 1000


@pytest.mark.parametrize(
    "payload",
    [
        b"hello, this is text",
        b"%PDF-1.4\n%\xe2\xe3\n",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
    ],
    ids=["text", "pdf", "svg", "eps"],
)
def test_non_images_are_415(client, payload):
    body = assert_error(post(client, payload, filename="x.bin"), 415)
    assert body["error"] == f"image: {NOT_AN_IMAGE}"


def test_corrupt_and_empty_images_are_400(client):
    jpeg = encoded(photo(64, 64), "JPEG")
    body = assert_error(post(client, jpeg[: len(jpeg) // 2], filename="cut.jpg"), 400)
    assert body["error"].startswith("image: corrupt or truncated image (image file is truncated")
    assert assert_error(post(client, b"", filename="empty.png"), 400)["error"] == (
        "image: empty upload"
    )


def test_unknown_style_is_404(client):
    res = client.post(
        "/api/stylize",
        files={"image": ("a.png", encoded(photo(8, 8)))},
        data={"style": "van_gogh_ii"},
    )
    body = assert_error(res, 404, "unknown style")
    assert STYLE in body["detail"]["available"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"strength": "1.5"}, "strength"),
        ({"strength": "-0.1"}, "strength"),
        ({"strength": "strong"}, "strength"),
        ({"preserve_color": "perhaps"}, "preserve_color"),
        ({"max_size": "4"}, "max_size"),
        ({"max_size": "big"}, "max_size"),
        ({"format": "gif"}, "format"),
    ],
)
def test_bad_parameters_are_422(client, fields, field):
    body = assert_error(post(client, encoded(photo(8, 8)), **fields), 422, "invalid", field)
    assert any(d["field"] == field for d in body["detail"])


def test_missing_fields_are_422(client):
    body = assert_error(post(client, None), 422)
    assert body["error"] == "invalid parameters: image: Field required"
    assert body["detail"] == [{"field": "image", "message": "Field required"}]
    res = client.post("/api/stylize", files={"image": ("a.png", encoded(photo(8, 8)))})
    assert assert_error(res, 422)["error"] == "invalid parameters: style: Field required"


def test_bad_masks(client):
    img = encoded(photo(64, 32))
    body = assert_error(post(client, img, mask=encoded(Image.new("L", (32, 32)))), 422)
    assert body["error"] == "mask is 32x32 but the image is 64x32: aspect ratios differ"
    assert body["detail"] == {"mask_size": [32, 32], "image_size": [64, 32]}
    body = assert_error(post(client, img, mask=b"not a png"), 415)
    assert body["error"] == f"mask: {NOT_AN_IMAGE}"


def test_a_model_that_fails_to_load_and_unexpected_errors_are_json_500(tmp_path, models_dir):
    import os

    small, big = TransformerNet((4, 8, 8), num_residual=1), TransformerNet((8, 16, 16))
    save_safetensors(small, tmp_path / "mismatch.safetensors", describe(big, "mismatch"))
    good = tiny_model(tmp_path / "flipped.safetensors", "flipped")
    app = create_app(tmp_path, device="cpu", backend="eager")
    with TestClient(app) as client:
        # Weights that do not match their metadata are refused when the folder is listed.
        assert [s["name"] for s in client.get("/api/styles").json()["styles"]] == ["flipped"]
        # A file that goes bad on disk after it was listed (same size and time) fails to load.
        st = good.stat()
        data = bytearray(good.read_bytes())
        data[-100] ^= 0x40
        good.write_bytes(bytes(data))
        os.utime(good, ns=(st.st_atime_ns, st.st_mtime_ns))
        res = client.post(
            "/api/stylize",
            files={"image": ("a.png", encoded(photo(8, 8)))},
            data={"style": "flipped"},
        )
        body = assert_error(res, 500, "could not be loaded")
        assert "content digest mismatch" in body["detail"]

    app = create_app(models_dir, device="cpu", backend="eager")

    def boom(*_args):
        raise RuntimeError("boom")

    app.state.run_job = boom
    with TestClient(app, raise_server_exceptions=False) as client:
        assert_error(post(client, encoded(photo(8, 8))), 500, "internal")
        assert client.get("/healthz").json()["in_flight"] == 0


# --- models and load control -----------------------------------------------------------------


def test_models_load_lazily_once_and_are_cached(client, monkeypatch):
    made = []

    class Counting(Stylizer):
        def __init__(self, *a, **kw):
            made.append(a[0])
            super().__init__(*a, **kw)

    monkeypatch.setattr(registry, "Stylizer", Counting)
    assert client.get("/healthz").json()["loaded"] == []
    img = encoded(photo(16, 16))
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: post(client, img).status_code, range(4)))
    assert codes == [200] * 4 and len(made) == 1
    assert client.get("/healthz").json()["loaded"] == [STYLE]


def test_twenty_parallel_requests_all_succeed(make_client):
    client = make_client(per_client=20)  # one test client; by default it may hold 8 at once
    images = [encoded(photo(24 + 4 * (i % 5), 16, seed=i)) for i in range(20)]

    def one(i: int):
        return post(client, images[i], strength=str(i / 20))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert time.perf_counter() - t0 < 120
    assert [r.status_code for r in results] == [200] * 20, [r.text for r in results]
    for i, r in enumerate(results):
        assert decode(r.content).size == (24 + 4 * (i % 5), 16)
    assert client.get("/healthz").json()["in_flight"] == 0


def blocking_job(
    app,
    block: Callable[[jobs.Job], bool],
    started: threading.Event,
    release: threading.Event,
    active: list[int] | None = None,
):
    """Wrap the app's job: jobs for which ``block(job)`` is true wait for ``release``."""
    real = app.state.run_job
    lock = threading.Lock()

    def job(registry, entry, j):
        if active is not None:
            with lock:
                active[0] += 1
                active[1] = max(active[1], active[0])
        try:
            if block(j):
                started.set()
                assert release.wait(30), "test did not release the job"
            else:
                time.sleep(0.05)
            return real(registry, entry, j)
        finally:
            if active is not None:
                with lock:
                    active[0] -= 1

    app.state.run_job = job


def wait_for(cond: Callable[[], bool], timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_a_full_queue_answers_503_and_the_server_recovers(make_client):
    client = make_client(queue=1)
    started, release = threading.Event(), threading.Event()
    blocking_job(client.app, lambda j: True, started, release)
    img = encoded(photo(16, 16))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, client, img)
        try:
            assert started.wait(20)
            res = post(client, img)
            body = assert_error(res, 503, "busy")
            assert res.headers["retry-after"] and body["detail"]["queue"] == 1
        finally:
            release.set()
        assert first.result(timeout=30).status_code == 200
    blocking_job(client.app, lambda j: False, started, release)
    assert post(client, img).status_code == 200  # the slot was given back


def test_a_large_image_does_not_starve_small_ones(make_client):
    client = make_client(workers=2, large_pixels=500, max_images=8)
    started, release = threading.Event(), threading.Event()
    blocking_job(client.app, lambda j: j.pixels > 500, started, release)
    large, small = encoded(photo(32, 32)), encoded(photo(16, 16))
    with ThreadPoolExecutor(3) as pool:
        big = [pool.submit(post, client, large) for _ in range(2)]
        try:
            assert started.wait(20)
            wait_for(lambda: client.app.state.limiter.in_flight == 2)
            time.sleep(0.2)  # the second large image is now waiting for its lane
            res = pool.submit(post, client, small).result(timeout=20)
            assert res.status_code == 200 and not release.is_set()  # done while both wait
        finally:
            release.set()
        assert [f.result(timeout=30).status_code for f in big] == [200, 200]


def test_images_in_memory_are_bounded(make_client):
    client = make_client(workers=4, max_images=2)
    active = [0, 0]
    blocking_job(client.app, lambda j: False, threading.Event(), threading.Event(), active)
    img = encoded(photo(16, 16))
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: post(client, img).status_code, range(8)))
    assert codes == [200] * 8
    assert active[1] == 2  # never more than max_images at once, though 4 workers were free


def test_decoded_pixels_in_memory_are_bounded(make_client):
    # Four image slots and four workers, but 2500 pixels of budget: two 32×32 images at once.
    client = make_client(workers=4, max_images=4, max_pixels=2000, max_inflight_pixels=2500)
    active = [0, 0]
    blocking_job(client.app, lambda j: False, threading.Event(), threading.Event(), active)
    img = encoded(photo(32, 32))
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: post(client, img).status_code, range(8)))
    assert codes == [200] * 8
    assert active[1] == 2


def test_image_and_mask_above_the_pixel_budget_are_413_before_decoding(make_client, monkeypatch):
    client = make_client(max_pixels=2000, max_inflight_pixels=2500)
    decoded = []
    monkeypatch.setattr(app, "decode_upload", lambda *a: decoded.append(a) or None)
    img, mask = encoded(photo(40, 40)), encoded(Image.new("L", (40, 40), 255))
    body = assert_error(post(client, img, mask=mask), 413, "pixels", "at once")
    assert body["detail"] == {"max_inflight_pixels": 2500} and decoded == []


def test_the_pixel_budget_is_first_come_first_served():
    async def scenario() -> list[str]:
        budget, order = limits.PixelBudget(10), []

        async def take(name: str, n: int, hold: asyncio.Event) -> None:
            await budget.acquire(n)
            order.append(name)
            await hold.wait()
            budget.release(n)

        holds = {name: asyncio.Event() for name in ("a", "big", "c", "d")}
        tasks = [asyncio.create_task(take("a", 6, holds["a"]))]
        await asyncio.sleep(0)
        for name, n in (("big", 10), ("c", 2), ("d", 2)):  # c and d would fit, but wait in line
            tasks.append(asyncio.create_task(take(name, n, holds[name])))
        await asyncio.sleep(0.01)
        assert order == ["a"] and budget.used == 6
        tasks[3].cancel()  # a waiter that leaves the line frees its place
        holds["a"].set()
        await asyncio.sleep(0.01)
        assert order == ["a", "big"] and budget.used == 10
        holds["big"].set()
        holds["c"].set()
        await asyncio.gather(*tasks[:3])
        assert budget.used == 0 and not budget._waiters
        return order

    assert asyncio.run(scenario()) == ["a", "big", "c"]


def test_limits_defaults_and_validation():
    d = Limits()
    assert (d.client_share, d.pixel_budget) == (8, 80_000_000)
    assert (d.body_timeout, d.body_idle_timeout) == (30.0, 10.0)
    assert Limits(queue=2).client_share == 1 and Limits(queue=1).client_share == 1
    for bad, message in (
        ({"per_client": 0}, "per_client must be at least 1, got 0"),
        ({"per_client": 40}, "per_client (40) must be at most queue (32)"),
        ({"body_timeout": 0.0}, "body_timeout must be positive, got 0.0"),
        ({"body_idle_timeout": -1.0}, "body_idle_timeout must be positive, got -1.0"),
        (
            {"max_inflight_pixels": 1000},
            "max_inflight_pixels (1000) must be at least max_pixels (40000000), or the "
            "largest accepted image could never be decoded",
        ),
    ):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            Limits(**bad)


@pytest.mark.parametrize(
    ("client", "key"),
    [
        (("203.0.113.7", 5000), "203.0.113.7"),
        (("2001:db8:1:2:aaaa::1", 5000), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:bbbb::9", 5001), "2001:db8:1:2::/64"),  # the same /64: the same client
        (("::ffff:198.51.100.4", 5000), "198.51.100.4"),
        (("testclient", 50000), "testclient"),
        (None, "unknown"),
    ],
)
def test_client_key(client, key):
    assert limits.client_key({"client": client}) == key


# --- command line ----------------------------------------------------------------------------


def test_main_binds_loopback_and_says_so(monkeypatch, capsys, models_dir):
    uvicorn = pytest.importorskip("uvicorn")
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    assert cli.main(["--models", str(models_dir), "--backend", "eager", "--port", "8123"]) == 0
    ((app, kw),) = calls
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8123
    err = capsys.readouterr().err
    assert "http://127.0.0.1:8123/" in err and "loopback" in err and "2 style(s)" in err
    assert app.state.limits == Limits()
    assert kw["proxy_headers"] is False  # X-Forwarded-For cannot dodge the per-client share


def test_main_passes_the_load_limits(monkeypatch, models_dir, capsys):
    uvicorn = pytest.importorskip("uvicorn")
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    argv = ["--models", str(models_dir), "--backend", "eager", "--per-client", "3"]
    argv += ["--body-timeout", "5", "--body-idle-timeout", "2.5"]
    argv += ["--max-inflight-pixels", "90000000", "--forwarded-allow-ips", "10.0.0.1"]
    assert cli.main(argv) == 0
    ((app, kw),) = calls
    assert app.state.limits == Limits(
        per_client=3, body_timeout=5.0, body_idle_timeout=2.5, max_inflight_pixels=90_000_000
    )
    assert kw["proxy_headers"] is True and kw["forwarded_allow_ips"] == "10.0.0.1"
    help_text = cli.build_parser().format_help()
    for option in ("--per-client", "--body-timeout", "--body-idle-timeout", "--max-inflight"):
        assert option in help_text


def test_main_warns_when_not_on_loopback_and_rejects_bad_options(
    monkeypatch, capsys, models_dir, tmp_path
):
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    assert cli.main(["--models", str(models_dir), "--host", "0.0.0.0", "--backend", "eager"]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == (
        "  WARNING: bound to 0.0.0.0, not loopback: anyone who can reach this machine can use it."
    )
    for argv, message in (
        (["--models", str(tmp_path / "none")], f"--models {tmp_path / 'none'}: no such folder"),
        (["--models", str(models_dir), "--workers", "0"], "workers must be at least 1, got 0"),
        (
            ["--models", str(models_dir), "--body-timeout", "0"],
            "body_timeout must be positive, got 0.0",
        ),
        (
            ["--models", str(models_dir), "--max-pixels", "100", "--max-inflight-pixels", "50"],
            "max_inflight_pixels (50) must be at least max_pixels (100), or the largest "
            "accepted image could never be decoded",
        ),
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"fast-style serve: error: {message}"
