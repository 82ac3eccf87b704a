"""Self-describing model files: save and load transform networks without unpickling code.

Two forms carry the same metadata (a JSON-able dict, see ``describe``):

* ``<style>.safetensors``: float weights + ``metadata["fast_style"]`` (JSON string);
* a Lightning ``.ckpt``: ``checkpoint["fast_style"]`` + ``state_dict`` keys ``net.*``, read with
  ``torch.load(weights_only=True)``.

``load_model`` rebuilds the network from the metadata alone (architecture, widths, residual
blocks), the way nanoGPT's checkpoints rebuild their model.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from fast_style import __version__
from fast_style.transformer import ARCHITECTURE, TransformerNet

FORMAT = "fast_style.transformer"
FORMAT_VERSION = 1
MODEL_SUFFIXES = (".safetensors", ".ckpt")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelFileError(ValueError):
    """A model file that is missing, corrupt, not fast_style's, or of another architecture."""


def describe(
    net: TransformerNet,
    style: str,
    width: str | None = None,
    training: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Metadata stored with every saved model (architecture, width, style, training settings)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fast_style_version": __version__,
        **net.config.to_dict(),
        "width": width,
        "style": style,
        "training": training or {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def save_safetensors(
    net: TransformerNet, path: str | os.PathLike, meta: dict[str, Any], dtype: str = "float32"
) -> Path:
    """Write weights (cast to ``dtype``) and metadata to a ``.safetensors`` file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to(_DTYPES[dtype]).contiguous().cpu() for k, v in net.state_dict().items()
    }
    meta = {**meta, "dtype": dtype}
    save_file(state, str(path), metadata={"fast_style": json.dumps(meta)})
    return path


def _check_meta(meta: Any, path: Path) -> dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a fast_style model (no fast_style metadata)")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format version {meta['format_version']} is newer than this fast_style "
            f"understands ({FORMAT_VERSION}); upgrade fast_style"
        )
    if meta.get("architecture") != ARCHITECTURE:
        raise ModelFileError(
            f"{path}: architecture {meta.get('architecture')!r} is not {ARCHITECTURE!r}"
        )
    return meta


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("fast_style")
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path}: corrupt or not a safetensors file ({e})") from None
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    return state, _check_meta(meta, path)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A Lightning checkpoint, read with ``weights_only=True`` (never executes pickled code)."""
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
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ModelFileError(f"{path}: not a Lightning checkpoint (no state_dict)")
    meta = _check_meta(ckpt.get("fast_style"), path)
    state = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    return state, meta


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in (".ckpt", ".pt", ".pth") or head.startswith(b"PK"):
        return read_checkpoint(path)
    raise ModelFileError(f"{path}: unknown model file type (expected .safetensors or .ckpt)")


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[TransformerNet, dict[str, Any]]:
    """Rebuild a ``TransformerNet`` (eval mode, float32) and return it with its metadata."""
    path = Path(path)
    state, meta = _read(path)
    try:
        net = TransformerNet.from_config(meta)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: metadata does not describe a network ({e})") from None
    state = {k: v.float() for k, v in state.items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        detail = str(e).split("\n\t", 1)[-1].splitlines()[0][:160]
        raise ModelFileError(
            f"{path}: weights do not match the architecture in its metadata ({detail})"
        ) from None
    return net.to(device).eval(), meta


def find_models(dirs: list[str | os.PathLike]) -> list[Path]:
    """Model files (``.safetensors``, ``.ckpt``) directly inside ``dirs``, sorted by name."""
    out: list[Path] = []
    for d in dirs:
        d = Path(d)
        if d.is_dir():
            out += sorted(p for p in d.iterdir() if p.suffix in MODEL_SUFFIXES and p.is_file())
    return out


def resolve_model(spec: str | os.PathLike, search_dirs: list[str | os.PathLike]) -> Path:
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
