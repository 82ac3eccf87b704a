"""The stylize CLI: inputs (files, folders, globs), outputs, odd images, errors, progress, and
the styles of multi-style models (``--style``, ``--style-mask``, names, ``--list-models``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fast_style.core.imaging import pil_to_tensor, tensor_to_pil
from fast_style.core.model_io import describe, load_model, save_safetensors
from fast_style.core.network import ConditionalInstanceNorm, TransformerNet
from fast_style.infer import cli, stylizer
from fast_style.infer.cli import main
from fast_style.infer.stylizer import Stylizer
from tests._imaging_helpers import huge_png
from tests._stylize_helpers import (
    TINY,
    exif_rotated_jpeg,
    odd_images,
    photo,
    save_tiny,
    save_tiny_ckpt,
)
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path_factory, monkeypatch):
    """Keep the ONNX export cache of these tests out of the user's home."""
    monkeypatch.setenv("FAST_STYLE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny.safetensors")


def run(*argv: str) -> int:
    return main(["--backend", "eager", "-q", *argv])


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def test_one_file_to_one_file_in_each_format(model, tmp_path):
    src = tmp_path / "in.png"
    photo(37, 21).save(src)
    for ext, fmt in [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]:
        out = tmp_path / f"out.{ext}"
        assert run("--model", str(model), "--input", str(src), "--output", str(out)) == 0
        with Image.open(out) as im:
            assert im.format == fmt and im.size == (37, 21)


def test_folder_recursive_glob_and_a_bad_image(model, tmp_path, capsys):
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    photo(30, 20).save(d / "a.jpg")
    photo(31, 21).save(d / "sub" / "b.png")
    (d / "broken.jpg").write_bytes(b"not a jpeg")
    other = tmp_path / "more"
    other.mkdir()
    photo(16, 16).save(other / "c.webp")
    photo(16, 16).save(other / "d.gif")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        run("--model", str(model), "--input", str(d), str(other / "*.*"), "--output", str(out))
    assert e.value.code == 1  # one image failed, the others were written
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.jpg", "c.webp", "d.png", "sub/b.png"]
    with Image.open(out / "sub" / "b.png") as im:
        assert im.size == (31, 21)
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "stylized 4 images" in captured.out and "images/s" in captured.out
    assert "1 failed" in captured.out


def test_odd_inputs_keep_size_and_alpha(model, tmp_path):
    d = tmp_path / "odd"
    d.mkdir()
    for i, (kind, img) in enumerate(odd_images().items()):
        ext = "tif" if kind in ("CMYK", "F", "I", "YCbCr") else "png"
        if kind == "YCbCr":
            ext = "jpg"
        img.save(d / f"{i:02d}.{ext}")
    exif_rotated_jpeg(d / "rotated.jpg", 40, 24)
    out = tmp_path / "out"
    assert run("--model", str(model), "--input", str(d), "--output", str(out), "--ext", "png") == 0
    for src in d.iterdir():
        with Image.open(src) as a, Image.open(out / f"{src.stem}.png") as b:
            expected = (a.size[1], a.size[0]) if src.name == "rotated.jpg" else a.size
            assert b.size == expected, src.name
            if a.mode in ("RGBA", "LA") or "transparency" in a.info:
                assert b.mode == "RGBA"


def test_sixteen_bit_png(model, tmp_path):
    """A 16-bit greyscale ramp is stylised as its 8-bit equivalent (not clipped at 255)."""
    arr = (np.linspace(0, 65535, 24 * 18).reshape(18, 24)).astype(np.uint16)
    src = tmp_path / "deep.png"
    Image.fromarray(arr).save(src)
    with Image.open(src) as im:
        assert im.mode.startswith("I")
    eight = tmp_path / "eight.png"
    Image.fromarray(np.round(arr / 257).astype(np.uint8)).convert("RGB").save(eight)
    for path in (src, eight):
        assert (
            run("--model", str(model), "--input", str(path), "--output", str(tmp_path / "o")) == 0
        )
    deep, ref = _rgb(tmp_path / "o" / "deep.png"), _rgb(tmp_path / "o" / "eight.png")
    assert deep.shape == (18, 24, 3)
    assert np.abs(deep - ref).max() <= 1


