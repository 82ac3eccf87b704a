"""Package data: the Hydra config tree, the shipped models, the paintings and photos.

Everything is found through ``importlib.resources``, so a wheel installed anywhere works the
same as an editable install of a clone. In the repository, ``conf/`` and ``checkpoints/`` stay
at the top level: ``pyproject.toml`` maps them into the package at build time, as
``fast_style._conf`` and ``fast_style._checkpoints`` (``package-dir``; each folder holds an
``__init__.py`` marker so that an editable install finds it too). The paintings and photos live
in the package itself, ``fast_style/assets/``.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Iterable
from pathlib import Path

CONFIG_PACKAGE = "fast_style._conf"
MODELS_PACKAGE = "fast_style._checkpoints"
DEFAULT_PHOTO = "kodim23.jpg"


# Where the mapped packages sit in a source checkout (pyproject.toml's package-dir).
_SOURCE_DIRS = {CONFIG_PACKAGE: "conf", MODELS_PACKAGE: "checkpoints"}


def _package_dir(package: str) -> Path:
    """The folder of an installed package (wheels and editable installs are plain folders).

    A checkout that is on ``sys.path`` but not installed (``PYTHONPATH=.``, as on the GPU
    machine: DEVELOPERS.md) has no mapping: there the folder beside the package is used."""
    try:
        return Path(str(importlib.resources.files(package)))
    except ModuleNotFoundError:
        source = Path(__file__).resolve().parents[2] / _SOURCE_DIRS.get(package, "")
        if package in _SOURCE_DIRS and (source / "__init__.py").is_file():
            return source
        raise


def config_dir() -> Path:
    """The Hydra config tree (``train.yaml``, ``style/``, ``model/``, …)."""
    return _package_dir(CONFIG_PACKAGE)


def shipped_models_dir() -> Path:
    """The folder of the shipped models (``checkpoints/`` in the repository)."""
    return _package_dir(MODELS_PACKAGE)


def assets_dir() -> Path:
    return _package_dir("fast_style") / "assets"


def paintings_dir() -> Path:
    """The public-domain paintings of the shipped styles."""
    return assets_dir() / "styles"


def photos_dir() -> Path:
    """Photos shipped for the built-in defaults (Kodak, released for unrestricted use)."""
    return assets_dir() / "photos"


def default_photo() -> Path:
    return photos_dir() / DEFAULT_PHOTO


def model_dirs(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Where a bare model name is looked up, in order: ``extra`` folders, ``./checkpoints``
    (a user's own, relative to the working directory) and the shipped models; each once."""
    shipped = shipped_models_dir()
    seen = {os.path.realpath(shipped)}
    out: list[Path] = []
    for d in [*map(Path, extra), Path("checkpoints")]:
        key = os.path.realpath(d)
        if key not in seen and d.is_dir():
            seen.add(key)
            out.append(d)
    return [*out, shipped]


def resolve_data_path(path: str | os.PathLike) -> Path:
    """A file named in a config or a model's metadata: as given if it exists (absolute, or
    relative to the working directory); else a shipped asset, either ``assets/<...>`` (the
    repository layout before the assets moved into the package) or a bare file name of a
    painting or photo; else unchanged, for the caller to report as missing."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    parts = p.parts
    candidates = [assets_dir().joinpath(*parts[1:])] if parts[:1] == ("assets",) else []
    if len(parts) == 1:
        candidates += [paintings_dir() / p, photos_dir() / p]
    return next((c for c in candidates if c.exists()), p)
