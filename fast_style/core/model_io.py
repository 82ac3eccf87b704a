"""Self-describing model files: save and load transform networks without unpickling code.

Two forms carry the same metadata (a JSON-able dict, see ``describe``):

* ``<style>.safetensors``: float weights + ``metadata["fast_style"]`` (JSON string);
* a Lightning ``.ckpt``: ``checkpoint["fast_style"]`` + ``state_dict`` keys ``net.*``, read with
  ``torch.load(weights_only=True)``.

``load_model`` rebuilds the network from the metadata alone (architecture, widths, residual
blocks, number of styles), the way nanoGPT's checkpoints rebuild their model.

Multi-style files
-----------------
A conditional network (``num_styles`` S > 1, Dumoulin et al. 2017) is one file: the shared
convolutions, every instance norm's (S, C) γ/β, and ``meta["styles"]``, one entry per row of
γ/β, in row order::

    {"name": "great_wave",
     "painting": {"title": …, "artist": …, "year": …, "file": "great_wave.jpg"},
     "image": "great_wave.jpg", "size": 256,                     # the style image, its long side
     "loss": {"content_weight", "style_weight", "tv_weight", "content_layers", "style_layers"},
     "training": {"steps", "mode": "joint" | "added", …}}        # how this style was trained

``meta["style"]`` is the first style's name (what ``net(x)`` with no style input paints), and
``meta["num_styles"]`` the row count. ``style_names``, ``style_entry`` and ``style_index``
read either kind of file (a single-style file is the one-style case, its entry derived from
its training settings); ``find_style`` resolves ``--model great_wave`` to a single file of that
name or else to the multi-style file that holds the style. Files of format version 1 (the
positional parameter names of before the network's stages were named) load unchanged: their
keys are renamed on reading (``fast_style.core.network.upgrade_state_dict``), for shape checks
and weights alike.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fast_style import __version__
from fast_style.core.fileio import atomic_write
from fast_style.core.network import (
    ARCHITECTURE,
    TransformerConfig,
    TransformerNet,
    upgrade_state_dict,
)

FORMAT = "fast_style.transformer"
# 2: parameters named by stage (``encoder.conv1.conv.weight``); 1: positional nn.Sequential
# keys (``encoder.0.1.weight``), still read (``network.upgrade_state_dict``).
FORMAT_VERSION = 2
MODEL_SUFFIXES = (".safetensors", ".ckpt")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# ``dtype="int8"``: every conv weight (4-D) stored as int8, symmetric per output channel, with
# its float32 scales under ``<key>`` + SCALE_SUFFIX (weight = int8 × scale); the other tensors
# (biases, norms' γ/β) in float16. Weight-only: the network still computes in float.
INT8 = "int8"
SCALE_SUFFIX = ".int8_scale"
DTYPES = (*_DTYPES, INT8)
# Where the content digest lives: a safetensors metadata key, a checkpoint's top-level key.
DIGEST_KEY = "fast_style_sha256"
MAX_STYLE_NAME = 200  # characters of one style's name in a multi-style file's metadata


class ModelFileError(ValueError):
    """A model file that is missing, corrupt, not fast_style's, or of another architecture."""


# ---------------------------------------------------------------------------------------------
# Content digests: a bit flip anywhere in the weights or the metadata is caught at load time.


