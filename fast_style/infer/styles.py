"""Which style(s) of a model to paint with: the ``--style`` spec, and how styles are shown.

A spec names styles of one model file (``fast_style.core.model_io.style_names``):

* ``great_wave``: one style (a one-hot weight row);
* ``starry_night=0.7,great_wave=0.3``: a convex mix of the styles' γ/β in one forward pass
  (weights ≥ 0, not all 0, normalised to sum 1);
* ``starry_night,great_wave``: two styles painted side by side through a grey mask (white: the
  first, black: the second), only with a mask (``--style-mask``; the web API's ``style_b``).

``parse_style_spec`` turns a spec into weights, a (S,) tensor or, for painting, a (2, S) one
(row 0 where the mask is white, row 1 where it is black), or raises ``StyleSpecError`` with one
line naming the problem and the available styles. The CLI and the server share it, and the
default style (``DEFAULT_STYLE``, the README's) and the painting captions (``painting_info``).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fast_style.core.resources import config_dir

# The style of ``python stylize.py`` with no arguments and the page's preselected style.
DEFAULT_STYLE = "starry_night"
# Demo models (a CPU-trained low-resolution network) are hidden by the server unless asked:
# a file whose name ends so, or whose metadata says ``"demo": true``.
DEMO_SUFFIX = "_cpu_demo"


class StyleSpecError(ValueError):
    """A ``--style`` spec that does not fit the model (one line, names the available styles)."""


@dataclass(frozen=True)
class StyleChoice:
    """The parsed spec: the styles it names (in order), their weights and a short label.

    ``weights``: (S,) float32 for one style or a mix, (2, S) for painting two with a mask."""

    names: tuple[str, ...]
    weights: torch.Tensor
    label: str

    @property
    def painted(self) -> bool:
        """True for two styles painted through a mask (a (2, S) tensor)."""
        return self.weights.dim() == 2


def one_hot(names: Sequence[str], name: str) -> torch.Tensor:
    """(S,) weights selecting ``name`` of ``names``."""
    w = torch.zeros(len(names), dtype=torch.float32)
    w[list(names).index(name)] = 1.0
    return w


def mix(names: Sequence[str], weights: Mapping[str, float]) -> torch.Tensor:
    """(S,) convex weights from ``{name: weight}`` (normalised; every name must be in
    ``names``, weights ≥ 0 and not all 0)."""
    total = sum(weights.values())
    if not total > 0 or any(v < 0 for v in weights.values()):
        raise StyleSpecError("weights must be ≥ 0 and not all 0")
    w = torch.zeros(len(names), dtype=torch.float32)
    for name, v in weights.items():
        w[list(names).index(name)] = v / total
    return w


def _available(names: Sequence[str]) -> str:
    return f"available: {', '.join(names) or 'none'}"


def _unknown(name: str, names: Sequence[str]) -> StyleSpecError:
    """'unknown style …' with the closest names (difflib, or a case-insensitive match)."""
    folded = {n.lower(): n for n in names}
    close = [folded[name.lower()]] if name.lower() in folded else []
    close += [c for c in difflib.get_close_matches(name, names, n=2, cutoff=0.6) if c not in close]
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return StyleSpecError(f"unknown style {name!r}{hint}; {_available(names)}")


def _weight(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise StyleSpecError(f"{name}={text}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise StyleSpecError(f"{name}={text}: a weight must be a finite number ≥ 0")
    return value


def _items(spec: str) -> list[tuple[str, str | None]]:
    """``"a=0.7, b=0.3"`` → ``[("a", "0.7"), ("b", "0.3")]``; ``"a,b"`` → ``[("a", None), …]``."""
    if not spec.strip():
        raise StyleSpecError("empty style spec: name a style, e.g. starry_night")
    out: list[tuple[str, str | None]] = []
    for i, raw in enumerate(spec.split(",")):
        name, eq, value = (part.strip() for part in raw.partition("="))
        if not name:
            what = "a weight without a style name" if eq else "empty (a stray comma?)"
            raise StyleSpecError(f"item {i + 1} of the spec is {what}")
        if eq and not value:
            raise StyleSpecError(f"{name}=: the weight is missing")
        out.append((name, value if eq else None))
    return out


def parse_style_spec(spec: str, names: Sequence[str], *, masked: bool = False) -> StyleChoice:
    """Weights for ``spec`` over the model's styles ``names`` (module docstring); ``masked``:
    a style mask is given, so the spec must be two names to paint with. Raises
    ``StyleSpecError`` (one line) for an unknown name (with close matches), a bad or negative
    number, all weights 0, a name given twice, an empty item, or a form that does not fit
    ``masked``."""
    items = _items(spec)
    seen: set[str] = set()
    for name, _ in items:
        if name not in names:
            raise _unknown(name, names)
        if name in seen:
            raise StyleSpecError(f"{name!r} is named twice")
        seen.add(name)
    chosen = tuple(name for name, _ in items)
    plain = all(v is None for _, v in items)
    if masked:
        if len(items) != 2 or not plain:
            pair = [*chosen, *(n for n in names if n not in chosen)][:2]
            example = ",".join(pair) if len(pair) == 2 else "A,B"
            raise StyleSpecError(
                f"a style mask paints two styles: give two names without weights, e.g. "
                f"{example} (white: the first, black: the second)"
            )
        return StyleChoice(
            chosen, torch.stack([one_hot(names, n) for n in chosen]), "|".join(chosen)
        )
    if len(items) == 1 and plain:
        return StyleChoice(chosen, one_hot(names, chosen[0]), chosen[0])
    if plain:
        even = ",".join(f"{n}={1 / len(chosen):.2g}" for n in chosen)
        paint = (
            " or paint the two with a style mask (--style-mask FILE)" if len(chosen) == 2 else ""
        )
        raise StyleSpecError(f"{len(chosen)} styles without weights: mix them ({even}){paint}")
    if any(v is None for _, v in items):
        missing = next(n for n, v in items if v is None)
        raise StyleSpecError(f"{missing!r} has no weight: give every style of a mix a weight")
    weights = {n: _weight(v or "", n) for n, v in items}
    if not sum(weights.values()) > 0:
        raise StyleSpecError("the weights are all 0: at least one must be positive")
    w = mix(names, weights)
    label = "+".join(f"{n}={w[list(names).index(n)].item():.2g}" for n in chosen)
    return StyleChoice(chosen, w, label)


# ---------------------------------------------------------------------------------------------
# How a style is shown: its painting's title, artist and year.


def is_demo(name: str, meta: Mapping[str, Any]) -> bool:
    """A demo model (hidden by the server unless asked): ``*_cpu_demo`` or ``"demo": true``."""
    return name.endswith(DEMO_SUFFIX) or meta.get("demo") is True


def _config_painting(style: str) -> dict[str, Any]:
    """``title``/``artist``/``year`` of a shipped style from ``conf/style/<style>.yaml``, flat
    or under ``painting:``; {} when absent. Read without a YAML library (the server's install
    has none): only these three scalar keys are wanted."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", style):
        return {}
    path = Path(config_dir()) / "style" / f"{style}.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    out: dict[str, Any] = {}
    for key in ("title", "artist", "year"):
        m = re.search(rf"^\s*{key}:\s*(.+?)\s*(?:#.*)?$", text, re.MULTILINE)
        if m and m.group(1) not in ("???", "null", "~"):
            out[key] = m.group(1).strip().strip("\"'")
    return out


def painting_info(style: str, entry: Mapping[str, Any] | None = None) -> dict[str, str | None]:
    """``{"title", "artist", "year", "label"}`` of a style: from its metadata entry's
    ``painting`` (``model_io.style_entry``), else from the shipped config, else the name made
    readable without guessing capitals (``my_cat`` → ``My cat``). ``label`` is
    ``"Composition VII — Kandinsky, 1913"``, or the title alone when nothing else is known."""
    given = (entry or {}).get("painting")
    info = dict(given) if isinstance(given, Mapping) else {}
    if not info.get("title"):
        info = {**_config_painting(style), **{k: v for k, v in info.items() if v}}
    title = str(info.get("title") or "") or style.replace("_", " ").replace("-", " ").capitalize()
    artist = str(info["artist"]) if info.get("artist") else None
    year = str(info["year"]) if info.get("year") not in (None, "") else None
    by = ", ".join(p for p in (artist, year) if p)
    return {
        "title": title,
        "artist": artist,
        "year": year,
        "label": f"{title} — {by}" if by else title,
    }
