"""The styles of one folder's models: listed from their metadata, each file loaded lazily once.

A single-style file is one style, named by its file stem (``starry_night``). A multi-style
file (``model_io.style_names`` has several) is one style per γ/β row, named
``<stem>:<style>`` (``multi:great_wave``, as ``model_io.find_style`` lists them); a bare style
name also finds it when no file has that name (as ``stylize.py --model great_wave``). Every
style of a file shares that file's one loaded ``Stylizer``. Demo models
(``fast_style.infer.styles.is_demo``) are left out of the listing unless ``show_demos``.
"""

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

from fast_style.core.imaging import split_alpha
from fast_style.core.model_io import (
    ModelFileError,
    find_models,
    read_checkpoint,
    read_safetensors,
    style_entry,
    style_names,
)
from fast_style.core.resources import paintings_dir, resolve_data_path
from fast_style.infer.styles import DEFAULT_STYLE, is_demo, painting_info
from fast_style.infer.stylizer import Stylizer
from fast_style.serve.errors import ApiError

log = logging.getLogger("fast_style.serve")
THUMBNAIL_SIZE = 256
# The widest network offered for the browser: the slim width (16/32/64) and narrower.
ON_DEVICE_MAX_CHANNELS = 64


def device_kind(meta: dict[str, Any]) -> str | None:
    """How light a model is for the browser: ``"nano"`` (the depthwise-separable variant),
    ``"slim"`` (at most ``ON_DEVICE_MAX_CHANNELS`` channels), or None (a full-width model,
    not offered for on-device use)."""
    width = str(meta.get("width", ""))
    if meta.get("block") == "dwsep" or "nano" in width:
        return "nano"
    channels = meta.get("channels")
    if isinstance(channels, list) and channels and all(isinstance(c, int) for c in channels):
        return "slim" if max(channels) <= ON_DEVICE_MAX_CHANNELS else None
    return "slim" if "slim" in width else None


@dataclass(frozen=True)
class StyleEntry:
    """One style of one model file: its API name, the file, the file's metadata, the style's
    name and row (0 for a single-style file) and how many styles the file holds."""

    name: str
    path: Path
    meta: dict[str, Any]
    style: str = ""
    index: int = 0
    num_styles: int = 1

    @property
    def model(self) -> str:
        """The model file's name without extension (the styles of one file share it)."""
        return self.path.stem

    @property
    def demo(self) -> bool:
        return is_demo(self.path.stem, self.meta)

    def entry(self) -> dict[str, Any]:
        """The style's metadata entry (``model_io.style_entry``)."""
        return style_entry(self.meta, self.style or None)

    def painting(self) -> Path | None:
        """The painting the style was trained on, if it can be found: its entry's ``image``
        or ``painting.file`` (a single-style file's: its training settings' image), else the
        shipped painting of that name."""
        entry = self.entry()
        given = entry.get("painting")
        specs = [entry.get("image"), given.get("file") if isinstance(given, dict) else None]
        candidates = [resolve_data_path(s) for s in specs if isinstance(s, str) and s]
        candidates.append(paintings_dir() / f"{self.style or self.meta.get('style')}.jpg")
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
        out["style"] = self.style or out.get("style")
        painting = self.painting()
        out["painting"] = painting.name if painting else None
        out["file"] = self.path.name
        out["size_mb"] = round(self.path.stat().st_size / 1e6, 2)
        return out

    def listing(self, loaded: bool) -> dict[str, Any]:
        """The ``GET /api/styles`` item (see ``ModelRegistry.listing``)."""
        info = painting_info(self.style, self.entry())
        return {
            "name": self.name,
            "style": self.style,
            "model": self.model,
            "index": self.index,
            "styles_in_model": self.num_styles,
            **{k: info[k] for k in ("title", "artist", "year", "label")},
            "demo": self.demo,
            "thumbnail": f"/api/styles/{quote(self.name)}/thumbnail" if self.painting() else None,
            "metadata": self.public_meta(),
            "loaded": loaded,
        }


