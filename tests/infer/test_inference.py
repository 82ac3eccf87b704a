"""The inference engine: model loading, odd images, sizes, strength, colour, masks and tiling."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from fast_style.core import color
from fast_style.core.imaging import pil_to_tensor
from fast_style.core.model_io import ModelFileError
from fast_style.core.resources import model_dirs, shipped_models_dir
from fast_style.infer.backends.ort import onnxruntime_available
from fast_style.infer.stylizer import Stylizer
from fast_style.infer.tiling import feather_weights, tile_spans
from tests._stylize_helpers import odd_images, photo, save_tiny, save_tiny_ckpt, tiny_net
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path_factory, monkeypatch):
    """Keep the ONNX export cache of these tests out of the user's home."""
    monkeypatch.setenv("FAST_STYLE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def stylizer() -> Stylizer:
    return Stylizer(tiny_net(), device="cpu", backend="eager", meta={"style": "tiny"})


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32)


# --- model loading ---------------------------------------------------------------------------


def test_model_names_are_looked_up_in_extra_dirs_then_the_shipped_models(tmp_path):
    dirs = model_dirs([tmp_path])
    assert dirs[0] == tmp_path and dirs[-1] == shipped_models_dir()
    assert (shipped_models_dir() / "starry_night.safetensors").is_file()


def test_every_model_form_gives_the_same_result(tmp_path):
    st = save_tiny(tmp_path / "models" / "tiny.safetensors")
    ck = save_tiny_ckpt(tmp_path / "last.ckpt")
    x = torch.rand(1, 3, 19, 26)
    ref = Stylizer(tiny_net(), device="cpu", backend="eager").stylize_tensor(x)
    for model, kw in [
        (st, {}),
        (str(st), {}),
        (ck, {}),
        ("tiny", {"search_dirs": [tmp_path / "models"]}),
    ]:
        s = Stylizer(model, device="cpu", backend="eager", **kw)
        assert s.meta["style"] == "tiny" and s.meta["channels"] == [8, 16, 16]
        torch.testing.assert_close(s.stylize_tensor(x), ref)


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 50, b"PK\x03\x04broken"])
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_corrupt_model_is_one_clear_line(tmp_path, content, suffix):
    p = tmp_path / f"bad{suffix}"
    p.write_bytes(content)
    with pytest.raises(ModelFileError) as err:
        Stylizer(p, device="cpu")
    assert "\n" not in str(err.value) and str(p) in str(err.value)


def test_ckpt_of_another_architecture_is_rejected(tmp_path):
    p = save_tiny_ckpt(tmp_path / "other.ckpt", meta_overrides={"architecture": "resnet_gan"})
    with pytest.raises(ModelFileError, match="architecture"):
        Stylizer(p, device="cpu")


def test_ckpt_whose_weights_do_not_match_its_metadata_is_rejected(tmp_path):
    p = save_tiny_ckpt(tmp_path / "wrong.ckpt", meta_overrides={"channels": [4, 8, 8]})
    with pytest.raises(ModelFileError, match="do not match"):
        Stylizer(p, device="cpu")


