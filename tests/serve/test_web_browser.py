"""The page in a real browser: Debian's headless Chromium driven by Playwright.

Starts ``python -m fast_style.serve`` on a free loopback port, uploads a photo, picks a style,
paints a stroke, waits for the result, checks its size and the download, and saves a screenshot;
paints two styles of a multi-style model side by side and checks the result against the eager
``Stylizer``; checks the picker's captions, default style and hidden demo model; opens the API
page ``/docs`` with every request off this machine blocked.

Playwright's own browser download does not work here, so the browser is Debian's ``chromium``
package (``/usr/bin/chromium``, or ``$FAST_STYLE_CHROMIUM``); CI apt-installs it from
``.ci/system-packages``. Without it, or without the ``playwright`` package, the test skips and
says why.

Environment: ``FAST_STYLE_WEB_SCREENSHOT=path.png`` writes the screenshot there: the two-style
painting's when the models include a multi-style one, else the single style's. The README's is
made with ``FAST_STYLE_WEB_MODELS=checkpoints``, a folder of real models, instead of the tiny
random-weight ones::

    FAST_STYLE_WEB_MODELS=checkpoints FAST_STYLE_WEB_SCREENSHOT=docs/images/web_page.png \
        python -m pytest tests/serve/test_web_browser.py
"""

from __future__ import annotations

import importlib.util
import io
import json
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

from fast_style.core.imaging import load_rgb, open_image_bytes, resize_long_side
from fast_style.core.model_io import (
    describe,
    find_models,
    read_metadata,
    save_safetensors,
    style_names,
)
from fast_style.core.network import ConditionalInstanceNorm, TransformerNet
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
# The tiny multi-style model's styles: shipped paintings (thumbnails), captions from metadata.
MULTI = {
    "great_wave": {"title": "The Great Wave off Kanagawa", "artist": "Hokusai", "year": "c. 1831"},
    "the_scream": {"title": "The Scream", "artist": "Munch", "year": "1893"},
    "udnie": {"title": "Udnie", "artist": "Picabia", "year": "1913"},
}


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


def _tiny_models(d: Path) -> None:
    """A single-style model (no painting metadata: the caption comes from conf/style/), a
    multi-style one (captions from its metadata; γ/β rows that differ a lot) and a demo."""
    torch.manual_seed(0)
    net = TransformerNet((8, 16, 16), num_residual=1)
    training = {"style": {"image": "assets/styles/starry_night.jpg"}}
    meta = describe(net, "starry_night", width="tiny", training=training)
    save_safetensors(net, d / "starry_night.safetensors", meta)
    save_safetensors(net, d / "starry_night_cpu_demo.safetensors", meta)  # hidden: a demo
    multi = TransformerNet((8, 16, 16), num_residual=1, num_styles=len(MULTI))
    with torch.no_grad():
        for m in multi.modules():
            if isinstance(m, ConditionalInstanceNorm):
                m.weight.uniform_(0.3, 2.0)
                m.bias.uniform_(-0.6, 0.6)
    entries = [{"name": n, "painting": p} for n, p in MULTI.items()]
    save_safetensors(
        multi, d / "multi.safetensors", describe(multi, "", width="tiny", styles=entries)
    )


@pytest.fixture(scope="module")
def web_models(tmp_path_factory) -> tuple[Path, str]:
    """The models folder the server serves and its backend: ``FAST_STYLE_WEB_MODELS`` (real
    models, the default backend), else tiny random-weight ones (eager PyTorch)."""
    models = os.environ.get("FAST_STYLE_WEB_MODELS")
    if models and not find_models([models]):
        pytest.fail(f"FAST_STYLE_WEB_MODELS={models} holds no model")
    if models:
        return Path(models), "auto"
    d = tmp_path_factory.mktemp("web_models")
    _tiny_models(d)
    return d, "eager"


@pytest.fixture(scope="module")
def server(tmp_path_factory, web_models) -> Iterator[str]:
    """``python -m fast_style.serve`` on a free loopback port; yields its URL."""
    models, backend = str(web_models[0]), web_models[1]
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
    card = page.locator('.style-card[aria-checked="true"]')  # the default: the README's style
    style = card.get_attribute("data-style")
    card.click()
    assert card.get_attribute("aria-checked") == "true"
    page.fill("#strength", "80")
    page.select_option("#max-size", str(MAX_SIZE))

    # Paint a zig-zag stroke over the right half of the photo (the red parrot).
    page.check("#use-mask")
    page.fill("#brush-size", "120")
    page.locator("#overlay").scroll_into_view_if_needed()  # the size menu may have scrolled
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

    shot = _screenshot(page, tmp_path / "web_page.png")
    assert shot.stat().st_size > 10_000
    assert not problems, problems
    page.close()