def file_entries(path: Path, meta: dict[str, Any]) -> list[StyleEntry]:
    """The styles of one model file: itself (single-style) or one per row (multi-style)."""
    names = style_names(meta)
    if len(names) == 1:
        return [StyleEntry(path.stem, path, meta, names[0])]
    return [
        StyleEntry(f"{path.stem}:{n}", path, meta, n, i, len(names)) for i, n in enumerate(names)
    ]


class ModelRegistry:
    """The styles of the models in one folder. The folder is rescanned when styles are listed
    (metadata is cached per file version); each file is loaded on first use, once, and
    cached. ``show_demos``: list demo models too (they can always be used by name)."""

    def __init__(
        self,
        folder: Path,
        device: str = "auto",
        backend: str = "auto",
        half: bool | str = False,
        show_demos: bool = False,
    ):
        self.folder, self.device, self.backend, self.half = folder, device, backend, half
        self.show_demos = show_demos
        self._meta: dict[tuple[Path, int, int], dict[str, Any] | None] = {}
        self._loaded: dict[str, tuple[tuple[Path, int, int], Stylizer]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._thumbs: dict[str, bytes] = {}
        self._onnx: dict[str, tuple[tuple[Path, int, int], bytes]] = {}

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

    def all_entries(self) -> dict[str, StyleEntry]:
        """Name → entry of every style, demos included: single-style files by name, then the
        styles of each multi-style file in row order. A ``.safetensors`` wins over a
        ``.ckpt`` of the same name."""
        singles: dict[str, StyleEntry] = {}
        multis: dict[str, StyleEntry] = {}
        stems: set[str] = set()
        for path in sorted(find_models([self.folder]), key=lambda p: p.suffix != ".safetensors"):
            if path.stem in stems:
                continue
            meta = self._read_meta(path)
            if meta is None:
                continue
            stems.add(path.stem)
            for e in file_entries(path, meta):
                (singles if e.num_styles == 1 else multis)[e.name] = e
        ordered = sorted(multis.values(), key=lambda e: (e.model, e.index))
        return {**dict(sorted(singles.items())), **{e.name: e for e in ordered}}

    def entries(self) -> dict[str, StyleEntry]:
        """The listed styles: every style, less the demo models unless ``show_demos``."""
        return {k: e for k, e in self.all_entries().items() if self.show_demos or not e.demo}

    def get(self, name: str) -> StyleEntry:
        """The style ``name`` (an API name, or a bare style name held by a multi-style file
        when no file has that name; demos too); 404 when there is no such style."""
        everything = self.all_entries()
        if name in everything:
            return everything[name]
        held = [e for e in everything.values() if e.num_styles > 1 and e.style == name]
        if held:
            return held[0]
        raise ApiError(404, f"unknown style {name!r}", {"available": sorted(self.entries())})

    def default(self) -> str | None:
        """The style the page preselects: ``DEFAULT_STYLE`` (the README's) as a file of its
        own, else as a style of a multi-style file, else the first listed; None if none."""
        entries = self.entries()
        if DEFAULT_STYLE in entries:
            return DEFAULT_STYLE
        held = [e.name for e in entries.values() if e.style == DEFAULT_STYLE]
        return held[0] if held else next(iter(entries), None)

    def loaded(self) -> list[str]:
        """Names of the model files loaded so far (file stems)."""
        return sorted(self._loaded)

    def listing(self) -> list[dict[str, Any]]:
        """``GET /api/styles`` items: name, style, model file, row and styles in that file,
        the painting's title, artist, year and caption (``label``), whether it is a demo,
        thumbnail URL (None without a painting), metadata and whether its model is loaded."""
        loaded = set(self._loaded)
        return [e.listing(e.model in loaded) for e in self.entries().values()]

    def stylizer(self, entry: StyleEntry) -> Stylizer:
        """The loaded model of ``entry``'s file (loaded now if needed; thread-safe, loads
        once; every style of a file shares it)."""
        with self._lock:
            lock = self._locks.setdefault(entry.model, threading.Lock())
        with lock:
            key = self._key(entry.path)
            cached = self._loaded.get(entry.model)
            if cached is None or cached[0] != key:
                t0 = time.perf_counter()
                model = Stylizer(
                    entry.path, device=self.device, half=self.half, backend=self.backend
                )
                log.info(
                    "loaded %s on %s (%s) in %.1f s",
                    entry.model,
                    model.device,
                    model.backend,
                    time.perf_counter() - t0,
                )
                self._loaded[entry.model] = (key, model)
            return self._loaded[entry.model][1]

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

    def on_device(self) -> list[StyleEntry]:
        """The styles offered for the page's on-device mode: those of light models
        (``device_kind``), demos included, nano models first, then in listing order."""
        light = [(device_kind(e.meta), e) for e in self.all_entries().values()]
        return [e for k, e in sorted(light, key=lambda ke: ke[0] != "nano") if k is not None]

    def on_device_default(self) -> str | None:
        """The on-device style the page preselects: ``DEFAULT_STYLE``'s nano model, else any
        nano model, else ``DEFAULT_STYLE`` in a slim model (``starry_night_cpu_demo``), else
        the first offered; None if none."""
        entries = self.on_device()
        for kind in ("nano", "slim"):
            of_kind = [e for e in entries if device_kind(e.meta) == kind]
            best = [e for e in of_kind if (e.style or e.meta.get("style")) == DEFAULT_STYLE]
            if best or (kind == "nano" and of_kind):
                return (best or of_kind)[0].name
        return entries[0].name if entries else None

    def on_device_listing(self) -> list[dict[str, Any]]:
        """``GET /api/ondevice`` items: the ``listing`` item plus ``kind`` (nano or slim), the
        URL of the model's ONNX export and the names of its styles in row order (the ONNX
        ``style`` input's columns; one entry for a one-style model)."""
        loaded = set(self._loaded)
        out = []
        for e in self.on_device():
            item = e.listing(e.model in loaded)
            item["kind"] = device_kind(e.meta)
            item["onnx"] = f"/api/models/{quote(e.model)}.onnx"
            item["style_names"] = style_names(e.meta)
            out.append(item)
        return out

    def onnx(self, model: str) -> bytes:
        """The ONNX export (float32, dynamic H and W; a ``style`` input (B, S) for a
        multi-style file) of the model file named ``model`` (its stem), for the page's
        on-device mode; 404 unless it is offered there (``on_device``). Exported once per
        file version (kept in memory, and on disk by ``cached_onnx``)."""
        entry = next((e for e in self.on_device() if e.model == model), None)
        if entry is None:
            known = model in {e.model for e in self.all_entries().values()}
            why = "is not a light model (nano or slim)" if known else "is not a model here"
            raise ApiError(
                404,
                f"{model!r} {why}: on-device mode offers only light models",
                {"available": sorted({e.model for e in self.on_device()})},
            )
        with self._lock:
            lock = self._locks.setdefault(f"onnx:{model}", threading.Lock())
        with lock:
            key = self._key(entry.path)
            cached = self._onnx.get(model)
            if cached is None or cached[0] != key:
                self._onnx[model] = (key, _export_onnx(entry.path))
            return self._onnx[model][1]


def _export_onnx(path: Path) -> bytes:
    """The ONNX export of the model file at ``path``; 503 when this install cannot export."""
    from fast_style.core.model_io import load_model
    from fast_style.infer.backends.ort import cached_onnx

    t0 = time.perf_counter()
    net, _meta = load_model(path, "cpu")
    try:
        data = cached_onnx(net)
    except ImportError as e:  # the exporter's optional dependencies
        raise ApiError(
            503, f"this server cannot export ONNX ({e}): pip install 'fast_style[export]'"
        ) from e
    log.info(
        "ONNX export of %s: %.1f MB in %.1f s", path.name, len(data) / 1e6, time.perf_counter() - t0
    )
    return data