def test_ckpt_with_pickled_code_is_refused_without_running_it(tmp_path):
    flag = tmp_path / "pwned"
    script = textwrap.dedent(f"""
        import os, torch
        class Evil:
            def __reduce__(self):
                return (os.system, ("touch {flag}",))
        torch.save({{"state_dict": {{}}, "fast_style": Evil()}}, "{tmp_path / "evil.ckpt"}")
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    with pytest.raises(ModelFileError, match="refused"):
        Stylizer(tmp_path / "evil.ckpt", device="cpu")
    assert not flag.exists()


def test_unknown_name_lists_what_is_available(tmp_path):
    save_tiny(tmp_path / "mosaic.safetensors")
    with pytest.raises(ModelFileError, match="mosaic"):
        Stylizer("candy", device="cpu", search_dirs=[tmp_path])


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="backend"):
        Stylizer(tiny_net(), backend="tensorrt")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            Stylizer(tiny_net(), device="cuda")


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")
def test_onnx_export_is_cached_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    from fast_style.infer.backends.ort import onnx_cache_dir

    monkeypatch.setenv("FAST_STYLE_CACHE", str(tmp_path))
    x = torch.rand(1, 3, 16, 16)
    first = Stylizer(tiny_net(), device="cpu", backend="onnxruntime").stylize_tensor(x)
    (cached,) = onnx_cache_dir().glob("*.onnx")
    cached.write_bytes(b"damaged")
    again = Stylizer(tiny_net(), device="cpu", backend="onnxruntime").stylize_tensor(x)
    torch.testing.assert_close(again, first)
    assert cached.stat().st_size > 1000  # rewritten


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")
def test_onnxruntime_backend_matches_eager(stylizer):
    ort = Stylizer(tiny_net(), device="cpu", backend="onnxruntime")
    # the CPU default: the fused kernels when they build, else ONNX Runtime (test_fused_cpu.py)
    assert Stylizer(tiny_net(), device="cpu").backend in ("fused", "onnxruntime")
    for shape in [(1, 3, 5, 3), (2, 3, 37, 50)]:
        x = torch.rand(shape)
        torch.testing.assert_close(
            ort.stylize_tensor(x), stylizer.stylize_tensor(x), atol=1e-4, rtol=0
        )


# --- images and sizes --------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 5), (33, 17), (64, 64), (129, 65)])
def test_output_size_equals_input_size(stylizer, size):
    assert stylizer.stylize_image(photo(*size)).size == size
    x = torch.rand(1, 3, size[1], size[0])
    assert stylizer.stylize_tensor(x).shape == x.shape


@pytest.mark.parametrize("kind", list(odd_images()))
def test_every_pillow_mode_works(stylizer, kind):
    img = odd_images()[kind]
    out = stylizer.stylize_image(img, strength=0.7, preserve_color=True)
    assert out.size == img.size
    has_alpha = kind in ("LA", "RGBA", "P+transparency")
    assert out.mode == ("RGBA" if has_alpha else "RGB")


def test_alpha_is_kept_exactly(stylizer):
    img = odd_images()["RGBA"]
    out = stylizer.stylize_image(img)
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(img.getchannel("A")))


def test_max_size_downscales_the_long_side(stylizer):
    out = stylizer.stylize_image(photo(90, 60), max_size=45)
    assert out.size == (45, 30)
    assert stylizer.stylize_image(photo(30, 20), max_size=45).size == (30, 20)  # never upscales


def test_batch_of_mixed_sizes_matches_one_by_one(stylizer):
    imgs = [photo(20, 16, 1), photo(20, 16, 2), photo(13, 9, 3), odd_images()["RGBA"]]
    many = stylizer.stylize_images(imgs, strength=0.8)
    for img, out in zip(imgs, many, strict=True):
        one = stylizer.stylize_image(img, strength=0.8)
        assert out.mode == one.mode and out.size == one.size
        assert np.abs(_arr(out) - _arr(one)).max() <= 1


# --- strength, colour, mask ------------------------------------------------------------


def test_strength_zero_returns_the_photo(stylizer):
    img = photo(31, 22)
    assert np.array_equal(np.asarray(stylizer.stylize_image(img, strength=0.0)), np.asarray(img))
    x = torch.rand(2, 3, 9, 11)
    torch.testing.assert_close(stylizer.stylize_tensor(x, strength=0.0), x)


def test_strength_moves_steadily_from_photo_to_style(stylizer):
    img = photo(31, 22)
    full = _arr(stylizer.stylize_image(img))
    dist = [
        np.abs(_arr(stylizer.stylize_image(img, strength=s)) - full).mean()
        for s in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    assert dist[-1] == 0 and all(a > b for a, b in itertools.pairwise(dist))
    with pytest.raises(ValueError, match="strength"):
        stylizer.stylize_image(img, strength=1.5)


def test_preserve_color_keeps_the_chroma(stylizer):
    x = pil_to_tensor(photo(40, 30)).unsqueeze(0)
    plain = stylizer.stylize_tensor(x)
    kept = stylizer.stylize_tensor(x, preserve_color=True)
    iq = lambda t: color.rgb_to_yiq(t)[:, 1:]  # noqa: E731
    # Chroma equals the photo's except where the new luminance leaves the RGB gamut (clamped).
    assert (iq(kept) - iq(x)).abs().median() < 2e-3
    assert (iq(kept) - iq(x)).abs().mean() < 0.5 * (iq(plain) - iq(x)).abs().mean()
    assert (color.luminance(kept) - color.luminance(plain)).abs().mean() < 0.01  # Y is the style's


def test_match_histogram_moves_colour_statistics_to_the_photo(stylizer):
    x = pil_to_tensor(photo(40, 30)).unsqueeze(0)
    plain = stylizer.stylize_tensor(x)
    matched = stylizer.stylize_tensor(x, match_histogram=True)

    def err(t: torch.Tensor) -> float:  # colour mean and spread against the photo's
        return float(
            (t.mean((2, 3)) - x.mean((2, 3))).abs().max()
            + (t.std((2, 3)) - x.std((2, 3))).abs().max()
        )

    assert err(matched) < 0.02 and err(matched) < 0.3 * err(plain)
    both = stylizer.stylize_tensor(x, preserve_color=True, match_histogram=True)
    y_b, y_x = color.luminance(both), color.luminance(x)
    assert abs(y_b.mean() - y_x.mean()) < 0.02 and abs(y_b.std() - y_x.std()) < 0.02


def test_mask_selects_photo_or_style(stylizer):
    img = photo(48, 32)
    full = np.asarray(stylizer.stylize_image(img))
    black, white = Image.new("L", (12, 8), 0), Image.new("L", (300, 200), 255)  # same 3:2 shape
    assert np.array_equal(np.asarray(stylizer.stylize_image(img, mask=black)), np.asarray(img))
    assert np.array_equal(np.asarray(stylizer.stylize_image(img, mask=white)), full)
    half = Image.new("L", (48, 32), 0)
    half.paste(255, (24, 0, 48, 32))
    out = _arr(stylizer.stylize_image(img, mask=half))
    assert np.abs(out[:, :8] - _arr(img)[:, :8]).max() <= 1  # far left: the photo
    assert np.abs(out[:, -8:] - full[:, -8:]).max() <= 1  # far right: the style
    edge = out[:, 22:26]  # the edge is feathered: in between
    assert (
        np.abs(edge - _arr(img)[:, 22:26]).mean() > 1 and np.abs(edge - full[:, 22:26]).mean() > 1
    )


# --- tiling -----------------------------------------------------------------------------


def test_tile_spans_cover_the_image_on_multiples_of_four():
    for n, tile, overlap in [(1000, 256, 32), (300, 256, 32), (257, 64, 16), (129, 64, 0)]:
        spans = tile_spans(n, tile, overlap)
        assert spans[0][0] == 0 and spans[-1][1] == n
        for (s0, e0), (s1, _) in itertools.pairwise(spans):
            assert s1 % 4 == 0 and e0 - s1 >= overlap and s1 > s0
        assert all(e - s <= tile + 3 for s, e in spans)
        for i in range(len(spans)):
            w = feather_weights(spans, i)
            assert len(w) == spans[i][1] - spans[i][0] and w.min() > 0


def test_tiled_matches_untiled_on_a_mid_size_image(stylizer):
    # Within the thumbnail budget the statistics are exact; what is left are tile-border
    # effects, small when the overlap is comparable to the network's receptive field.
    x = pil_to_tensor(photo(301, 203)).unsqueeze(0)
    full = stylizer.stylize_tensor(x)
    tiled = stylizer.stylize_tensor(x, tile=128, overlap=32)
    assert (tiled - full).abs().max() < 0.06
    assert (tiled - full).abs().mean() < 1e-3
    img = photo(301, 203)
    a, b = (
        _arr(stylizer.stylize_image(img)),
        _arr(stylizer.stylize_image(img, tile=128, overlap=32)),
    )
    assert np.abs(a - b).mean() < 0.5  # 8-bit levels


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")
def test_tiled_onnxruntime_matches_tiled_pytorch(stylizer):
    """ONNX Runtime runs the tiles with the frozen statistics as a graph input."""
    ort = Stylizer(tiny_net(), device="cpu", backend="onnxruntime", stats_pixels=96 * 64)
    eager = Stylizer(tiny_net(), device="cpu", backend="eager", stats_pixels=96 * 64)
    x = pil_to_tensor(photo(150, 101)).unsqueeze(0)
    a = ort.stylize_tensor(x, tile=64, overlap=16, preserve_color=True)
    b = eager.stylize_tensor(x, tile=64, overlap=16, preserve_color=True)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def _naive_tiles(s: Stylizer, x: torch.Tensor, tile: int) -> torch.Tensor:
    out = torch.empty_like(x)
    for y0 in range(0, x.shape[2], tile):
        for x0 in range(0, x.shape[3], tile):
            out[..., y0 : y0 + tile, x0 : x0 + tile] = s.stylize_tensor(
                x[..., y0 : y0 + tile, x0 : x0 + tile]
            )
    return out


def _seam_step(y: torch.Tensor, cols: list[int]) -> float:
    """Mean absolute jump between neighbouring columns at ``cols``."""
    return float(torch.stack([(y[..., c] - y[..., c - 1]).abs().mean() for c in cols]).mean())


def test_thumbnail_statistics_leave_no_seams():
    # The statistics pass sees a 2× smaller thumbnail here; tiles still share one normalisation.
    s = Stylizer(tiny_net(), device="cpu", backend="eager", stats_pixels=128 * 96)
    x = pil_to_tensor(photo(256, 192, seed=3)).unsqueeze(0)
    full = s.stylize_tensor(x)
    tiled = s.stylize_tensor(x, tile=64, overlap=16)
    naive = _naive_tiles(s, x, 64)
    seams = [64, 128, 192]
    assert _seam_step(naive, seams) > 1.5 * _seam_step(full, seams)  # the test can see seams
    assert _seam_step(tiled, seams) < 1.2 * _seam_step(full, seams)
    assert (tiled - full).abs().mean() < 0.5 * (naive - full).abs().mean()


def test_network_input_stays_bounded_as_the_image_grows():
    s = Stylizer(tiny_net(), device="cpu", backend="eager", stats_pixels=96 * 96)
    sizes: list[tuple[int, ...]] = []
    hook = s.deploy.register_forward_pre_hook(lambda _m, args: sizes.append(tuple(args[0].shape)))
    try:
        for w, h in [(200, 150), (450, 330)]:
            sizes.clear()
            out = s.stylize_image(photo(w, h), tile=96, overlap=16, preserve_color=True)
            assert out.size == (w, h)
            thumb, tiles = sizes[0], sizes[1:]  # the statistics pass runs first
            assert thumb[-1] * thumb[-2] <= 1.1 * 96 * 96 and len(tiles) > 1  # (padded to 4)
            assert max(max(sz[-2:]) for sz in tiles) <= 96 + 4  # last tile ≤ tile + 3, padded to 4
    finally:
        hook.remove()


_RSS_SCRIPT = """
import resource, sys, torch
from PIL import Image
from fast_style.infer.stylizer import Stylizer
from tests._stylize_helpers import photo, tiny_net
torch.set_num_threads(2)
s = Stylizer(tiny_net(channels=(16, 32, 64)), device="cpu", backend="eager", stats_pixels=256 * 256)
img = photo(64, 64).resize((int(sys.argv[1]), int(sys.argv[1])))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s.stylize_image(img, tile=256, overlap=32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


@pytest.mark.slow
def test_peak_memory_stays_bounded_as_the_image_grows():
    """Peak RSS over the run, for a 0.6 MP and a 2.4 MP image: the growth must be about the
    8-bit image buffers (~10 B/pixel), not the network's activations (~1 kB/pixel here)."""
    peaks = {}
    for side in (768, 1536):
        proc = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(side)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        peaks[side] = int(proc.stdout.split()[-1]) / 1024  # MB
    growth = peaks[1536] - peaks[768]
    extra_pixels = 1536**2 - 768**2
    assert growth < 60 * extra_pixels / 1e6, json.dumps(peaks)  # < 60 bytes per added pixel