def test_options_reach_the_engine(model, tmp_path):
    src = tmp_path / "in.png"
    photo(60, 40).save(src)
    zero = tmp_path / "zero.png"
    assert (
        run("--model", str(model), "--input", str(src), "--output", str(zero), "--strength", "0")
        == 0
    )
    assert np.array_equal(np.asarray(Image.open(zero)), np.asarray(Image.open(src)))
    small = tmp_path / "small.png"
    assert (
        run("--model", str(model), "--input", str(src), "--output", str(small), "--max-size", "30")
        == 0
    )
    assert Image.open(small).size == (30, 20)
    mask = tmp_path / "mask.png"
    Image.new("L", (15, 10), 0).save(mask)  # another resolution, the same aspect ratio
    masked = tmp_path / "masked.png"
    argv = ["--input", str(src), "--output", str(masked), "--mask", str(mask)]
    assert run("--model", str(model), *argv) == 0
    assert np.array_equal(np.asarray(Image.open(masked)), np.asarray(Image.open(src)))


def test_tile_takes_the_tiled_path_and_matches_the_whole_image(model, tmp_path, monkeypatch):
    """150×100 in 64 px tiles (6 of them): the tiled path runs, with the colour options, and
    its seams are invisible next to what the style changes."""
    src = tmp_path / "big.png"
    photo(150, 100).save(src)
    calls: list[tuple[tuple[int, int], int, int, int]] = []
    real = stylizer.run_tiled

    def spy(forward, read, emit, size, tile, overlap):
        tiles = []
        real(lambda t: tiles.append(t.shape) or forward(t), read, emit, size, tile, overlap)
        calls.append((size, tile, overlap, len(tiles)))

    monkeypatch.setattr(stylizer, "run_tiled", spy)
    colour = ["--preserve-color", "--match-histogram"]
    outputs = {}
    for name, extra in (
        ("whole", []),
        ("tiled", ["--tile", "64", "--overlap", "16"]),
        ("whole_colour", colour),
        ("tiled_colour", ["--tile", "64", "--overlap", "16", *colour]),
    ):
        out = tmp_path / f"{name}.png"
        assert run("--model", str(model), "--input", str(src), "--output", str(out), *extra) == 0
        outputs[name] = _rgb(out)
        assert outputs[name].shape == (100, 150, 3)
    assert calls == [((100, 150), 64, 16, 6)] * 2  # only the --tile runs, 3 × 2 tiles each
    photo_px = _rgb(src)

    def diff(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).mean())

    assert diff(outputs["whole"], photo_px) > 20  # the style changes the photo a lot …
    assert diff(outputs["tiled"], outputs["whole"]) < 3  # … tiling hardly at all
    assert diff(outputs["whole_colour"], outputs["whole"]) > 10  # the colour options act
    assert diff(outputs["tiled_colour"], outputs["whole_colour"]) < 3  # in the tiled path too


def test_ckpt_and_style_name(model, tmp_path):
    """A Lightning checkpoint and a style name resolved in --models-dir give the same result
    as the .safetensors file itself (all three hold the same weights)."""
    src = tmp_path / "in.jpg"
    photo(20, 20).save(src)
    ckpt = save_tiny_ckpt(tmp_path / "ck" / "last.ckpt")
    assert run("--model", str(ckpt), "--input", str(src), "--output", str(tmp_path / "a.png")) == 0
    argv = ["--model", "tiny", "--models-dir", str(model.parent)]
    assert run(*argv, "--input", str(src), "--output", str(tmp_path / "b.png")) == 0
    assert run("--model", str(model), "--input", str(src), "--output", str(tmp_path / "c.png")) == 0
    a, b, c = (_rgb(tmp_path / f"{n}.png") for n in "abc")
    assert np.array_equal(a, c) and np.array_equal(b, c)
    assert np.abs(c - _rgb(src)).mean() > 5  # and the model did something
    other = tmp_path / "other.safetensors"
    save_tiny(other, seed=1)
    assert run("--model", str(other), "--input", str(src), "--output", str(tmp_path / "d.png")) == 0
    assert not np.array_equal(_rgb(tmp_path / "d.png"), c)  # other weights, another result