def _screenshot(page, default: Path) -> Path:
    """A full-page screenshot at ``$FAST_STYLE_WEB_SCREENSHOT`` (a .jpg is JPEG quality 80:
    the README's, small), else at ``default``."""
    shot = Path(os.environ.get("FAST_STYLE_WEB_SCREENSHOT") or default)
    shot.parent.mkdir(parents=True, exist_ok=True)
    jpeg = shot.suffix.lower() in (".jpg", ".jpeg")
    page.screenshot(path=str(shot), full_page=True, **({"quality": 80} if jpeg else {}))
    return shot


def _multi_model(server: str, models: Path) -> tuple[Path, list[str]] | None:
    """The first multi-style model the page lists (a demo one only with ``--show-demos``)
    and its styles in row order, or None."""
    with urllib.request.urlopen(f"{server}/api/styles", timeout=10) as r:
        listed = json.load(r)["styles"]
    for item in listed:
        if item["styles_in_model"] > 1:
            path = models / item["metadata"]["file"]
            names = style_names(read_metadata(path))
            assert [f"{path.stem}:{n}" for n in names] == [
                s["name"] for s in listed if s["model"] == item["model"]
            ]
            return path, names
    return None


# Records the fields of the page's FormData requests (Chromium does not report file parts of a
# request body to Playwright): text as is, files (but the photo) as byte lists.
RECORD_FORMS = """() => {
  const real = window.fetch;
  window.fetch = async (url, opts) => {
    if (opts && opts.body instanceof FormData) {
      const out = {};
      for (const [k, v] of opts.body.entries()) {
        if (k === "image") out[k] = v.name;
        else out[k] = v instanceof Blob ? Array.from(new Uint8Array(await v.arrayBuffer())) : v;
      }
      window.__sent = out;
    }
    return real(url, opts);
  };
}"""


def _paint(page, fx0: float, fx1: float, rows: int = 12) -> None:
    """Drag the brush back and forth over the photo between ``fx0`` (inside it: the stroke
    starts there) and ``fx1`` of its width, top to bottom."""
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


def _pick_two(names: list[str]) -> tuple[str, str]:
    """Two styles to paint: the README's default and The Great Wave where the model has them."""
    a = "starry_night" if "starry_night" in names else names[0]
    rest = [n for n in names if n != a]
    return a, "great_wave" if "great_wave" in rest else rest[0]


