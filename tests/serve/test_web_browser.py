"""The page in a real browser: Debian's headless Chromium driven by Playwright.

Starts ``python -m fast_style.serve`` on a free loopback port, uploads a photo, picks a style,
paints a stroke, waits for the result, checks its size and the download, and saves a screenshot;
opens the API page ``/docs`` with every request off this machine blocked.

Playwright's own browser download does not work here, so the browser is Debian's ``chromium``
package (``/usr/bin/chromium``, or ``$FAST_STYLE_CHROMIUM``); CI apt-installs it from
``.ci/system-packages``. Without it, or without the ``playwright`` package, the test skips and
says why.

Environment: ``FAST_STYLE_WEB_SCREENSHOT=path.png`` writes the screenshot there (the README's is
made with ``FAST_STYLE_WEB_MODELS=checkpoints``, a folder of real models, instead of the tiny
random-weight one).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fast_style.core.imaging import load_rgb, resize_long_side
from fast_style.core.model_io import describe, find_models, save_safetensors
from fast_style.core.network import TransformerNet
from fast_style.core.resources import photos_dir
from tests.conftest import REPO

pytestmark = pytest.mark.slow

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
PHOTO = photos_dir() / "kodim23.jpg"
MAX_SIZE = 512  # the page's "Small" size


def _missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    for module, extra in (
        ("playwright", "dev"),
        ("fastapi", "serve"),
        ("uvicorn", "serve"),
        ("multipart", "serve"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"the {module!r} package is not installed (pip install -e '.[{extra}]')"
    if not CHROMIUM.is_file():
        return (
            f"no Chromium at {CHROMIUM}: install Debian's 'chromium' package (CI does, from "
            ".ci/system-packages); Playwright's own browser download does not work here"
        )
    if not PHOTO.is_file():
        return f"test photo {PHOTO} is missing"
    return None


if (_reason := _missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"the server did not answer {url}/healthz within {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """``python -m fast_style.serve`` on a free loopback port; yields its URL."""
    models = os.environ.get("FAST_STYLE_WEB_MODELS")
    backend = "auto"
    if models and not find_models([models]):
        pytest.fail(f"FAST_STYLE_WEB_MODELS={models} holds no model")
    if not models:
        d = tmp_path_factory.mktemp("web_models")
        torch.manual_seed(0)
        net = TransformerNet((8, 16, 16), num_residual=1)
        save_safetensors(
            net,
            d / "starry_night.safetensors",
            describe(
                net,
                "starry_night",
                width="tiny",
                training={"style": {"image": "assets/styles/starry_night.jpg"}},
            ),
        )
        models, backend = str(d), "eager"
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "fast_style.serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--models",
        models,
        "--backend",
        backend,
        "--workers",
        "1",
    ]
    log = tmp_path_factory.mktemp("web_log") / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, proc, log)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
    assert "bound to loopback" in log.read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _expected_size(path: Path, long_side: int) -> tuple[int, int]:
    with Image.open(path) as im:
        w, h = im.size
    scale = min(1.0, long_side / max(w, h))
    return round(w * scale), round(h * scale)


def test_upload_style_paint_stylize_download(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on(
        "request",
        lambda r: (
            r.url.startswith((server, "blob:", "data:"))
            or problems.append(f"external request: {r.url}")
        ),
    )
    page.goto(server)

    # Upload a photo (preview), pick a style, choose the small size.
    page.set_input_files("#file-input", str(PHOTO))
    page.wait_for_selector("#editor:not([hidden])")
    assert page.eval_on_selector("#preview", "img => img.naturalWidth") > 0
    card = page.locator(".style-card").first  # the tiny model, or the first real one
    style = card.get_attribute("data-style")
    card.click()
    assert card.get_attribute("aria-checked") == "true"
    page.fill("#strength", "80")
    page.select_option("#max-size", str(MAX_SIZE))

    # Paint a zig-zag stroke over the right half of the photo (the red parrot).
    page.check("#use-mask")
    page.fill("#brush-size", "120")
    box = page.locator("#overlay").bounding_box()

    def at(fx: float, fy: float) -> tuple[float, float]:
        return box["x"] + box["width"] * fx, box["y"] + box["height"] * fy

    page.mouse.move(*at(0.6, 0.15))
    page.mouse.down()
    for i, fy in enumerate((0.15, 0.3, 0.45, 0.6, 0.75, 0.9)):
        page.mouse.move(*at(0.6 if i % 2 else 0.95, fy), steps=6)
        page.mouse.move(*at(0.95 if i % 2 else 0.6, fy), steps=6)
    page.mouse.up()

    page.click("#stylize")
    page.wait_for_selector("#result-panel:not([hidden])", timeout=90_000)
    assert page.is_hidden("#error") and page.is_hidden("#busy")
    size = page.eval_on_selector("#after", "img => [img.naturalWidth, img.naturalHeight]")
    expected = _expected_size(PHOTO, MAX_SIZE)
    assert tuple(size) == expected

    page.fill("#compare-slider", "45")
    with page.expect_download() as dl:
        page.click("#download")
    saved = tmp_path / dl.value.suggested_filename
    dl.value.save_as(saved)
    assert saved.name == f"kodim23_{style}.png"
    with Image.open(saved) as im:
        assert im.format == "PNG" and im.size == expected
        result = np.asarray(im.convert("RGB"), dtype=np.float32)
    # The stroke is stylised, the unpainted rest is the photo (as downscaled by the server).
    photo = np.asarray(resize_long_side(load_rgb(PHOTO), MAX_SIZE), dtype=np.float32)
    diff = np.abs(result - photo).mean(-1)
    h, w = diff.shape
    painted = diff[int(0.3 * h) : int(0.75 * h), int(0.65 * w) : int(0.9 * w)]
    assert painted.mean() > 3, painted.mean()
    assert diff[:, : int(0.4 * w)].max() <= 3

    shot = Path(os.environ.get("FAST_STYLE_WEB_SCREENSHOT") or tmp_path / "web_page.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not problems, problems
    page.close()


def test_phone_screen_and_readable_errors(server, browser):
    page = browser.new_page(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page.goto(server)
    page.set_input_files("#file-input", str(PHOTO))
    page.wait_for_selector("#editor:not([hidden])")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a phone screen"
    width = page.locator("#stylize").bounding_box()["width"]
    assert 200 < width <= 375

    # A server error is shown as its message, and the busy indicator goes away.
    page.route(
        "**/api/stylize",
        lambda route: route.fulfill(
            status=503,
            content_type="application/json",
            body='{"error": "server busy: too many requests at once, retry shortly", '
            '"detail": null}',
        ),
    )
    page.click("#stylize")
    page.wait_for_selector("#error:not([hidden])")
    assert "server busy" in page.inner_text("#error")
    assert page.is_hidden("#busy") and page.is_enabled("#stylize")

    # A file that is not an image is refused before any upload.
    page.set_input_files(
        "#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}]
    )
    assert "not an image" in page.inner_text("#error")
    page.close()


def test_api_docs_page_works_offline(server, browser):
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    blocked: list[str] = []
    problems: list[str] = []

    def offline(route) -> None:
        # Only this machine answers: anything else is what a machine without internet sees.
        if route.request.url.startswith(server + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    page.route("**/*", offline)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.goto(f"{server}/docs")
    page.wait_for_selector("#operations .op", timeout=15_000)
    text = page.inner_text("#operations")
    for operation in ("/api/stylize", "/api/styles", "/api/styles/{name}/thumbnail", "/healthz"):
        assert operation in text
    assert page.locator("#toc a").count() >= 4
    stylize = page.locator(".op", has_text="/api/stylize").first.inner_text()
    for field in ("image", "style", "strength", "preserve_color", "mask", "max_size", "413"):
        assert field in stylize
    assert page.is_hidden("#error") and page.is_hidden("#docs-status")
    assert not blocked, blocked
    assert not problems, problems
    page.close()