def test_list_models_shows_metadata(model, tmp_path, capsys):
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    save_tiny_ckpt(tmp_path / "other.ckpt", style="mosaic")
    assert (
        main(["--list-models", "--models-dir", str(model.parent), "--models-dir", str(tmp_path)])
        == 0
    )
    out = capsys.readouterr().out
    assert "tiny" in out and "8/16/16" in out and "mosaic" in out and "unreadable" in out
    header, *rows = [line for line in out.splitlines() if line and "unreadable" not in line]
    for row in rows:  # columns line up with the header whatever the name lengths
        col = header.index("channels")
        assert row[col - 1] == " " and "/" in row[col:].split()[0]


def test_never_overwrites_the_input(model, tmp_path, capsys):
    src = tmp_path / "keep.png"
    photo(20, 20).save(src)
    before = src.read_bytes()
    with pytest.raises(SystemExit) as e:
        run("--model", str(model), "--input", str(src), "--output", str(src))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2  # refused when planning: a usage error, nothing written
    assert err == f"error: refusing to overwrite the input {src} with the result of {src}; " + (
        "nothing written"
    )
    with pytest.raises(SystemExit) as e:
        run("--model", str(model), "--input", str(tmp_path), "--output", str(tmp_path))
    assert e.value.code == 2 and "refusing to overwrite the input" in capsys.readouterr().err
    assert src.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["keep.png"]


# --- the output plan: never over an input, never two inputs into one output ------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links included, by the bytes they lead to)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")}