def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` canonically: tensors by dtype, shape and bytes; mappings by sorted key;
    sequences in order; scalars by type and ``repr``. The same value always hashes the same,
    whichever device or memory layout a tensor had."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=str):
            _feed(h, str(k))
            _feed(h, obj[k])
    elif isinstance(obj, list | tuple):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, str):
        b = obj.encode()
        h.update(f"S{len(b)}:".encode() + b)
    elif isinstance(obj, bytes):
        h.update(f"B{len(obj)}:".encode() + obj)
    else:  # None, bool, int, float (repr round-trips floats exactly)
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def content_digest(obj: Any) -> str:
    """SHA-256 (hex) of ``obj``'s canonical form (see ``_feed``)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def add_checkpoint_digest(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Store the digest of everything else in ``checkpoint`` under ``DIGEST_KEY`` (in place)."""
    checkpoint.pop(DIGEST_KEY, None)
    checkpoint[DIGEST_KEY] = content_digest(checkpoint)
    return checkpoint


def verify_checkpoint_digest(checkpoint: dict[str, Any], path: Path) -> None:
    """Raise ``ModelFileError`` when a stored digest does not match (no digest: older file)."""
    stored = checkpoint.get(DIGEST_KEY)
    if stored is None:
        return
    rest = {k: v for k, v in checkpoint.items() if k != DIGEST_KEY}
    if stored != content_digest(rest):
        raise ModelFileError(f"{path}: corrupt file (content digest mismatch)")


def _safetensors_digest(state: Mapping[str, torch.Tensor], meta_json: str) -> str:
    return content_digest({"tensors": dict(state), "fast_style": meta_json})


def check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity (such a model makes black or garbage images)."""
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ModelFileError(f"{path}: weights are not finite (NaN or infinity in {k})")


# ---------------------------------------------------------------------------------------------
# Writing.


def describe(
    net: TransformerNet,
    style: str,
    width: str | None = None,
    training: dict[str, Any] | None = None,
    styles: Sequence[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Metadata stored with every saved model (architecture, width, style, training settings).

    ``styles``: the per-style entries of a multi-style network, one per γ/β row (module
    docstring); required when ``net.num_styles`` > 1, and then ``style`` is the first's name."""
    if net.num_styles > 1 or styles is not None:
        if styles is None or len(styles) != net.num_styles:
            got = "none" if styles is None else len(styles)
            raise ValueError(f"a network of {net.num_styles} styles needs as many entries ({got})")
        style = str(styles[0]["name"])
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fast_style_version": __version__,
        **net.config.to_dict(),
        "width": width,
        "style": style,
        **({"styles": [dict(e) for e in styles]} if styles is not None else {}),
        "training": training or {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv weight (Cout, …) → (int8 of the same shape, float32 scales (Cout,)), symmetric
    per output channel: scale = max |w| / 127 (1 for an all-zero channel)."""
    w = w.detach().float().cpu()
    scale = w.abs().flatten(1).amax(1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (w / scale.view(-1, *[1] * (w.dim() - 1))).round().clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def _stored_state(net: TransformerNet, dtype: str) -> dict[str, torch.Tensor]:
    """The tensors as written for ``dtype`` (``DTYPES``)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    state: dict[str, torch.Tensor] = {}
    for k, v in net.state_dict().items():
        if dtype == INT8 and v.dim() == 4:
            state[k], state[k + SCALE_SUFFIX] = int8_per_channel(v)
        else:
            cast = torch.float16 if dtype == INT8 else _DTYPES[dtype]
            state[k] = v.detach().to(cast).contiguous().cpu()
    return state


def _dequantized(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """An int8 file's tensors back in float32 (``_stored_state``'s inverse), checked."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.endswith(SCALE_SUFFIX):
            continue
        scale = state.get(k + SCALE_SUFFIX)
        if v.dtype == torch.int8:
            if scale is None or scale.dim() != 1 or scale.shape[0] != v.shape[0]:
                raise ModelFileError(f"{path}: int8 weight {k} without its per-channel scales")
            v = v.float() * scale.float().view(-1, *[1] * (v.dim() - 1))
        out[k] = v
    return out


def save_safetensors(
    net: TransformerNet, path: str | os.PathLike, meta: dict[str, Any], dtype: str = "float32"
) -> Path:
    """Write weights (cast to ``dtype``, or ``"int8"``: see ``INT8``), metadata and their
    digest to a ``.safetensors`` file, atomically (``fileio.atomic_write``)."""
    from safetensors.torch import save_file

    path = Path(path)
    state = _stored_state(net, dtype)
    meta_json = json.dumps({**meta, "dtype": dtype})
    header = {"fast_style": meta_json, DIGEST_KEY: _safetensors_digest(state, meta_json)}
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata=header)
    return path


# ---------------------------------------------------------------------------------------------
# Reading: metadata and shapes are checked before any tensor is built.


def _check_meta(meta: Any, path: Path) -> dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a fast_style model (no fast_style metadata)")
    try:
        version = int(meta.get("format_version", 0))
    except (TypeError, ValueError):
        raise ModelFileError(f"{path}: bad format_version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format version {version} is newer than this fast_style "
            f"understands ({FORMAT_VERSION}); upgrade fast_style"
        )
    if meta.get("architecture") != ARCHITECTURE:
        raise ModelFileError(
            f"{path}: architecture {meta.get('architecture')!r} is not {ARCHITECTURE!r}"
        )
    return meta


def config_of(meta: dict[str, Any], path: Path) -> TransformerConfig:
    """The network the metadata describes, with every size bounded (``TransformerConfig``,
    ``num_styles`` ≤ ``MAX_STYLES``) and, for several styles, one valid entry per style."""
    try:
        cfg = TransformerConfig.from_dict(meta)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: metadata does not describe a network ({e})") from None
    _check_style_entries(meta, cfg.num_styles, path)
    return cfg


def _check_style_entries(meta: dict[str, Any], num_styles: int, path: Path) -> None:
    """``meta["styles"]`` (required for more than one style): ``num_styles`` mappings with
    unique, non-empty string names of at most ``MAX_STYLE_NAME`` characters."""
    entries = meta.get("styles")
    if entries is None and num_styles == 1:
        return
    if not isinstance(entries, list) or len(entries) != num_styles:
        n = len(entries) if isinstance(entries, list) else "no"
        raise ModelFileError(f"{path}: {num_styles} styles but {n} style entries in its metadata")
    names = [e.get("name") if isinstance(e, dict) else None for e in entries]
    for name in names:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_STYLE_NAME:
            raise ModelFileError(f"{path}: bad style name {str(name)[:40]!r} in its metadata")
    if len(set(names)) != len(names):
        raise ModelFileError(f"{path}: style names repeat in its metadata ({names})")


def expected_shapes(cfg: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Every weight's shape for ``cfg`` under today's names, from a network on the meta device
    (no memory). Format-1 names map onto these with ``upgrade_state_dict``."""
    with torch.device("meta"):
        net = TransformerNet.from_config(cfg)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def check_shapes(shapes: Mapping[str, tuple[int, ...]], cfg: TransformerConfig, path: Path) -> None:
    """The file's tensors must be exactly those of the described network; ``shapes`` may use
    either key layout (format 1's positional names are upgraded first)."""
    try:
        shapes = upgrade_state_dict(shapes)
    except ValueError as e:
        raise ModelFileError(f"{path}: {e}") from None
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(shapes))
    extra = sorted(set(shapes) - set(want))
    wrong = [k for k in want if k in shapes and tuple(shapes[k]) != want[k]]
    if missing or extra or wrong:
        if wrong:
            k = wrong[0]
            detail = f"{k} is {tuple(shapes[k])}, expected {want[k]}"
        else:
            detail = f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}"
        raise ModelFileError(
            f"{path}: weights do not match the architecture in its metadata ({detail})"
        )


def _safetensors_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The metadata strings and tensor shapes of a safetensors file (no tensor data read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"{path}: corrupt or not a safetensors file ({first})") from None
    return raw, shapes


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights (today's key names) and metadata of a ``.safetensors`` model: header, sizes and
    shapes checked first, then the tensors, their digest (over the keys as stored) and their
    finiteness."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    raw, shapes = _safetensors_header(path)
    meta_json = raw.get("fast_style")
    try:
        meta = json.loads(meta_json) if meta_json else None
    except json.JSONDecodeError:
        meta = None
    meta = _check_meta(meta, path)
    int8 = meta.get("dtype") == INT8
    if int8:  # the scales are checked against their weights after reading
        shapes = {k: v for k, v in shapes.items() if not k.endswith(SCALE_SUFFIX)}
    check_shapes(shapes, config_of(meta, path), path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path}: corrupt or not a safetensors file ({e})") from None
    stored = raw.get(DIGEST_KEY)
    if stored is not None and stored != _safetensors_digest(state, meta_json or ""):
        raise ModelFileError(f"{path}: corrupt file (content digest mismatch)")
    check_finite(state, path)
    if int8:
        state = _dequantized(state, path)
    return upgrade_state_dict(state), meta


def load_checkpoint_dict(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint as plain data (``weights_only=True``: never executes pickled
    code), its digest verified."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise ModelFileError(
            f"{path}: refused to load, not a plain-data checkpoint ({first})"
        ) from None
    except Exception as e:  # zip errors, truncation, EOF, …
        raise ModelFileError(
            f"{path}: corrupt or not a PyTorch checkpoint ({type(e).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ModelFileError(f"{path}: not a Lightning checkpoint (no state_dict)")
    verify_checkpoint_digest(ckpt, path)
    return ckpt


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The first network's weights (``net.*``, today's key names) and metadata of a Lightning
    checkpoint."""
    ckpt = load_checkpoint_dict(path)
    meta = _check_meta(ckpt.get("fast_style"), path)
    state = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: state_dict holds non-tensor values")
    check_shapes({k: tuple(v.shape) for k, v in state.items()}, config_of(meta, path), path)
    check_finite(ckpt["state_dict"], path)
    return upgrade_state_dict(state), meta


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror or e})") from None
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in (".ckpt", ".pt", ".pth") or head.startswith(b"PK"):
        return read_checkpoint(path)
    raise ModelFileError(f"{path}: unknown model file type (expected .safetensors or .ckpt)")


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[TransformerNet, dict[str, Any]]:
    """Rebuild a ``TransformerNet`` (eval mode, float32) and return it with its metadata.

    Everything is checked before the network is built: the metadata (sizes bounded), the
    tensor shapes against it, the content digest and that every weight is finite."""
    path = Path(path)
    state, meta = _read(path)
    net = TransformerNet.from_config(config_of(meta, path))
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.to(device).eval(), meta


def find_models(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """Model files (``.safetensors``, ``.ckpt``) directly inside ``dirs``, sorted by name."""
    out: list[Path] = []
    for d in dirs:
        d = Path(d)
        if d.is_dir():
            out += sorted(p for p in d.iterdir() if p.suffix in MODEL_SUFFIXES and p.is_file())
    return out


def resolve_model(spec: str | os.PathLike, search_dirs: Sequence[str | os.PathLike]) -> Path:
    """A model path, or a bare style name looked up as ``<dir>/<name>.safetensors|.ckpt``."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    if p.suffix not in MODEL_SUFFIXES and len(p.parts) == 1:
        for d in search_dirs:
            for suffix in MODEL_SUFFIXES:
                cand = Path(d) / f"{spec}{suffix}"
                if cand.is_file():
                    return cand
        names = sorted({m.stem for m in find_models(search_dirs)})
        raise ModelFileError(f"no model named {spec!r}; available: {', '.join(names) or 'none'}")
    raise ModelFileError(f"{p}: no such model file")


# ---------------------------------------------------------------------------------------------
# Styles of a model file: one for a single-style file, ``meta["styles"]`` for a multi-style one.


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """A model file's metadata, checked (format, architecture, sizes, style entries) without
    reading a ``.safetensors`` file's tensors: what listing and name lookup need. ``load_model``
    still checks shapes, digest and finiteness when the model is used."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    if path.suffix != ".safetensors":
        return _read(path)[1]
    raw, _ = _safetensors_header(path)
    try:
        meta = json.loads(raw.get("fast_style") or "null")
    except json.JSONDecodeError:
        meta = None
    meta = _check_meta(meta, path)
    config_of(meta, path)
    return meta


def style_names(meta: dict[str, Any]) -> list[str]:
    """The styles of a model, in γ/β row order: ``[meta["style"]]`` for a single-style file,
    the names of ``meta["styles"]`` for a multi-style one."""
    entries = meta.get("styles")
    if isinstance(entries, list) and entries:
        return [str(e["name"]) for e in entries]
    return [str(meta.get("style", "unnamed"))]


def style_index(meta: dict[str, Any], name: str | None) -> int:
    """The γ/β row of style ``name`` (None: the first, 0); a ``ModelFileError`` naming the
    model's styles if it has no such style. The style input of ``TransformerNet.forward`` for
    it is ``torch.nn.functional.one_hot(torch.tensor([i]), meta["num_styles"]).float()``."""
    names = style_names(meta)
    if name is None:
        return 0
    if name not in names:
        raise ModelFileError(f"no style {name!r} in this model; it has: {', '.join(names)}")
    return names.index(name)


def style_entry(meta: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """Style ``name``'s entry (module docstring: name, painting, image, size, loss, training);
    None: the first style. A single-style file's entry is derived from its metadata (its
    ``painting`` and ``training["style"]``, whichever it has: files of before have neither)."""
    i = style_index(meta, name)
    entries = meta.get("styles")
    if isinstance(entries, list) and entries:
        return dict(entries[i])
    cfg = (meta.get("training") or {}).get("style") or {}
    loss_keys = ("content_weight", "style_weight", "tv_weight", "content_layers", "style_layers")
    return {
        "name": style_names(meta)[0],
        "painting": meta.get("painting") or {},
        "image": cfg.get("image"),
        "size": cfg.get("size"),
        "loss": {k: cfg[k] for k in loss_keys if k in cfg},
        "training": {"steps": meta.get("global_step"), "mode": "single"},
    }


def find_style(
    spec: str | os.PathLike, search_dirs: Sequence[str | os.PathLike]
) -> tuple[Path, str | None]:
    """Resolve ``--model SPEC`` to (model file, style or None).

    A path, or a bare name with a file ``<dir>/<name>.safetensors|.ckpt``, gives (that file,
    None): None is its first (a single-style file's only) style. Else a bare name is looked up
    among the styles of the multi-style files of ``search_dirs`` (in order, then by file name):
    (the first file that holds it, the name). Else one ``ModelFileError`` line listing what
    there is."""
    try:
        return resolve_model(spec, search_dirs), None
    except ModelFileError:
        p = Path(spec).expanduser()
        if p.suffix in MODEL_SUFFIXES or len(p.parts) != 1:
            raise
    available: list[str] = []
    for path in find_models(search_dirs):
        try:
            names = style_names(meta := read_metadata(path))
        except ModelFileError:
            continue  # a broken file elsewhere in the folder is not this lookup's problem
        if meta.get("num_styles", 1) > 1 and str(spec) in names:
            return path, str(spec)
        available.append(f"{path.stem} ({', '.join(names)})" if len(names) > 1 else path.stem)
    listed = ", ".join(dict.fromkeys(available)) or "none"
    raise ModelFileError(f"no model or style named {str(spec)!r}; available: {listed}")
