"""The models of one folder: listed from their metadata, loaded lazily once, cached."""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image, ImageOps

from fast_style.core.imaging import (
    split_alpha,
)
from fast_style.core.model_io import ModelFileError, find_models, read_checkpoint, read_safetensors
from fast_style.core.resources import paintings_dir, resolve_data_path
from fast_style.infer.stylizer import Stylizer
from fast_style.serve.errors import ApiError

log = logging.getLogger("fast_style.serve")
THUMBNAIL_SIZE = 256


@dataclass(frozen=True)
class StyleEntry:
    """One model file in the folder and its metadata."""

    name: str
    path: Path
    meta: dict[str, Any]

    def painting(self) -> Path | None:
        """The painting the model was trained on, if it can be found."""
        spec = (self.meta.get("training") or {}).get("style", {}).get("image")
        candidates = [resolve_data_path(spec)] if isinstance(spec, str) and spec else []
        candidates.append(paintings_dir() / f"{self.meta.get('style')}.jpg")
        return next((p for p in candidates if p.is_file()), None)

    def public_meta(self) -> dict[str, Any]:
        """Metadata safe to show: no local paths beyond the painting's file name."""
        keys = (
            "style",
            "width",
            "channels",
            "num_residual",
            "dtype",
            "created",
            "fast_style_version",
            "global_step",
        )
        out = {k: self.meta[k] for k in keys if k in self.meta}
        painting = self.painting()
        out["painting"] = painting.name if painting else None
        out["file"] = self.path.name
        out["size_mb"] = round(self.path.stat().st_size / 1e6, 2)
        return out


class ModelRegistry:
    """The models in one folder. The folder is rescanned when styles are listed (metadata is
    cached per file version); each model is loaded on its first use, once, and cached."""

    def __init__(
        self, folder: Path, device: str = "auto", backend: str = "auto", half: bool | str = False
    ):
        self.folder, self.device, self.backend, self.half = folder, device, backend, half
        self._meta: dict[tuple[Path, int, int], dict[str, Any] | None] = {}
        self._loaded: dict[str, tuple[tuple[Path, int, int], Stylizer]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._thumbs: dict[str, bytes] = {}

    @staticmethod
    def _key(path: Path) -> tuple[Path, int, int]:
        st = path.stat()
        return path, st.st_mtime_ns, st.st_size

    def _read_meta(self, path: Path) -> dict[str, Any] | None:
        key = self._key(path)
        if key not in self._meta:
            reader = read_safetensors if path.suffix == ".safetensors" else read_checkpoint
            try:
                self._meta[key] = reader(path)[1]
            except ModelFileError as e:
                log.warning("skipping %s", e)
                self._meta[key] = None
        return self._meta[key]

    def entries(self) -> dict[str, StyleEntry]:
        """Name (file stem) → entry; a ``.safetensors`` wins over a ``.ckpt`` of the same name."""
        out: dict[str, StyleEntry] = {}
        for path in sorted(find_models([self.folder]), key=lambda p: p.suffix != ".safetensors"):
            if path.stem in out:
                continue
            meta = self._read_meta(path)
            if meta is not None:
                out[path.stem] = StyleEntry(path.stem, path, meta)
        return dict(sorted(out.items()))

    def get(self, name: str) -> StyleEntry:
        """The entry of ``name``; 404 when there is no such style."""
        entries = self.entries()
        if name not in entries:
            raise ApiError(404, f"unknown style {name!r}", {"available": sorted(entries)})
        return entries[name]

    def loaded(self) -> list[str]:
        """Names of the models loaded so far."""
        return sorted(self._loaded)

    def listing(self) -> list[dict[str, Any]]:
        """``GET /api/styles`` items: name, style, thumbnail URL (None without a painting),
        metadata and whether the model is loaded."""
        loaded = set(self._loaded)
        return [
            {
                "name": e.name,
                "style": e.meta.get("style", e.name),
                "thumbnail": f"/api/styles/{quote(e.name)}/thumbnail" if e.painting() else None,
                "metadata": e.public_meta(),
                "loaded": e.name in loaded,
            }
            for e in self.entries().values()
        ]

    def stylizer(self, entry: StyleEntry) -> Stylizer:
        """The loaded model of ``entry`` (loaded now if needed; thread-safe, loads once)."""
        with self._lock:
            lock = self._locks.setdefault(entry.name, threading.Lock())
        with lock:
            key = self._key(entry.path)
            cached = self._loaded.get(entry.name)
            if cached is None or cached[0] != key:
                t0 = time.perf_counter()
                model = Stylizer(
                    entry.path, device=self.device, half=self.half, backend=self.backend
                )
                log.info(
                    "loaded %s on %s (%s) in %.1f s",
                    entry.name,
                    model.device,
                    model.backend,
                    time.perf_counter() - t0,
                )
                self._loaded[entry.name] = (key, model)
            return self._loaded[entry.name][1]

    def thumbnail(self, entry: StyleEntry) -> bytes | None:
        """A JPEG of the painting, at most ``THUMBNAIL_SIZE`` a side (cached)."""
        if entry.name not in self._thumbs:
            painting = entry.painting()
            if painting is None:
                return None
            with Image.open(painting) as im:
                im.draft("RGB", (2 * THUMBNAIL_SIZE, 2 * THUMBNAIL_SIZE))  # JPEG: decode small
                im = split_alpha(ImageOps.exif_transpose(im) or im)[0]
                im.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=85)
            self._thumbs[entry.name] = buf.getvalue()
        return self._thumbs[entry.name]
