"""The server's styles: one entry per style of a multi-style file, captions from metadata, the
default style, hidden demos; ``style_b`` with ``blend`` (a mix) or ``style_mask`` (painted),
each the eager Stylizer's result; every bad combination one JSON 422 (or 404) line."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

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
from fast_style.core.network import ConditionalInstanceNorm, TransformerNet
from fast_style.infer.stylizer import Stylizer
from fast_style.serve import cli, registry
from fast_style.serve.app import create_app
from fast_style.serve.limits import Limits

TINY = (8, 16, 16)
MULTI = ("great_wave", "the_scream", "udnie")  # shipped paintings: thumbnails are found
PAINTINGS = {
    "great_wave": {"title": "The Great Wave off Kanagawa", "artist": "Hokusai", "year": "c. 1831"},
    "the_scream": {"title": "The Scream", "artist": "Munch", "year": 1893},
    "udnie": {},  # none in the metadata: the shipped config's caption
}


def save_single(path: Path, style: str, **extra) -> Path:
    torch.manual_seed(0)
    net = TransformerNet(TINY, num_residual=1)
    return save_safetensors(net, path, describe(net, style, width="tiny", **extra))


def save_multi(path: Path, names=MULTI, seed: int = 3) -> Path:
    torch.manual_seed(seed)
    net = TransformerNet(TINY, num_residual=1, num_styles=len(names))
    with torch.no_grad():  # γ/β rows that differ a lot: each style visibly its own
        for m in net.modules():
            if isinstance(m, ConditionalInstanceNorm):
                m.weight.uniform_(0.3, 2.0)
                m.bias.uniform_(-0.6, 0.6)
    entries = [{"name": n, "painting": PAINTINGS.get(n, {})} for n in names]
    return save_safetensors(net, path, describe(net, names[0], width="tiny", styles=entries))


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, h // 4), max(1, w // 4), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def arr(data: bytes | Image.Image) -> np.ndarray:
    img = Image.open(io.BytesIO(data)) if isinstance(data, bytes) else data
    return np.asarray(img.convert("RGB"), dtype=np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("styles")
    save_single(d / "starry_night.safetensors", "starry_night")
    save_single(d / "starry_night_cpu_demo.safetensors", "starry_night")  # a demo by its name
    save_single(d / "quick.safetensors", "quick", demo=True)  # a demo by its metadata
    save_single(d / "nameless.safetensors", "nameless")
    save_multi(d / "multi.safetensors")
    return d


@pytest.fixture
def client(models):
    app = create_app(models, Limits(), device="cpu", backend="eager")
    with TestClient(app) as c:
        yield c


def stylize(client, img: Image.Image, style: str, files=None, **data):
    files = {"image": ("photo.png", png(img), "image/png"), **(files or {})}
    return client.post("/api/stylize", files=files, data={"style": style, **data})


def error(res, status: int) -> str:
    assert res.status_code == status, res.text
    body = res.json()
    assert set(body) == {"error", "detail"}
    return body["error"]


# --- listing ---------------------------------------------------------------------------------


def test_a_multi_style_file_lists_each_style_with_its_painting(client):
    body = client.get("/api/styles").json()
    names = [s["name"] for s in body["styles"]]
    # Single-style files by name (demos hidden), then the multi file's styles in row order.
    assert names == [
        "nameless",
        "starry_night",
        "multi:great_wave",
        "multi:the_scream",
        "multi:udnie",
    ]
    by = {s["name"]: s for s in body["styles"]}
    wave = by["multi:great_wave"]
    assert (wave["style"], wave["model"], wave["index"], wave["styles_in_model"]) == (
        "great_wave",
        "multi",
        0,
        3,
    )
    assert wave["label"] == "The Great Wave off Kanagawa — Hokusai, c. 1831"  # the metadata's
    assert (wave["title"], wave["artist"], wave["year"]) == (
        "The Great Wave off Kanagawa",
        "Hokusai",
        "c. 1831",
    )
    assert by["multi:the_scream"]["label"] == "The Scream — Munch, 1893"
    assert by["multi:udnie"]["label"] == "Udnie — Francis Picabia, 1913"  # conf/style/udnie.yaml
    assert by["starry_night"]["label"] == "The Starry Night — Vincent van Gogh, 1889"
    assert by["nameless"]["label"] == "Nameless"  # no painting known: the name, not title-cased
    assert wave["thumbnail"] == "/api/styles/multi%3Agreat_wave/thumbnail"
    assert (
        wave["metadata"]["style"] == "great_wave"
        and wave["metadata"]["file"] == "multi.safetensors"
    )
    assert not any(s["demo"] for s in body["styles"])
    assert body["default"] == "starry_night"  # the README's style, not the first listed
    res = client.get(wave["thumbnail"])
    assert res.status_code == 200 and res.headers["content-type"] == "image/jpeg"
    assert client.get("/healthz").json()["styles"] == 5


def test_demos_are_listed_only_when_asked_and_usable_by_name(models):
    app = create_app(models, device="cpu", backend="eager", show_demos=True)
    with TestClient(app) as c:
        listed = {s["name"]: s["demo"] for s in c.get("/api/styles").json()["styles"]}
        assert listed["starry_night_cpu_demo"] is True and listed["quick"] is True
        assert listed["starry_night"] is False
    app = create_app(models, device="cpu", backend="eager")
    with TestClient(app) as c:
        assert "quick" not in [s["name"] for s in c.get("/api/styles").json()["styles"]]
        assert stylize(c, photo(16, 16), "quick").status_code == 200  # hidden, not refused
    assert cli.build_parser().parse_args(["--show-demos"]).show_demos is True
    assert cli.build_parser().parse_args([]).show_demos is False


@pytest.mark.parametrize(
    ("files", "default"),
    [
        (["starry_night", "multi"], "starry_night"),
        (["multi_sn", "udnie"], "multi_sn:starry_night"),  # a multi file holding it
        (["udnie", "multi"], "udnie"),  # neither: the first listed
        ([], None),
    ],
)
def test_the_default_style_is_the_readmes_wherever_it_is(tmp_path, files, default):
    for f in files:
        if f == "multi":
            save_multi(tmp_path / "multi.safetensors")
        elif f == "multi_sn":
            save_multi(tmp_path / "multi_sn.safetensors", ("the_scream", "starry_night"))
        else:
            save_single(tmp_path / f"{f}.safetensors", f)
    assert registry.ModelRegistry(tmp_path).default() == default


# --- stylizing with one or two styles --------------------------------------------------------


@pytest.fixture(scope="module")
def engine(models) -> Stylizer:
    return Stylizer(models / "multi.safetensors", device="cpu", backend="eager")


def test_a_style_of_a_multi_file_is_its_one_hot_row(client, engine):
    img = photo(40, 28, seed=1)
    res = stylize(client, img, "multi:the_scream")
    assert res.status_code == 200, res.text
    assert 'filename="photo_the_scream.png"' in res.headers["content-disposition"]
    ref = engine.stylize_image(img, style=torch.tensor([0.0, 1.0, 0.0]))
    np.testing.assert_array_equal(arr(res.content), arr(ref))
    first = engine.stylize_image(img)
    assert np.abs(arr(ref) - arr(first)).mean() > 5  # not the first style
    # A bare style name finds the multi file when no file has that name.
    np.testing.assert_array_equal(arr(stylize(client, img, "the_scream").content), arr(ref))
    assert client.get("/healthz").json()["loaded"] == ["multi"]  # one model for its styles


def test_blend_mixes_the_two_styles_in_one_pass(client, engine):
    img = photo(40, 28, seed=2)
    res = stylize(client, img, "multi:great_wave", style_b="multi:udnie", blend="0.25")
    assert res.status_code == 200, res.text
    assert 'filename="photo_great_wave-udnie.png"' in res.headers["content-disposition"]
    ref = engine.stylize_image(img, style=torch.tensor([0.75, 0.0, 0.25]))
    np.testing.assert_array_equal(arr(res.content), arr(ref))
    zero = stylize(client, img, "multi:great_wave", style_b="multi:udnie", blend="0")
    np.testing.assert_array_equal(
        arr(zero.content), arr(stylize(client, img, "multi:great_wave").content)
    )


def test_style_mask_paints_style_on_white_and_style_b_on_black(client, engine):
    img = photo(64, 32, seed=3)
    sm = Image.new("L", (32, 16), 0)  # another resolution, the same aspect ratio
    sm.paste(255, (0, 0, 16, 16))  # left: great_wave; right: the_scream
    mask = Image.new("L", (64, 32), 255)
    mask.paste(0, (0, 0, 64, 8))  # and the top rows stay the photo
    files = {"style_mask": ("sm.png", png(sm), "image/png"), "mask": ("m.png", png(mask))}
    res = stylize(client, img, "multi:great_wave", files, style_b="multi:the_scream")
    assert res.status_code == 200, res.text
    rows = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    ref = engine.stylize_image(img, style=rows, style_mask=sm, mask=mask)
    np.testing.assert_array_equal(arr(res.content), arr(ref))
    got = arr(res.content)
    wave, scream = (arr(engine.stylize_image(img, style=torch.eye(3)[i])) for i in (0, 1))
    left, right = np.s_[16:, :24], np.s_[16:, 40:]

    def d(a, b):
        return float(np.abs(a - b).mean())

    assert d(got[left], wave[left]) < d(got[left], scream[left])
    assert d(got[right], scream[right]) < d(got[right], wave[right])
    assert np.abs(got[:4] - arr(img)[:4]).max() <= 2  # the photo mask applies too


@pytest.mark.parametrize(
    ("style", "fields", "status", "message"),
    [
        (
            "multi:great_wave",
            {"blend": "0.5"},
            422,
            "blend needs style_b: the style to mix in",
        ),
        (
            "multi:great_wave",
            {"style_mask": True},
            422,
            "style_mask needs style_b: the style for its black areas",
        ),
        (
            "multi:great_wave",
            {"style_b": "multi:udnie"},
            422,
            "style_b needs blend (0..1: its weight in a mix) or a style_mask (where it goes)",
        ),
        (
            "multi:great_wave",
            {"style_b": "multi:udnie", "blend": "0.5", "style_mask": True},
            422,
            "blend and style_mask exclude each other: blend mixes the two styles everywhere, "
            "style_mask paints them side by side",
        ),
        (
            "multi:great_wave",
            {"style_b": "multi:great_wave", "blend": "0.5"},
            422,
            "style_b is the same style as style ('great_wave')",
        ),
        (
            "multi:great_wave",
            {"style_b": "starry_night", "blend": "0.5"},
            422,
            "style_b 'starry_night' is not a style of the model of 'multi:great_wave' "
            "(multi.safetensors): two styles are mixed or painted by one multi-style model",
        ),
        (
            "starry_night",
            {"style_b": "multi:udnie", "blend": "0.5"},
            422,
            "style_b 'multi:udnie' is not a style of the model of 'starry_night' "
            "(starry_night.safetensors): two styles are mixed or painted by one multi-style "
            "model",
        ),
        (
            "multi:great_wave",
            {"style_b": "multi:mosaic", "blend": "0.5"},
            404,
            "unknown style 'multi:mosaic'",
        ),
        (
            "multi:great_wave",
            {"style_b": "multi:udnie", "blend": "1.5"},
            422,
            "invalid parameters: blend: Input should be less than or equal to 1",
        ),
        (
            "multi:great_wave",
            {"style_b": "multi:udnie", "style_mask": "tall"},
            422,
            "style_mask: mask is 16x32 but the image is 32x32: aspect ratios differ",
        ),
        (
            "multi:great_wave",
            {"style_b": "multi:udnie", "style_mask": "junk"},
            415,
            "style_mask: not an image of an accepted type (JPEG, PNG, WEBP, GIF, BMP, TIFF, AVIF)",
        ),
    ],
    ids=["blend-alone", "mask-alone", "b-alone", "blend-and-mask", "same", "other-file",
         "single-a", "unknown-b", "blend-range", "mask-shape", "mask-junk"],
)  # fmt: skip
def test_bad_style_combinations_are_one_json_line(client, style, fields, status, message):
    fields = dict(fields)
    files = {}
    kind = fields.pop("style_mask", None)
    if kind is not None:
        content = {True: png(Image.new("L", (32, 32), 255)), "tall": png(Image.new("L", (16, 32)))}
        files["style_mask"] = ("sm.png", content.get(kind, b"junk"), "image/png")
    res = stylize(client, photo(32, 32), style, files, **fields)
    assert error(res, status) == message


def test_the_other_file_error_names_the_styles_that_would_do(client):
    res = stylize(client, photo(16, 16), "multi:great_wave", style_b="udnie_x", blend="0.5")
    assert res.status_code == 404
    res = stylize(client, photo(16, 16), "multi:great_wave", style_b="nameless", blend="0.5")
    assert res.json()["detail"] == {"same_model": ["multi:the_scream", "multi:udnie"]}


def test_the_style_mask_counts_in_the_pixel_budget(models, monkeypatch):
    from fast_style.serve import app as app_module

    app = create_app(
        models, Limits(max_pixels=2000, max_inflight_pixels=2500), device="cpu", backend="eager"
    )
    decoded = []
    monkeypatch.setattr(app_module, "decode_upload", lambda *a: decoded.append(a) or None)
    with TestClient(app) as c:
        files = {"style_mask": ("sm.png", png(Image.new("L", (40, 40), 255)))}
        res = stylize(c, photo(40, 40), "multi:great_wave", files, style_b="multi:udnie")
        assert res.status_code == 413 and decoded == []
        assert res.json()["detail"] == {"max_inflight_pixels": 2500}


def test_the_api_schema_has_the_style_fields(client):
    schema = client.get("/openapi.json").json()
    form = schema["paths"]["/api/stylize"]["post"]["requestBody"]["content"]
    props = next(iter(form.values()))["schema"]
    ref = props.get("$ref", "").split("/")[-1]
    fields = schema["components"]["schemas"][ref]["properties"] if ref else props["properties"]
    assert {"style_b", "blend", "style_mask"} <= set(fields)


def test_the_startup_message_says_how_many_demo_styles_are_hidden(models):
    msg = cli.startup_message("127.0.0.1", 8000, models, 5, hidden=2)
    assert msg.splitlines()[:2] == [
        f"fast_style: serving 5 style(s) from {models} at http://127.0.0.1:8000/",
        "  2 demo style(s) not listed on the page: --show-demos lists them",
    ]
    assert "demo" not in cli.startup_message("127.0.0.1", 8000, models, 5)
    reg = registry.ModelRegistry(models)
    assert len(reg.all_entries()) - len(reg.entries()) == 2
