"""The stylize CLI: inputs (files, folders, globs), outputs, odd images, errors, progress."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fast_style.config import PROJECT_ROOT
from fast_style.stylize import main
from tests._stylize_helpers import exif_rotated_jpeg, odd_images, photo, save_tiny, save_tiny_ckpt


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path_factory, monkeypatch):
    """Keep the ONNX export cache of these tests out of the user's home."""
    monkeypatch.setenv("FAST_STYLE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny.safetensors")


def run(*argv: str) -> int:
    return main(["--backend", "eager", "-q", *argv])


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
    arr = (np.linspace(0, 65535, 24 * 18).reshape(18, 24)).astype(np.uint16)
    src = tmp_path / "deep.png"
    Image.fromarray(arr).save(src)
    with Image.open(src) as im:
        assert im.mode.startswith("I")
    assert run("--model", str(model), "--input", str(src), "--output", str(tmp_path / "o.png")) == 0


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
    run("--model", str(model), "--input", str(src), "--output", str(small), "--max-size", "30")
    assert Image.open(small).size == (30, 20)
    tiled = tmp_path / "tiled.png"
    argv = ["--tile", "64", "--overlap", "16", "--preserve-color", "--match-histogram"]
    assert run("--model", str(model), "--input", str(src), "--output", str(tiled), *argv) == 0
    assert Image.open(tiled).size == (60, 40)
    mask = tmp_path / "mask.png"
    Image.new("L", (10, 10), 0).save(mask)
    masked = tmp_path / "masked.png"
    run("--model", str(model), "--input", str(src), "--output", str(masked), "--mask", str(mask))
    assert np.array_equal(np.asarray(Image.open(masked)), np.asarray(Image.open(src)))


def test_ckpt_and_style_name(model, tmp_path):
    src = tmp_path / "in.jpg"
    photo(20, 20).save(src)
    ckpt = save_tiny_ckpt(tmp_path / "ck" / "last.ckpt")
    assert run("--model", str(ckpt), "--input", str(src), "--output", str(tmp_path / "a.png")) == 0
    argv = ["--model", "tiny", "--models-dir", str(model.parent)]
    assert run(*argv, "--input", str(src), "--output", str(tmp_path / "b.png")) == 0


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
    assert e.value.code == 1 and "overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("--model", str(model), "--input", str(tmp_path), "--output", str(tmp_path))
    assert src.read_bytes() == before


@pytest.mark.parametrize(
    "argv",
    [
        ["--strength", "2"],
        ["--tile", "50"],
        ["--model", "{bad}"],
        ["--input", "{missing}"],
        ["--output", "{file_for_two}"],
        ["--device", "tpu"],
    ],
)
def test_usage_errors_exit_2_with_one_line(model, tmp_path, capsys, argv):
    src = tmp_path / "in.png"
    photo(20, 20).save(src)
    photo(20, 20).save(tmp_path / "in2.png")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    subst = {
        "{bad}": str(bad),
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
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error" in last


def test_progress_counter_without_tqdm(model, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm → ImportError
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        photo(16, 12, seed=i).save(d / f"{i}.png")
    assert (
        main(
            [
                "--backend",
                "eager",
                "--model",
                str(model),
                "--input",
                str(d),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    assert "3/3 images" in capsys.readouterr().err


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
        cwd=PROJECT_ROOT,
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
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
