"""Content images for training: any folder of photos (COCO ``train2014/`` is the usual one)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torchvision import transforms

from fast_style.core.imaging import ImageReadError, list_images, load_rgb, pil_to_tensor
from fast_style.core.resources import resolve_data_path
from fast_style.train.config import DataConfig

log = logging.getLogger(__name__)


class UnreadableImagesWarning(UserWarning):
    """Some files in the data folder could not be read and were skipped."""


def _readable(path: Path) -> str | None:
    """None if ``path`` opens as an image (header only, fast), else the reason."""
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - forces the header parse
        return None
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def scan_images(files: Sequence[Path], root: str | Path) -> list[Path]:
    """Keep the files whose header parses; warn once with the count of those skipped."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        reasons = list(pool.map(_readable, files))
    good = [f for f, r in zip(files, reasons, strict=True) if r is None]
    bad = [(f, r) for f, r in zip(files, reasons, strict=True) if r is not None]
    if bad:
        warnings.warn(
            f"skipped {len(bad)} of {len(files)} files in {root} that are not readable images "
            f"(first: {bad[0][0].name}: {bad[0][1]})",
            UnreadableImagesWarning,
            stacklevel=2,
        )
    return good


class ImageFolderDataset(Dataset):
    """Images as (3, S, S) tensors in [0, 1].

    Training: resize the short side to S, random S×S crop, random horizontal flip.
    Validation (``train=False``): resize + centre crop, deterministic.
    A file that fails to decode mid-epoch (truncated JPEG, say) is replaced by the next one and
    counted; the first such failure warns.
    """

    def __init__(self, files: Sequence[Path], image_size: int, train: bool = True):
        if not files:
            raise ValueError("no images to train on")
        self.files = list(files)
        crop = transforms.RandomCrop(image_size) if train else transforms.CenterCrop(image_size)
        steps = [transforms.Resize(image_size, antialias=True), crop]
        if train:
            steps.append(transforms.RandomHorizontalFlip())
        self.transform = transforms.Compose(steps)
        self.failures = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        for attempt in range(len(self.files)):
            path = self.files[(index + attempt) % len(self.files)]
            try:
                return pil_to_tensor(self.transform(load_rgb(path)))
            except ImageReadError as e:
                self.failures += 1
                if self.failures == 1:
                    warnings.warn(
                        f"{e}; using another image instead", UnreadableImagesWarning, stacklevel=2
                    )
        raise RuntimeError("no image in the dataset could be decoded")


def decode_square(path: Path, size: int) -> torch.Tensor | None:
    """A photo as uint8 (3, size, size): short side resized to ``size``, centre-cropped."""
    try:
        img = transforms.CenterCrop(size)(transforms.Resize(size, antialias=True)(load_rgb(path)))
    except ImageReadError:
        return None
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


class GPUImageBank:
    """The whole training set decoded once into one uint8 tensor (N, 3, S, S), moved to the GPU.

    ``batch(idx, size)`` crops (random per image, when S > size) and flips on the device: no
    loader workers, no host-to-device copies, no host synchronisation. 3,190 photos at 256 px
    take 0.6 GB; COCO's 83k would take 16 GB, so this is meant for small datasets.
    """

    def __init__(self, files: Sequence[Path], size: int, threads: int = 8):
        with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL decodes release the GIL
            decoded = pool.map(lambda f: decode_square(f, size), files)
            images = [t for t in decoded if t is not None]
        if not images:
            raise ValueError("no image in the dataset could be decoded")
        if len(images) < len(files):
            warnings.warn(
                f"skipped {len(files) - len(images)} undecodable images",
                UnreadableImagesWarning,
                stacklevel=2,
            )
        self.images = torch.stack(images)

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device) -> GPUImageBank:
        self.images = self.images.to(device)
        return self

    def batch(self, idx: torch.Tensor, size: int) -> torch.Tensor:
        """Images ``idx`` (B,) → (B, 3, size, size) float in [0, 1], random crop + h-flip."""
        imgs = self.images[idx]
        b, _, s, _ = imgs.shape
        dev = imgs.device
        ar = torch.arange(size, device=dev)
        top = torch.randint(0, s - size + 1, (b, 1), device=dev)
        left = torch.randint(0, s - size + 1, (b, 1), device=dev)
        rows = (top + ar)[:, None, :, None]  # (B, 1, size, 1)
        cols = left + ar  # (B, size)
        flip = torch.rand(b, 1, device=dev) < 0.5
        cols = torch.where(flip, left + size - 1 - ar, cols)[:, None, None, :]
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ch = torch.arange(3, device=dev)[None, :, None, None]
        return imgs[bi, ch, rows, cols].float().div_(255)