def _refused(model: Path, capsys, *argv: str) -> str:
    """Run, expect a usage error (2) before the model loads, return its one stderr line."""
    with pytest.raises(SystemExit) as e:
        run("--model", str(model), *argv)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_gif_result_never_replaces_its_png_sibling(model, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    photo(16, 16).save(d / "photo.gif")
    photo(16, 16, seed=1).save(d / "photo.png")
    before = _snapshot(d)
    err = _refused(model, capsys, "--input", str(d), "--output", str(d))
    assert err == (
        f"error: refusing to overwrite the input {d / 'photo.png'} with the result of "
        f"{d / 'photo.gif'} (and 1 more); nothing written"
    )
    assert _snapshot(d) == before
    out = tmp_path / "out"  # into another folder: both would become out/photo.png
    err = _refused(model, capsys, "--input", str(d), "--output", str(out))
    assert err == (
        f"error: {d / 'photo.gif'} and {d / 'photo.png'} would both be written to "
        f"{out / 'photo.png'}; nothing written"
    )
    assert not out.exists() and _snapshot(d) == before


def test_ext_never_replaces_the_inputs_of_that_format(model, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    for name in ("a.jpg", "a.png", "b.webp", "b.png"):
        photo(16, 16).save(d / name)
    before = _snapshot(d)
    err = _refused(model, capsys, "--input", str(d), "--output", str(d), "--ext", "png")
    assert err == (
        f"error: refusing to overwrite the input {d / 'a.png'} with the result of "
        f"{d / 'a.jpg'} (and 3 more); nothing written"
    )
    assert _snapshot(d) == before


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_an_existing_output_linked_to_an_input_is_refused(model, tmp_path, capsys, link):
    d, out = tmp_path / "d", tmp_path / "out"
    d.mkdir()
    out.mkdir()
    photo(16, 16).save(d / "a.png")
    photo(16, 16, seed=1).save(d / "b.png")
    if link == "hard":
        os.link(d / "b.png", out / "a.png")
    else:
        (out / "a.png").symlink_to(d / "b.png")
    before = _snapshot(d)
    err = _refused(model, capsys, "--input", str(d), "--output", str(out))
    assert err == (
        f"error: refusing to overwrite the input {d / 'b.png'} with the result of "
        f"{d / 'a.png'} ({out / 'a.png'} is a link to it); nothing written"
    )
    assert _snapshot(d) == before and [p.name for p in out.iterdir()] == ["a.png"]


def test_the_same_name_from_two_folders_is_renamed_with_a_note(model, tmp_path, capsys):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        photo(16, 16).save(tmp_path / sub / "a.png")
    out = tmp_path / "out"
    assert run("--model", str(model), "--input", str(tmp_path / "*"), "--output", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a-2.png", "a.png"]
    note = f"note: {tmp_path / 'y' / 'a.png'} → {out / 'a-2.png'} (a.png is taken by another "
    assert capsys.readouterr().err == note + "input of that name)\n"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("o.xyz", ""),
        ("o.gif", " (GIF inputs are written as PNG)"),
        ("clip.mp4", ""),
    ],
)
def test_output_with_an_unwritable_extension_is_a_usage_error(model, tmp_path, capsys, name, why):
    src = tmp_path / "in.png"
    photo(16, 16).save(src)
    out = tmp_path / name
    err = _refused(model, capsys, "--input", str(src), "--output", str(out))
    assert err == (
        f"error: --output {out}: {out.suffix} is not an image format stylize.py writes{why}; "
        "use .jpg, .jpeg, .png, .webp, .tif, .tiff, .bmp, or a folder name without an extension"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]
    (tmp_path / "results.v2").mkdir()  # an existing folder is a folder, whatever its name
    assert (
        run("--model", str(model), "--input", str(src), "--output", str(tmp_path / "results.v2"))
        == 0
    )
    assert (tmp_path / "results.v2" / "in.png").is_file()


# --- the pixel limit -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "argv", "expected"),
    [
        # 185 MP: under the documented 200 MP, yet Pillow's own bomb check refused it.
        ((13600, 13600), [], "corrupt or truncated image"),
        ((16000, 15625), [], "16000x15625 = 250.0 MP exceeds the limit of 200.0 MP; raise it"),
        ((13600, 13600), ["--max-pixels", "1e8"], "= 185.0 MP exceeds the limit of 100.0 MP"),
        ((16000, 15625), ["--max-pixels", "300_000_000"], "corrupt or truncated image"),
    ],
)
def test_max_pixels_is_the_only_pixel_limit(model, tmp_path, capsys, size, argv, expected):
    src = huge_png(tmp_path / "huge.png", *size)  # a header claiming the size, no pixel data
    with pytest.raises(SystemExit) as e:
        run("--model", str(model), "--input", str(src), "--output", str(tmp_path / "o.png"), *argv)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {src}: ") and expected in err and "Bomb" not in err
    if "exceeds" in expected:
        assert err.endswith("; raise it with --max-pixels")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "--max-pixels must be at least 1"), ("lots", "not a pixel count: 'lots'")],
)
def test_max_pixels_must_be_a_positive_count(model, tmp_path, capsys, value, message):
    src = tmp_path / "in.png"
    photo(16, 16).save(src)
    with pytest.raises(SystemExit) as e:
        run("--input", str(src), "--output", str(tmp_path / "o.png"), "--max-pixels", value)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)  # after the usage


# --- symlinked folders -----------------------------------------------------------------------


def test_symlinked_sub_folders_are_followed_once_and_loops_reported(model, tmp_path, capsys):
    d, other = tmp_path / "d", tmp_path / "elsewhere"
    (d / "sub").mkdir(parents=True)
    other.mkdir()
    photo(16, 16).save(d / "a.png")
    photo(16, 16).save(d / "sub" / "b.png")
    photo(16, 16).save(other / "c.png")
    (d / "linked").symlink_to(other, target_is_directory=True)  # followed, named "linked"
    (d / "alias").symlink_to(d / "sub", target_is_directory=True)  # b.png a second time
    (d / "sub" / "loop").symlink_to(d, target_is_directory=True)  # a loop
    out = tmp_path / "out"
    assert run("--model", str(model), "--input", str(d), "--output", str(out)) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "linked/c.png", "sub/b.png"]
    assert capsys.readouterr().err.splitlines() == [
        f"note: {d / 'alias'}: skipped, it is the same folder as {d / 'sub'}",
        f"note: {d / 'sub' / 'loop'}: skipped, it links back to {d}",
    ]


