import warnings

import pytest
import torch
from PIL import Image

from fast_style.core.imaging import list_images
from fast_style.train.config import DataConfig
from fast_style.train.data import (
    ImageFolderDataset,
    StyleDataModule,
    UnreadableImagesWarning,
    scan_images,
    split_validation,
)


def _photo(path, size=(40, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(len(str(path)))
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).convert(mode).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    """A COCO-like tree with odd members: nested dirs, greyscale, RGBA, CMYK, corrupt files."""
    root = tmp_path / "train2014"
    for i in range(6):
        _photo(root / f"a{i}.jpg")
    _photo(root / "sub" / "deeper" / "grey.png", mode="L")
    _photo(root / "sub" / "alpha.png", mode="RGBA")
    _photo(root / "sub" / "cmyk.jpg", mode="CMYK")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "empty.png").write_bytes(b"")
    return root


def test_images_are_found_recursively(folder):
    names = {p.name for p in list_images(folder)}
    assert {"grey.png", "alpha.png", "cmyk.jpg", "a0.jpg", "broken.jpg"} <= names
    assert "notes.txt" not in names


def test_unreadable_files_are_skipped_with_one_counting_warning(folder):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        good = scan_images(list_images(folder), folder)
    ours = [w for w in caught if issubclass(w.category, UnreadableImagesWarning)]
    assert len(ours) == 1
    assert "skipped 2 of 11 files" in str(ours[0].message)
    assert len(good) == 9


def test_training_samples_are_rgb_crops_in_range(folder):
    with pytest.warns(UnreadableImagesWarning):
        files = scan_images(list_images(folder), folder)
    ds = ImageFolderDataset(files, image_size=24, train=True)
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1


def test_random_crop_and_flip_vary_but_validation_is_fixed(tmp_path):
    f = _photo(tmp_path / "wide.png", size=(80, 40))
    train = ImageFolderDataset([f], 16, train=True)
    torch.manual_seed(0)
    crops = {tuple(train[0].flatten()[:20].tolist()) for _ in range(10)}
    assert len(crops) > 1
    val = ImageFolderDataset([f], 16, train=False)
    assert torch.equal(val[0], val[0])


def test_a_file_that_breaks_mid_epoch_is_replaced_not_fatal(tmp_path):
    good = _photo(tmp_path / "good.jpg")
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good.read_bytes()[:200])  # valid header, truncated body
    ds = ImageFolderDataset([bad, good], 16)
    with pytest.warns(UnreadableImagesWarning, match="truncated"):
        x = ds[0]
    assert x.shape == (3, 16, 16) and ds.failures == 1


def test_validation_split_is_fixed_and_disjoint():
    files = [f"img{i:03d}" for i in range(100)]
    train, val = split_validation(files, 8)
    assert len(val) == 8 and len(train) == 92 and not set(train) & set(val)
    assert split_validation(files, 8) == (train, val)


def test_datamodule(folder, tmp_path):
    val_root = tmp_path / "val"
    for i in range(3):
        _photo(val_root / f"v{i}.png")
    cfg = DataConfig(
        root=str(folder),
        val_root=str(val_root),
        image_size=16,
        batch_size=4,
        num_workers=0,
        num_val=2,
        val_size=20,
    )
    dm = StyleDataModule(cfg)
    with pytest.warns(UnreadableImagesWarning):
        dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 3, 16, 16)
    assert next(iter(dm.val_dataloader())).shape == (2, 3, 20, 20)
    grid = dm.grid_images(4)
    assert grid.shape == (2, 3, 20, 20) and torch.equal(grid, dm.grid_images(4))


def test_missing_data_root_says_what_to_do(tmp_path):
    dm = StyleDataModule(DataConfig(root=str(tmp_path / "coco"), num_workers=0))
    with pytest.raises(
        FileNotFoundError, match=r"data.root: image folder not found.*download_coco"
    ):
        dm.setup("fit")