class DeviceBatches(IterableDataset):
    """One epoch of index batches (B,) drawn without replacement, on the bank's device."""

    def __init__(self, bank: GPUImageBank, batch_size: int, seed: int = 0):
        self.bank, self.batch_size, self.epoch, self.seed = bank, batch_size, 0, seed

    def __len__(self) -> int:
        return max(1, len(self.bank) // self.batch_size)

    def __iter__(self):
        dev = self.bank.images.device
        gen = torch.Generator(device=dev).manual_seed(self.seed + self.epoch)
        self.epoch += 1
        perm = torch.randperm(len(self.bank), device=dev, generator=gen)
        n = len(self)
        if len(self.bank) < self.batch_size:  # tiny folders: repeat to fill a batch
            perm = perm.repeat(self.batch_size // len(self.bank) + 1)
        for i in range(n):
            yield perm[i * self.batch_size : (i + 1) * self.batch_size]


def split_validation(files: list[Path], num_val: int) -> tuple[list[Path], list[Path]]:
    """Hold out ``num_val`` files spread evenly over the sorted list: (train, val)."""
    if num_val <= 0:
        return files, []
    if num_val >= len(files):
        raise ValueError(f"cannot hold out {num_val} validation images from {len(files)}")
    step = len(files) / num_val
    picked = {int(i * step) for i in range(num_val)}
    return [f for i, f in enumerate(files) if i not in picked], [files[i] for i in sorted(picked)]


class StyleDataModule(pl.LightningDataModule):
    """Train/val loaders over ``cfg.root`` (recursive) and a fixed validation set."""

    def __init__(self, cfg: DataConfig):
        super().__init__()
        self.cfg = cfg
        self.train_set: ImageFolderDataset | None = None
        self.val_set: ImageFolderDataset | None = None
        self.bank: GPUImageBank | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        c = self.cfg
        root = resolve_data_path(c.root)
        try:
            files = scan_images(list_images(root), root)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"data.root: image folder not found: {root} (set data.root=PATH to a folder of "
                "photos, e.g. COCO train2014 from scripts/download_coco.py)"
            ) from None
        if c.val_root:
            val_root = resolve_data_path(c.val_root)
            val_files = scan_images(list_images(val_root), val_root)[: c.num_val]
        else:
            files, val_files = split_validation(files, c.num_val)
        if not files:
            raise ValueError(f"data.root: no readable images under {root}")
        log.info(
            "training on %d images from %s, %d validation images", len(files), root, len(val_files)
        )
        self.train_set = ImageFolderDataset(files, c.image_size, train=True)
        if c.gpu_cache:
            self.bank = GPUImageBank(files, c.cache_size or c.image_size)
            log.info("decoded %d training images into %s", len(self.bank), self.bank.images.shape)
        self.val_set = ImageFolderDataset(val_files, c.val_size, train=False) if val_files else None

    def train_dataloader(self) -> DataLoader:
        c = self.cfg
        if self.bank is not None:
            trainer = getattr(self, "trainer", None)
            if trainer is not None:
                self.bank.to(trainer.strategy.root_device)
            # batch_size=None: the dataset yields whole index batches, already on the device
            return DataLoader(DeviceBatches(self.bank, c.batch_size), batch_size=None)
        return DataLoader(
            self.train_set,
            batch_size=c.batch_size,
            shuffle=True,
            drop_last=len(self.train_set) >= c.batch_size,
            num_workers=c.num_workers,
            pin_memory=c.pin_memory and torch.cuda.is_available(),
            persistent_workers=c.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        """With ``gpu_cache``, training batches arrive as indices: crop and flip on the device."""
        if self.bank is not None and batch.dtype == torch.int64 and batch.ndim == 1:
            return self.bank.batch(batch, self.cfg.image_size)
        return batch

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        c = self.cfg
        return DataLoader(
            self.val_set,
            batch_size=c.batch_size,
            shuffle=False,
            num_workers=min(c.num_workers, 2),
            pin_memory=c.pin_memory and torch.cuda.is_available(),
        )

    def grid_images(self, n: int) -> torch.Tensor:
        """The first ``n`` validation images (n, 3, S, S): fixed across the run for image grids."""
        self.setup()
        if self.val_set is None or n <= 0:
            return torch.empty(0, 3, self.cfg.val_size, self.cfg.val_size)
        return torch.stack([self.val_set[i] for i in range(min(n, len(self.val_set)))])