# --- masks -----------------------------------------------------------------------------------


def test_a_mask_of_another_shape_fails_that_image_and_is_never_stretched(model, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    photo(60, 40).save(d / "wide.png")
    photo(40, 60).save(d / "tall.png")
    mask = tmp_path / "mask.png"
    Image.new("L", (15, 10), 0).save(mask)  # 3:2, any resolution: fits wide.png only
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        run("--model", str(model), "--input", str(d), "--output", str(out), "--mask", str(mask))
    assert e.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {d / 'tall.png'}: --mask {mask}: mask is 15x10 but the image is 40x60: "
        "aspect ratios differ"
    )
    assert [p.name for p in out.iterdir()] == ["wide.png"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [  # argparse's own errors come after the usage text: only their last line is checked
        (["--strength", "2"], ["stylize.py: error: --strength must be between 0 and 1, got 2.0"]),
        (["--tile", "50"], ["stylize.py: error: --tile must be a multiple of 4 and at least 64"]),
        (
            ["--model", "{bad}"],
            ["error: {bad}: corrupt or not a PyTorch checkpoint (RuntimeError)"],
        ),
        (["--model", "{none}"], ["error: {none}: no such model file"]),
        (
            ["--input", "{missing}"],
            ["error: {missing}: no such file or folder"],
        ),
        (
            ["--output", "{file_for_two}"],
            ["error: --output {file_for_two} is a file but 2 images were given; give a folder"],
        ),
        (["--device", "tpu"], ["error: unknown device 'tpu' (use auto, cpu, cuda or cuda:N)"]),
    ],
    ids=["strength", "tile", "corrupt-model", "missing-model", "missing-input", "file-for-two",
         "device"],
)  # fmt: skip
def test_usage_errors_exit_2_with_a_clear_message(model, tmp_path, capsys, argv, expected):
    src = tmp_path / "in.png"
    photo(20, 20).save(src)
    photo(20, 20).save(tmp_path / "in2.png")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    subst = {
        "{bad}": str(bad),
        "{none}": str(tmp_path / "none.ckpt"),
        "{missing}": str(tmp_path / "nope.png"),
        "{file_for_two}": str(tmp_path / "one.png"),
    }
    args = {"--model": str(model), "--input": str(src), "--output": str(tmp_path / "o.png")}
    if argv[0] == "--output":
        args["--input"] = str(tmp_path / "in*.png")
    full = []
    for k, v in {**args, argv[0]: subst.get(argv[1], argv[1])}.items():
        full += [k, v]
    with pytest.raises(SystemExit) as e:
        run(*full)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    want = [line.format(**{k.strip("{}"): v for k, v in subst.items()}) for line in expected]
    if want[0].startswith("stylize.py: "):
        assert lines[0].startswith("usage: stylize.py") and lines[-1] == want[0]
    else:
        assert lines == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt", "in.png", "in2.png"]


