"""fast_style.imaging: the one pixel limit, folder listing through links, the mask rule and
crash-safe saving."""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from fast_style.core import imaging
from fast_style.core.imaging import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    ImageTooLargeError,
    list_images,
    open_image,
    open_image_bytes,
    save_image,
)
from fast_style.infer.stylizer import Stylizer
from tests._imaging_helpers import huge_png, huge_png_bytes
from tests._stylize_helpers import photo, tiny_net

# 13600 × 13600 = 185.0 MP: under fast_style's 200 MP, over Pillow's 2 × 89.5 MP bomb limit.
W185 = H185 = 13600


@pytest.fixture(autouse=True)
def _bomb_warnings_are_errors():
    """Pillow's DecompressionBombWarning (above ~89 MP) must not appear either."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


# --- the pixel limit -------------------------------------------------------------------------


def test_the_documented_limit_is_the_real_one(tmp_path):
    src = huge_png(tmp_path / "185mp.png", W185, H185)
    assert W185 * H185 < DEFAULT_MAX_PIXELS
    with pytest.raises(ImageReadError) as e:  # past the limit check: the data is truncated
        open_image(src)
    assert "corrupt or truncated image" in str(e.value) and "Bomb" not in str(e.value)
    with pytest.raises(ImageReadError) as e:
        open_image(src, max_pixels=100_000_000, hint="raise it with --max-pixels")
    assert str(e.value) == (
        f"{src}: 13600x13600 = 185.0 MP exceeds the limit of 100.0 MP; raise it with --max-pixels"
    )
    with pytest.raises(ImageReadError, match="corrupt or truncated"):
        open_image(src, max_pixels=None)  # no limit at all: Pillow's is lifted too


def test_uploads_use_the_same_single_limit():
    data = huge_png_bytes(W185, H185)
    with pytest.raises(ImageReadError, match="corrupt or truncated") as e:
        open_image_bytes(data, name="big.png")
    assert not isinstance(e.value, ImageTooLargeError)
    with pytest.raises(ImageTooLargeError) as e:
        open_image_bytes(data, max_pixels=150_000_000, name="big.png")
    assert str(e.value) == "big.png: 13600x13600 = 185.0 MP exceeds the limit of 150.0 MP"
    with pytest.raises(ImageTooLargeError) as e:  # small limits read in pixels, not "0.0 MP"
        open_image_bytes(data, max_pixels=1000, name="big.png", hint="see --max-pixels")
    assert str(e.value).endswith("exceeds the limit of 1000 pixels; see --max-pixels")


def test_pillows_limit_is_lifted_for_concurrent_opens_and_restored(tmp_path, monkeypatch):
    """Threads opening at once (the server) all get fast_style's limit only; afterwards
    Pillow's global is back to what it was."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64×64 = 4096 > 2 × 1000
    src = tmp_path / "small.png"
    photo(64, 64).save(src)
    data = src.read_bytes()
    barrier, results = threading.Barrier(8), []

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(20):
            try:
                im = open_image(src) if i % 2 else open_image_bytes(data)
                results.append(im.size)
            except Exception as e:  # recorded, and asserted below
                results.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(64, 64)] * 160
    assert Image.MAX_IMAGE_PIXELS == 1000


# --- folders ---------------------------------------------------------------------------------


def _tree(tmp_path):
    """root/a.png, root/sub/b.png, root/linked → ../elsewhere (c.png), root/alias → root/sub,
    root/sub/loop → root."""
    root, other = tmp_path / "root", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    other.mkdir()
    for p in (root / "a.png", root / "sub" / "b.png", other / "c.png"):
        photo(8, 8).save(p)
    (root / "linked").symlink_to(other, target_is_directory=True)
    (root / "alias").symlink_to(root / "sub", target_is_directory=True)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    return root


def test_list_images_follows_symlinked_folders_once(tmp_path):
    root = _tree(tmp_path)
    notes: list[str] = []
    found = list_images(root, notes=notes)
    assert [p.relative_to(root).as_posix() for p in found] == ["a.png", "linked/c.png", "sub/b.png"]
    assert notes == [
        f"{root / 'alias'}: skipped, it is the same folder as {root / 'sub'}",
        f"{root / 'sub' / 'loop'}: skipped, it links back to {root}",
    ]
    assert list_images(root) == found  # the old signature: positional root, no notes
    assert [p.name for p in list_images(root, recursive=False)] == ["a.png"]


# --- masks -----------------------------------------------------------------------------------


def test_check_mask_size_allows_any_resolution_within_two_percent():
    imaging.check_mask_size((15, 10), (60, 40))
    imaging.check_mask_size((1010, 1000), (100, 100))  # 1 % wider
    with pytest.raises(imaging.MaskSizeError) as e:
        imaging.check_mask_size((10, 20), (60, 40))
    assert str(e.value) == "mask is 10x20 but the image is 60x40: aspect ratios differ"
    assert e.value.mask_size == (10, 20) and e.value.image_size == (60, 40)
    assert isinstance(e.value, ValueError)
    with pytest.raises(imaging.MaskSizeError):
        imaging.check_mask_size((1030, 1000), (100, 100))  # 3 % wider


def test_the_library_refuses_to_stretch_a_mask():
    st = Stylizer(tiny_net(), device="cpu", backend="eager")
    img = photo(48, 32)
    with pytest.raises(ValueError, match="mask is 200x100 but the image is 48x32"):
        st.stylize_image(img, mask=Image.new("L", (200, 100), 255))
    out = st.stylize_image(img, mask=Image.new("L", (12, 8), 0))  # same shape: fine
    assert np.array_equal(np.asarray(out), np.asarray(img))


# --- saving ----------------------------------------------------------------------------------


def test_save_image_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    dst = tmp_path / "out" / "x.jpg"
    save_image(photo(16, 8), dst)
    with Image.open(dst) as im:  # the format follows the final name, not the temporary one
        assert im.format == "JPEG" and im.size == (16, 8)
    before = dst.read_bytes()
    real_save = Image.Image.save

    def dying_save(self, fp, *a, **kw):
        real_save(self, fp, *a, **kw)
        with open(fp, "r+b") as f:  # half the bytes on disk, then the process "dies"
            f.truncate(os.path.getsize(fp) // 2)
        raise OSError("killed")

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(OSError, match="killed"):
        save_image(photo(16, 8, seed=1), dst)
    assert dst.read_bytes() == before and os.listdir(dst.parent) == ["x.jpg"]
    with pytest.raises(OSError, match="killed"):
        save_image(photo(16, 8), tmp_path / "new.png")
    assert not (tmp_path / "new.png").exists()


def test_save_image_refuses_an_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="cannot write") as e:
        save_image(photo(8, 8), tmp_path / "x.xyz")
    assert str(e.value) == f"{tmp_path / 'x.xyz'}: cannot write this image format (.xyz)"
    assert list(tmp_path.iterdir()) == []