def test_two_styles_painted_side_by_side(server, browser, web_models, tmp_path):
    """Style A and B of one multi-style model: B painted on the right half, A (unpainted)
    elsewhere. The request carries the two styles and a style mask, no photo mask; the result
    is what the eager Stylizer computes from them, and each half is its own style."""
    from fast_style.infer.stylizer import Stylizer
    from fast_style.serve.jobs import mask_to_l

    found = _multi_model(server, web_models[0])
    if found is None:
        pytest.skip(f"no multi-style model in {web_models[0]}")
    path, names = found
    a, b = (f"{path.stem}:{n}" for n in _pick_two(names))
    page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(server)
    page.evaluate(RECORD_FORMS)
    page.set_input_files("#file-input", str(PHOTO))
    page.wait_for_selector("#editor:not([hidden])")
    page.click(f'.style-card[data-style="{a}"]')
    assert page.is_enabled("#style-b") and page.is_hidden("#style-b-hint")
    assert page.is_disabled("#blend") and page.is_disabled("#tool-b")  # no style B yet
    page.select_option("#style-b", b)
    assert page.is_enabled("#blend") and page.is_enabled("#tool-b")
    page.select_option("#max-size", str(MAX_SIZE))

    page.check("#use-mask")
    page.click("#tool-b")
    assert page.get_attribute("#tool-b", "aria-pressed") == "true"
    page.fill("#brush-size", "60")
    _paint(page, 0.58, 1.05)
    assert page.is_disabled("#blend") and page.is_visible("#blend-hint")  # painted, not mixed

    page.click("#stylize")
    page.wait_for_selector("#result-panel:not([hidden])", timeout=90_000)
    assert page.is_hidden("#error"), page.inner_text("#error")
    fields = page.evaluate("window.__sent")
    assert fields["style"] == a and fields["style_b"] == b and fields["image"] == PHOTO.name
    assert "style_mask" in fields and "blend" not in fields and "mask" not in fields
    with page.expect_download() as dl:
        page.click("#download")
    saved = tmp_path / dl.value.suggested_filename
    dl.value.save_as(saved)
    assert saved.name == f"kodim23_{'-'.join(n.split(':', 1)[1] for n in (a, b))}.png"
    result = np.asarray(Image.open(saved).convert("RGB"), dtype=np.float32)

    # What the eager Stylizer computes from the photo and the page's style mask.
    photo = open_image_bytes(PHOTO.read_bytes(), None, "image")
    style_mask = Image.open(io.BytesIO(bytes(fields["style_mask"])))
    stylizer = Stylizer(path, device="cpu", backend="eager")
    ia, ib = names.index(a.split(":", 1)[1]), names.index(b.split(":", 1)[1])
    eye = torch.eye(len(names))
    rows = torch.stack([eye[ia], eye[ib]])
    kw = {"max_size": MAX_SIZE}
    ref = stylizer.stylize_image(
        photo, style=rows, style_mask=mask_to_l(style_mask, photo.size), **kw
    )
    ref = np.asarray(ref, dtype=np.float32)
    assert result.shape == ref.shape
    assert np.abs(result - ref).mean() < 1.0  # eager here; other backends: float rounding
    # The style mask is white (A) on the left, black (B) on the right.
    sm = np.asarray(style_mask.convert("L"), dtype=np.float32)
    assert sm[:, : sm.shape[1] * 2 // 5].min() > 250 and sm[:, -sm.shape[1] // 4 :].max() < 5
    # Each side is its own style, away from the soft edge.
    pure_a = np.asarray(stylizer.stylize_image(photo, style=eye[ia], **kw), dtype=np.float32)
    pure_b = np.asarray(stylizer.stylize_image(photo, style=eye[ib], **kw), dtype=np.float32)
    w = result.shape[1]
    left, right = np.s_[:, : int(0.35 * w)], np.s_[:, int(0.75 * w) :]

    def d(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.abs(x - y).mean())

    # (Closer, not equal: instance norm's statistics are the whole image's, both styles'.)
    assert d(result[left], pure_a[left]) < d(result[left], pure_b[left])
    assert d(result[right], pure_b[right]) < d(result[right], pure_a[right])

    page.fill("#compare-slider", "12")
    _screenshot(page, tmp_path / "two_styles.png")
    assert not problems, problems
    page.close()


def test_the_picker_shows_paintings_selects_the_default_and_hides_demos(server, browser):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(server)
    page.wait_for_selector(".style-card")
    names = page.eval_on_selector_all(".style-card", "cs => cs.map(c => c.dataset.style)")
    assert not [n for n in names if n.endswith("_cpu_demo")]  # demos: only with --show-demos
    checked = page.locator('.style-card[aria-checked="true"]')
    assert checked.count() == 1 and checked.get_attribute("data-style") == "starry_night"
    # "Title — Artist, Year" from the metadata, else the shipped config; never the file name.
    assert checked.inner_text().replace("\n", "") == "The Starry Night — Vincent van Gogh, 1889"
    if "multi:great_wave" in names:
        card = page.locator('.style-card[data-style="multi:great_wave"]')
        assert card.inner_text().replace("\n", "").startswith("The Great Wave off Kanagawa — ")
    # A single-style model has no second style.
    assert page.is_disabled("#style-b") and page.is_visible("#style-b-hint")
    page.close()


def test_the_page_sends_a_blend_or_what_is_painted(server, browser, web_models):
    """What the page asks for (the server's answer is mocked): style B alone is a blend;
    painting only the photo keeps style A (or the blend) for the unpainted rest; a style mask
    only where style B is painted; without style B no style fields at all."""
    found = _multi_model(server, web_models[0])
    if found is None:
        pytest.skip(f"no multi-style model in {web_models[0]}")
    path, names = found
    a, b = (f"{path.stem}:{n}" for n in _pick_two(names))
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.route(
        "**/api/stylize",
        lambda route: route.fulfill(
            status=503, content_type="application/json", body='{"error": "mocked", "detail": null}'
        ),
    )
    page.goto(server)
    page.evaluate(RECORD_FORMS)
    page.set_input_files("#file-input", str(PHOTO))
    page.wait_for_selector("#editor:not([hidden])")

    def sent() -> dict:
        page.evaluate("window.__sent = null")
        page.click("#stylize")
        page.wait_for_selector("#error:not([hidden])")
        fields = page.evaluate("window.__sent")
        return {
            k: v
            for k, v in fields.items()
            if k in ("style", "style_b", "blend", "mask", "style_mask")
        }

    page.click(f'.style-card[data-style="{a}"]')
    assert sent() == {"style": a}
    page.select_option("#style-b", b)
    page.fill("#blend", "30")
    assert page.inner_text("#blend-value") == "30% B"
    assert sent() == {"style": a, "style_b": b, "blend": "0.3"}
    page.check("#use-mask")
    page.click("#tool-eraser")  # the photo on the left; the rest keeps the blend
    _paint(page, 0.3, -0.05)
    fields = sent()
    assert set(fields) == {"style", "style_b", "blend", "mask"} and fields["blend"] == "0.3"
    page.click("#tool-b")
    _paint(page, 0.7, 1.05)
    assert set(sent()) == {"style", "style_b", "mask", "style_mask"}  # painted: no blend
    page.select_option("#style-b", "")  # style B off: its paint counts as style A
    assert (
        page.is_disabled("#tool-b") and page.get_attribute("#tool-brush", "aria-pressed") == "true"
    )
    assert set(sent()) == {"style", "mask"}
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