def test_progress_bar_counts_images_and_quiet_hides_it(model, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        photo(16, 12, seed=i).save(d / f"{i}.png")
    argv = ["--backend", "eager", "--model", str(model), "--input", str(d)]
    assert main([*argv, "--output", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "3/3" in err and "img/s" in err  # tqdm's bar, finished
    assert main([*argv, "--output", str(tmp_path / "q"), "-q"]) == 0
    assert "3/3" not in capsys.readouterr().err


@pytest.mark.slow
def test_cli_as_a_subprocess(model, tmp_path):
    src = tmp_path / "in.jpg"
    photo(40, 30).save(src)
    out = tmp_path / "out.png"
    proc = subprocess.run(
        [
            sys.executable,
            "stylize.py",
            "--model",
            str(model),
            "--input",
            str(src),
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "stylized 1 image" in proc.stdout and Image.open(out).size == (40, 30)
    bad = subprocess.run(
        [
            sys.executable,
            "stylize.py",
            "--model",
            str(tmp_path / "none.ckpt"),
            "--input",
            str(src),
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"error: {tmp_path / 'none.ckpt'}: no such model file"


# --- multi-style models: --style, --style-mask, names, --list-models ---------------------------

# Not the shipped styles' names: a bare name must not find a shipped single-style model.
STYLES = ("sunrise", "waves", "embers")


def save_multi(path: Path, names: Sequence[str] = STYLES, seed: int = 3) -> Path:
    """A tiny conditional network of ``len(names)`` styles whose γ/β rows differ a lot (each
    style visibly its own), saved with one metadata entry per style."""
    torch.manual_seed(seed)
    net = TransformerNet(TINY, num_residual=1, num_styles=len(names)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ConditionalInstanceNorm):
                m.weight.uniform_(0.3, 2.0)
                m.bias.uniform_(-0.6, 0.6)
    entries = [
        {"name": n, "painting": {"title": n.title(), "artist": "A", "year": 1}} for n in names
    ]
    return save_safetensors(net, path, describe(net, names[0], width="tiny", styles=entries))


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> Path:
    return save_multi(tmp_path_factory.mktemp("multi") / "multi.safetensors")


def _reference(path: Path, img: Image.Image, style: torch.Tensor | None) -> np.ndarray:
    """What the plain network computes for ``style`` ((S,) weights or a (S, H, W) map)."""
    net, _ = load_model(path)
    x = pil_to_tensor(img).unsqueeze(0)
    with torch.no_grad():
        y = net(x, None if style is None else style.unsqueeze(0))
    return np.asarray(tensor_to_pil(y[0]).convert("RGB"), dtype=np.float32)


def _close(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_list_models_has_a_row_per_style_of_a_multi_file(model, multi, capsys):
    assert (
        main(
            ["--list-models", "--models-dir", str(model.parent), "--models-dir", str(multi.parent)]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[1:]]
    mine = (str(model), str(multi))  # the shipped multi.safetensors is listed too
    got = [(r[0], r[1], r[-1]) for r in rows if r[0] in ("multi", "tiny") and r[-1] in mine]
    assert got == [("tiny", "tiny", str(model))] + [("multi", s, str(multi)) for s in STYLES]


@pytest.mark.parametrize(
    ("argv", "style"),
    [
        (["--model", "{multi}", "--style", "waves"], "waves"),
        (["--model", "waves", "--models-dir", "{dir}"], "waves"),  # a style's name
        (["--model", "waves", "--models-dir", "{dir}", "--style", "embers"], "embers"),
        (["--model", "multi", "--models-dir", "{dir}"], "sunrise"),  # the first style
    ],
    ids=["file-and-style", "style-name", "style-overrides-the-name", "first-style"],
)
def test_a_style_of_a_multi_file_is_that_one_hot_row(multi, tmp_path, capsys, argv, style):
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    photo(40, 28).save(src)
    subst = {"{multi}": str(multi), "{dir}": str(multi.parent)}
    argv = [subst.get(a, a) for a in argv]
    assert run(*argv, "--input", str(src), "--output", str(out)) == 0
    weights = torch.nn.functional.one_hot(torch.tensor(STYLES.index(style)), 3).float()
    ref = _reference(multi, Image.open(src), weights)
    assert _close(_rgb(out), ref) < 0.5
    others = [_reference(multi, Image.open(src), torch.eye(3)[i]) for i in range(3)]
    assert min(_close(ref, o) for o in others if not np.array_equal(o, ref)) > 5  # styles differ
    assert f"with '{style}' of multi.safetensors" in capsys.readouterr().out


def test_a_single_model_of_that_name_wins_over_a_style_of_a_multi_file(multi, tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    (d / "multi.safetensors").write_bytes(multi.read_bytes())
    save_tiny(d / "waves.safetensors", style="waves")
    src = tmp_path / "in.png"
    photo(24, 24).save(src)
    argv = ["--models-dir", str(d), "--input", str(src)]
    assert run("--model", "waves", *argv, "--output", str(tmp_path / "a.png")) == 0
    assert (
        run("--model", str(d / "waves.safetensors"), *argv, "--output", str(tmp_path / "b.png"))
        == 0
    )
    assert np.array_equal(_rgb(tmp_path / "a.png"), _rgb(tmp_path / "b.png"))


def test_a_mix_is_one_forward_pass_with_normalised_weights(multi, tmp_path):
    src, out = tmp_path / "in.png", tmp_path / "mix.png"
    photo(48, 32, seed=2).save(src)
    spec = "sunrise=7, waves=3"  # normalised: 0.7, 0.3
    assert (
        run("--model", str(multi), "--style", spec, "--input", str(src), "--output", str(out)) == 0
    )
    ref = _reference(multi, Image.open(src), torch.tensor([0.7, 0.3, 0.0]))
    assert _close(_rgb(out), ref) < 0.5
    # γ/β are mixed, not the images: the mix is none of the pure styles nor their average.
    pure = [_reference(multi, Image.open(src), torch.eye(3)[i]) for i in range(2)]
    assert _close(_rgb(out), pure[0]) > 1 and _close(_rgb(out), pure[1]) > 1


def test_a_style_mask_paints_the_first_style_on_white_and_the_second_on_black(multi, tmp_path):
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    img = photo(96, 64, seed=4)
    img.save(src)
    mask = Image.new("L", (48, 32), 0)  # half the resolution, the same aspect ratio
    mask.paste(255, (0, 0, 24, 32))  # left half white: embers; right half black: waves
    mask.save(tmp_path / "halves.png")
    argv = ["--model", str(multi), "--style", "embers,waves"]
    argv += [
        "--style-mask",
        str(tmp_path / "halves.png"),
        "--input",
        str(src),
        "--output",
        str(out),
    ]
    assert run(*argv) == 0
    got = _rgb(out)
    # Exactly the engine's painting (the CLI only parses and passes it on) …
    engine = Stylizer(multi, device="cpu", backend="eager")
    rows = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    ref = engine.stylize_image(img, style=rows, style_mask=mask)
    assert _close(got, np.asarray(ref, dtype=np.float32)) < 0.5
    # … which is each style on its side, away from the soft edge.
    scream = _reference(multi, img, torch.eye(3)[2])
    wave = _reference(multi, img, torch.eye(3)[1])
    left, right = np.s_[:, 4:36], np.s_[:, 60:92]
    # (Closer, not equal: instance norm's statistics are the whole image's, both styles'.)
    assert _close(got[left], scream[left]) < _close(got[left], wave[left])
    assert _close(got[right], wave[right]) < _close(got[right], scream[right])


def test_both_masks_apply_and_each_must_fit(multi, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    photo(60, 40).save(d / "wide.png")
    photo(40, 60).save(d / "tall.png")
    Image.new("L", (15, 10), 255).save(tmp_path / "style.png")  # 3:2 like wide.png only
    Image.new("L", (30, 20), 0).save(tmp_path / "photo.png")  # black: the photo everywhere
    argv = ["--model", str(multi), "--style", "waves,embers", "--input", str(d)]
    argv += ["--style-mask", str(tmp_path / "style.png"), "--mask", str(tmp_path / "photo.png")]
    with pytest.raises(SystemExit) as e:
        run(*argv, "--output", str(tmp_path / "out"))
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {d / 'tall.png'}: --mask {tmp_path / 'photo.png'}: mask is 30x20 but the image "
        "is 40x60: aspect ratios differ"
    ]
    # The photo mask is all black: the result is the photo, whatever the styles.
    assert np.array_equal(_rgb(tmp_path / "out" / "wide.png"), _rgb(d / "wide.png"))
    (d / "wide.png").unlink()
    argv[argv.index("--mask") : argv.index("--mask") + 2] = []
    with pytest.raises(SystemExit):
        run(*argv, "--output", str(tmp_path / "out2"))
    assert capsys.readouterr().err.strip() == (
        f"error: {d / 'tall.png'}: --style-mask {tmp_path / 'style.png'}: mask is 15x10 but the "
        "image is 40x60: aspect ratios differ"
    )


def test_a_single_style_model_takes_its_own_style_only(model, tmp_path):
    src = tmp_path / "in.png"
    photo(20, 20).save(src)
    assert run("--model", str(model), "--input", str(src), "--output", str(tmp_path / "a.png")) == 0
    argv = ["--model", str(model), "--style", "tiny", "--input", str(src)]
    assert run(*argv, "--output", str(tmp_path / "b.png")) == 0
    assert np.array_equal(_rgb(tmp_path / "a.png"), _rgb(tmp_path / "b.png"))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--model", "{tiny}", "--style", "waves"],
            "error: --style waves: tiny.safetensors holds one style, 'tiny' (multi-style "
            "models: --list-models)",
        ),
        (
            ["--model", "{tiny}", "--style", "tiny,waves", "--style-mask", "{mask}"],
            "error: --style-mask needs a multi-style model: tiny.safetensors holds one style, "
            "'tiny'",
        ),
        (
            ["--model", "{multi}", "--style", "sunrice=0.5,waves=0.5"],
            "error: --style sunrice=0.5,waves=0.5: unknown style 'sunrice' (did you "
            "mean 'sunrise'?); available: sunrise, waves, embers",
        ),
        (
            ["--model", "{multi}", "--style", "sunrise=x"],
            "error: --style sunrise=x: sunrise=x: 'x' is not a number",
        ),
        (
            ["--model", "{multi}", "--style", "sunrise,waves"],
            "error: --style sunrise,waves: 2 styles without weights: mix them "
            "(sunrise=0.5,waves=0.5) or paint the two with a style mask (--style-mask "
            "FILE)",
        ),
        (
            ["--model", "{multi}", "--style-mask", "{mask}"],
            "error: --style-mask paints two styles: give them with --style A,B (white: A, black: "
            "B); multi.safetensors has sunrise, waves, embers",
        ),
        (
            ["--model", "{multi}", "--style", "waves", "--style-mask", "{mask}"],
            "error: --style waves: a style mask paints two styles: give two names without "
            "weights, e.g. waves,sunrise (white: the first, black: the second)",
        ),
        (
            ["--model", "{multi}", "--style", "waves,embers", "--style-mask", "{none}"],
            "error: {none}: no such file",
        ),
        (
            ["--model", "mosaic", "--models-dir", "{dir}"],
            # model_io.find_style's line (its format is model_io's), then the shipped models
            "error: no model or style named 'mosaic'; available: multi…",
        ),
    ],
    ids=["single-other-style", "single-style-mask", "unknown-name", "bad-weight", "two-no-mask",
         "mask-no-style", "mask-one-style", "missing-mask", "unknown-model"],
)  # fmt: skip
def test_style_usage_errors_are_one_line_before_the_model_loads(
    model, multi, tmp_path, capsys, monkeypatch, argv, expected
):
    d = tmp_path / "models"
    d.mkdir()
    (d / "multi.safetensors").write_bytes(multi.read_bytes())
    (d / "tiny.safetensors").write_bytes(model.read_bytes())
    Image.new("L", (20, 20), 255).save(tmp_path / "mask.png")
    src = tmp_path / "in.png"
    photo(20, 20).save(src)

    def no_model(*_a, **_kw):
        raise AssertionError("the model was loaded before the style spec was checked")

    monkeypatch.setattr(cli, "Stylizer", no_model)
    subst = {
        "{tiny}": str(d / "tiny.safetensors"),
        "{multi}": str(d / "multi.safetensors"),
        "{mask}": str(tmp_path / "mask.png"),
        "{none}": str(tmp_path / "none.png"),
        "{dir}": str(d),
    }
    argv = [subst.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as e:
        run(*argv, "--input", str(src), "--output", str(tmp_path / "out.png"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    want = expected.format(none=subst["{none}"])
    assert err.startswith(want[:-1]) if want.endswith("…") else err == want, err
    assert not (tmp_path / "out.png").exists()
