"""Knowledge distillation: train a (small) network to reproduce a teacher model's outputs.

``python train.py model=nano distill.teacher=<model file or shipped name> …`` adds two terms
to the usual perceptual losses (Hinton et al. 2015 distil a network from a larger one's
outputs; here the "soft targets" are the teacher's stylised images):

* ``distill/pixel``: mean |y − t|, the student's output y against the teacher's t, in [0, 1];
* ``distill/feature``: relative feature MSE of y against t at low VGG layers (relu1_2,
  relu2_2 by default: edges, strokes and colour, the detail a pixel loss blurs), the same
  form as the content term (fast_style.loss.perceptual.content_term).

The teacher runs once per training photo, not once per step: ``TeacherCache`` decodes each
photo (short side resized to ``distill.cache_size``, centre crop), runs the teacher on it and
stores both as uint8 ``.npy`` arrays (memory-mapped; no pickles) under a key of the teacher's
weights, the photo list and the size. ``DistillDataset`` then serves aligned random crops (and
flips) of the two. The teacher of a crop differs a little from the crop of the teacher's
output (instance-norm statistics); the latter is the target wanted: what the teacher does on
the larger photo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fast_style.core.model_io import load_model, resolve_model
from fast_style.core.network import TransformerNet
from fast_style.core.resources import model_dirs, resolve_data_path
from fast_style.loss.perceptual import content_term
from fast_style.loss.vgg import VGGFeatures
from fast_style.train.config import DataConfig, DistillConfig
from fast_style.train.data import StyleDataModule, decode_square

log = logging.getLogger(__name__)

# Bump when the cached arrays' meaning changes (decoding, layout): old caches are then unused.
CACHE_FORMAT = 1


def load_teacher(spec: str, device: torch.device) -> tuple[TransformerNet, dict, Path]:
    """The teacher network (eval, float32, on ``device``), its metadata and file, from a path
    or a shipped model's name. A multi-style teacher is refused (one style is distilled)."""
    path = resolve_model(resolve_data_path(spec) if os.sep in spec else spec, model_dirs())
    net, meta = load_model(path, device)
    if net.num_styles > 1:
        raise ValueError(f"distill.teacher: {path} holds {net.num_styles} styles; give one")
    for p in net.parameters():
        p.requires_grad_(False)
    return net, meta, path


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(teacher_file: Path, files: Sequence[Path], size: int) -> str:
    """Key of a cache: the teacher's bytes, each photo's path, size and mtime, the size."""
    h = hashlib.sha256(f"{CACHE_FORMAT}:{size}:{_digest(teacher_file)}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def default_cache_root() -> Path:
    base = os.environ.get("FAST_STYLE_CACHE") or Path.home() / ".cache" / "fast_style"
    return Path(base) / "distill"


class TeacherCache:
    """Photos and the teacher's outputs as uint8 arrays (N, 3, S, S), built once, memory-mapped.

    ``content[i]``, ``target[i]``: photo i (short side resized to S, centre-cropped) and the
    teacher's output on it. A folder ``<root>/<key>/`` holds ``content.npy``, ``target.npy``
    and ``info.json``; it is written to a temporary sibling and renamed, so an interrupted
    build leaves no partial cache. Unreadable photos are dropped (counted in ``info``)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.content = np.load(folder / "content.npy", mmap_mode="r", allow_pickle=False)
        self.target = np.load(folder / "target.npy", mmap_mode="r", allow_pickle=False)
        self.info = json.loads((folder / "info.json").read_text())
        if self.content.shape != self.target.shape or self.content.dtype != np.uint8:
            raise ValueError(f"{folder}: damaged distillation cache (delete it to rebuild)")

    def __len__(self) -> int:
        return len(self.content)

    @classmethod
    def build(
        cls,
        teacher: TransformerNet,
        teacher_file: Path,
        files: Sequence[Path],
        size: int,
        root: Path,
        batch_size: int = 8,
    ) -> TeacherCache:
        """The cache of ``files`` at ``size`` for ``teacher``: loaded if present, else built."""
        folder = root / cache_key(teacher_file, files, size)
        if (folder / "info.json").is_file():
            log.info("distillation cache: %s", folder)
            return cls(folder)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
        try:
            info = _fill(teacher, files, size, tmp, batch_size)
            info["teacher"] = teacher_file.name
            (tmp / "info.json").write_text(json.dumps(info))
            try:
                tmp.rename(folder)
            except OSError:  # another process finished the same cache first
                if not (folder / "info.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(folder)


@torch.inference_mode()
def _fill(
    teacher: TransformerNet, files: Sequence[Path], size: int, folder: Path, batch_size: int
) -> dict:
    """Decode ``files``, run the teacher in batches, write the two arrays into ``folder``."""
    images = [t for t in (decode_square(f, size) for f in files) if t is not None]
    if not images:
        raise ValueError("distill: no training photo could be decoded")
    shape = (len(images), 3, size, size)
    content = np.lib.format.open_memmap(folder / "content.npy", "w+", np.uint8, shape)
    target = np.lib.format.open_memmap(folder / "target.npy", "w+", np.uint8, shape)
    device = next(teacher.parameters()).device
    log.info("distill: running the teacher on %d photos at %d px", len(images), size)
    for start in range(0, len(images), batch_size):
        batch = torch.stack(images[start : start + batch_size])
        x = batch.to(device).float().div_(255)
        y = teacher(x).mul_(255).round_().clamp_(0, 255).to(torch.uint8).cpu()
        content[start : start + len(batch)] = batch.numpy()
        target[start : start + len(batch)] = y.numpy()
    content.flush()
    target.flush()
    skipped = len(files) - len(images)
    return {"format": CACHE_FORMAT, "size": size, "images": len(images), "skipped": skipped}


class DistillDataset(Dataset):
    """(photo, teacher output) pairs, each (3, s, s) float in [0, 1]: the same random s × s
    crop of both cached S × S arrays, and with ``flip`` the same random horizontal flip."""

    def __init__(self, cache: TeacherCache, crop: int, flip: bool = True):
        if crop > cache.content.shape[-1]:
            raise ValueError(f"crop {crop} exceeds the cached size {cache.content.shape[-1]}")
        self.cache, self.crop, self.flip = cache, crop, flip

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, c = self.cache.content.shape[-1], self.crop
        top, left = (int(v) for v in torch.randint(0, s - c + 1, (2,)))
        pair = [
            torch.from_numpy(np.ascontiguousarray(a[index, :, top : top + c, left : left + c]))
            for a in (self.cache.content, self.cache.target)
        ]
        if self.flip and torch.rand(()) < 0.5:
            pair = [p.flip(-1) for p in pair]
        return pair[0].float().div_(255), pair[1].float().div_(255)


def distill_terms(
    output: torch.Tensor,
    target: torch.Tensor,
    out_feats: dict[str, torch.Tensor],
    network: VGGFeatures,
    cfg: DistillConfig,
) -> dict[str, torch.Tensor]:
    """The distillation terms of a student batch ``output`` (B, 3, H, W) in [0, 1] against the
    teacher's ``target`` (same shape): ``distill/pixel``, ``distill/feature`` (unweighted),
    ``distill`` (their weighted sum). ``out_feats``: the loss network's features of
    ``output`` (the perceptual losses' pass, reused); the target's run here, without grad."""
    pixel = (output.float() - target.float()).abs().mean()
    feature = pixel.new_zeros(())
    if cfg.feature_layers:
        with torch.no_grad():
            tgt_feats = network(target, taps=tuple(cfg.feature_layers))
        for tap, w in cfg.feature_layers.items():
            feature = feature + w * content_term(out_feats[tap], tgt_feats[tap])
    return {
        "distill/pixel": pixel,
        "distill/feature": feature,
        "distill": cfg.pixel_weight * pixel + cfg.feature_weight * feature,
    }


class DistillDataModule(StyleDataModule):
    """``StyleDataModule`` whose training batches are (photos, teacher outputs) pairs from a
    ``TeacherCache`` of the training photos; validation is unchanged (the usual losses)."""

    def __init__(self, cfg: DataConfig, distill: DistillConfig):
        super().__init__(cfg)
        self.distill = distill
        self.teacher_file: Path | None = None
        self.teacher_meta: dict = {}
        self.pairs: DistillDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.pairs is not None or self.train_set is None:
            return
        d, c = self.distill, self.cfg
        assert d.teacher
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        teacher, self.teacher_meta, self.teacher_file = load_teacher(d.teacher, device)
        files = self.train_set.files[: d.max_images] if d.max_images else self.train_set.files
        root = resolve_data_path(d.cache_dir) if d.cache_dir else default_cache_root()
        size = d.cache_size or c.image_size
        cache = TeacherCache.build(teacher, self.teacher_file, files, size, root)
        del teacher
        self.pairs = DistillDataset(cache, c.image_size, flip=d.flip)
        # The inherited loader serves the pairs; the cache replaces a GPU image bank.
        self.train_set, self.bank = self.pairs, None  # type: ignore[assignment]
