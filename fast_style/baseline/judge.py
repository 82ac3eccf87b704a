"""Issue 16's independent judge of a style model, measured on held-out photos.

Two numbers per photo, both from a VGG16 (``fast_style.loss.vgg.VGGFeatures``; any weights
file, the real ImageNet one for figures), in float32 under ``torch.no_grad``:

* **Gram reduction** ``1 - d(output, painting) / d(photo, painting)``: 0 for a network that
  returns the photo, 1 for one whose output has the painting's Gram matrices, negative for one
  that moves away from them. ``d`` is the mean, over relu1_2, relu2_2, relu3_3 and relu4_3
  (``JUDGE_LAYERS``), of the normalised Gram distance ``‖G(a) − G(p)‖_F / ‖G(p)‖_F``, with
  ``G(f) = F Fᵀ / (C·H·W)`` of the layer's (C, H·W) feature map ``F`` (``gram``).
* **Content kept**: the cosine similarity of the flattened relu3_3 features (``CONTENT_LAYER``)
  of the output and of the photo, in [-1, 1] (in [0, 1] here: ReLU features are ≥ 0).

The painting is judged at its training scale (long side = the style's ``size`` from the model's
metadata, ``painting_for``); photos and outputs at the caller's long side (never upscaled by
``load_photos`` unless asked). The goal of the issue: both means ≥ ``GOAL`` (0.55).

Pre- and post-processing are the project's own: ``fast_style.core.imaging`` reads and resizes
images, ``VGGFeatures`` normalises them, ``Stylizer`` runs the model. No training stack here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from fast_style.core.imaging import (
    list_images,
    load_rgb,
    load_tensor,
    pil_to_tensor,
    resize_long_side,
    tensor_to_pil,
)
from fast_style.core.model_io import ModelFileError, find_models, read_metadata, style_entry
from fast_style.core.resources import resolve_data_path, shipped_models_dir
from fast_style.infer.styles import is_demo, one_hot
from fast_style.infer.stylizer import Stylizer
from fast_style.loss.perceptual import gram_matrix
from fast_style.loss.vgg import VGGFeatures

JUDGE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
CONTENT_LAYER = "relu3_3"
GOAL = 0.55  # issue 16: both means ≥ this, for every shipped style
DEFAULT_PAINTING_SIZE = 512  # a style whose metadata records no size


# ---------------------------------------------------------------------------------------------
# The measure
# ---------------------------------------------------------------------------------------------


def judge_network(
    weights: str | os.PathLike | None, device: str | torch.device = "cpu"
) -> VGGFeatures:
    """A frozen VGG16 tapping ``JUDGE_LAYERS`` (``CONTENT_LAYER`` is one of them), float32.
    ``weights``: a state_dict file, ``"random"`` (tests), or None (``$FAST_STYLE_VGG_WEIGHTS``,
    else torchvision's)."""
    return VGGFeatures(JUDGE_LAYERS, arch="vgg16", weights=weights).float().to(device)


def gram(f: torch.Tensor) -> torch.Tensor:
    """G = F Fᵀ / (C·H·W) of one feature map (1, C, H, W) → (C, C), float32.

    The project's ``gram_matrix`` (mean over the H·W positions) divided by C. The 1/C cancels
    in ``gram_distance``; the 1/(H·W) does not: the painting and the photo differ in size."""
    if f.dim() != 4 or f.shape[0] != 1:
        raise ValueError(f"expected one feature map (1, C, H, W), got {tuple(f.shape)}")
    return gram_matrix(f.float())[0] / f.shape[1]


@dataclass
class Features:
    """What the judge needs of one image: ``grams[layer]`` (C, C) and the flattened
    ``content`` features at ``CONTENT_LAYER`` (C·H·W,), float32, on the network's device."""

    grams: dict[str, torch.Tensor]
    content: torch.Tensor


@contextlib.contextmanager
def ieee_float32(device: torch.device) -> Iterator[None]:
    """Full float32 convolutions and matmuls on CUDA (no TF32, which cuDNN allows by default),
    restored afterwards; nothing to do elsewhere. Process-wide while it lasts."""
    if device.type != "cuda":
        yield
        return
    conv, mm = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = conv.allow_tf32, mm.allow_tf32
    conv.allow_tf32 = mm.allow_tf32 = False
    try:
        yield
    finally:
        conv.allow_tf32, mm.allow_tf32 = saved


@torch.no_grad()
def features(vgg: VGGFeatures, image: torch.Tensor) -> Features:
    """``Features`` of an image (1, 3, H, W) in [0, 1] (H, W ≥ 8 for relu4_3 to exist), in
    float32 (no autocast, no TF32)."""
    x = image.to(next(vgg.parameters()).device, torch.float32)
    with torch.autocast(x.device.type, enabled=False), ieee_float32(x.device):
        maps = vgg(x)
        grams = {layer: gram(maps[layer]) for layer in JUDGE_LAYERS}
    return Features(grams, maps[CONTENT_LAYER].float().flatten())


def painting_grams(vgg: VGGFeatures, painting: torch.Tensor) -> dict[str, torch.Tensor]:
    """The painting's Gram matrices ``{layer: (C, C)}`` for ``JUDGE_LAYERS``; ``painting``
    (1, 3, H, W) in [0, 1], already at its training scale (``load_painting``)."""
    return features(vgg, painting).grams


def gram_distance(a: Mapping[str, torch.Tensor], p: Mapping[str, torch.Tensor]) -> float:
    """d(a, p) = mean over ``JUDGE_LAYERS`` of ‖G(a) − G(p)‖_F / ‖G(p)‖_F; ≥ 0, 0 iff equal.
    ``a``, ``p``: Gram matrices by layer (``Features.grams``, ``painting_grams``)."""
    per_layer = [
        float(torch.linalg.matrix_norm(a[k] - p[k]) / torch.linalg.matrix_norm(p[k]))
        for k in JUDGE_LAYERS
    ]
    return sum(per_layer) / len(per_layer)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors of one shape, flattened, in [-1, 1]; scale-invariant
    (a positive factor on either side changes nothing). 0 when either is all zeros."""
    if a.shape != b.shape:
        raise ValueError(f"cosine of tensors of different shapes {a.shape} and {b.shape}")
    a, b = a.double().flatten(), b.double().flatten()
    den = float(a.norm() * b.norm())
    return max(-1.0, min(1.0, float(a @ b) / den)) if den > 0 else 0.0


@dataclass(frozen=True)
class JudgeScore:
    """One photo's scores: ``gram_reduction`` (≤ 1; 0 = the photo's own Gram distance, 1 =
    the painting's Grams) and ``content_kept`` (cosine at relu3_3, in [-1, 1]); the two Gram
    distances they come from (``d_photo`` = d(photo, painting), ``d_output``)."""

    gram_reduction: float
    content_kept: float
    d_photo: float
    d_output: float

    @property
    def meets_goal(self) -> bool:
        return self.gram_reduction >= GOAL and self.content_kept >= GOAL


def score(photo: Features, output: Features, painting: Mapping[str, torch.Tensor]) -> JudgeScore:
    """The ``JudgeScore`` of an output from the features of it and of its photo; the photo's
    Gram distance to the painting must be > 0 (a photo that is the painting has no measure)."""
    d_photo = gram_distance(photo.grams, painting)
    if d_photo <= 0:
        raise ValueError("the photo has the painting's Gram matrices: no reduction to measure")
    d_output = gram_distance(output.grams, painting)
    kept = cosine(output.content, photo.content)
    return JudgeScore(1.0 - d_output / d_photo, kept, d_photo, d_output)


def judge_pair(
    vgg: VGGFeatures,
    photo: torch.Tensor,
    output: torch.Tensor,
    painting_grams: Mapping[str, torch.Tensor],
) -> JudgeScore:
    """Judge one output (1, 3, H, W) in [0, 1] against its photo (same shape) and the painting's
    Grams (``painting_grams``)."""
    if photo.shape != output.shape:
        raise ValueError(f"photo {tuple(photo.shape)} and output {tuple(output.shape)} differ")
    return score(features(vgg, photo), features(vgg, output), painting_grams)


# ---------------------------------------------------------------------------------------------
# Photos, paintings, models
# ---------------------------------------------------------------------------------------------


@dataclass
class Photo:
    """A held-out photo ready to judge: ``image`` (1, 3, H, W) in [0, 1] on the judge's device,
    its ``Features`` (computed once, shared by every model judged on it)."""

    name: str
    image: torch.Tensor
    features: Features


def photo_tensor(path: str | os.PathLike, size: int, upscale: bool = False) -> torch.Tensor:
    """A photo as (1, 3, H, W) in [0, 1] with long side ``size``, or its own long side when
    smaller and not ``upscale`` (a 256 px photo blown up to 512 is not a 512 px photo)."""
    img = load_rgb(path)
    if upscale or max(img.size) > size:
        img = resize_long_side(img, size)
    return pil_to_tensor(img).unsqueeze(0)


def load_photos(
    vgg: VGGFeatures, folder: str | os.PathLike, size: int, limit: int = 0, upscale: bool = False
) -> list[Photo]:
    """The first ``limit`` (0: all) images of ``folder`` by name (``list_images``), loaded at
    ``photo_tensor``'s size onto the judge's device, with their features."""
    files = list_images(folder)
    files = files[:limit] if limit > 0 else files
    device = next(vgg.parameters()).device
    out = []
    for f in files:
        x = photo_tensor(f, size, upscale).to(device)
        out.append(Photo(f.stem, x, features(vgg, x)))
    return out


def painting_for(meta: Mapping[str, Any], style: str | None = None) -> tuple[Path, int]:
    """(painting file, training long side in px) of a style of a model (None: its first),
    from the model's metadata (``model_io.style_entry``): its ``image``, else ``painting.file``,
    else ``<name>.jpg``, found by ``resources.resolve_data_path``; its ``size``, else 512."""
    entry = style_entry(dict(meta), style)
    painting = entry.get("painting") or {}
    image = entry.get("image") or painting.get("file") or f"{entry['name']}.jpg"
    return resolve_data_path(image), int(entry.get("size") or DEFAULT_PAINTING_SIZE)


def load_painting(meta: Mapping[str, Any], style: str | None = None) -> torch.Tensor:
    """A style's painting (1, 3, H, W) in [0, 1] at its training long side (``painting_for``)."""
    path, size = painting_for(meta, style)
    return load_tensor(path, long_side=size)


@dataclass
class StyleJudgement:
    """One style of one model judged on a set of photos: per-photo ``scores`` (in ``names``'
    order), their means and shares, and the first few (photo, output) pairs for a grid."""

    model: str
    style: str
    photos: str  # a label of the photo set
    names: list[str]
    scores: list[JudgeScore]
    painting: str = ""
    painting_size: int = 0
    pictures: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)

    @property
    def gram_reduction(self) -> float:
        """The mean Gram reduction over the photos."""
        return statistics.fmean(s.gram_reduction for s in self.scores)

    @property
    def content_kept(self) -> float:
        """The mean content kept over the photos."""
        return statistics.fmean(s.content_kept for s in self.scores)

    @property
    def share_reduction_ok(self) -> float:
        """The share of photos (0–1) with Gram reduction ≥ ``GOAL``."""
        return statistics.fmean(s.gram_reduction >= GOAL for s in self.scores)

    @property
    def share_content_ok(self) -> float:
        """The share of photos (0–1) with content kept ≥ ``GOAL``."""
        return statistics.fmean(s.content_kept >= GOAL for s in self.scores)

    @property
    def goal_met(self) -> bool:
        """Issue 16's goal: both means ≥ ``GOAL``."""
        return self.gram_reduction >= GOAL and self.content_kept >= GOAL

    def to_dict(self) -> dict[str, Any]:
        """Means, shares and per-photo scores as plain JSON values."""
        return {
            "model": self.model,
            "style": self.style,
            "photos": self.photos,
            "painting": self.painting,
            "painting_size": self.painting_size,
            "n": len(self.scores),
            "gram_reduction": self.gram_reduction,
            "content_kept": self.content_kept,
            "share_gram_reduction_ok": self.share_reduction_ok,
            "share_content_kept_ok": self.share_content_ok,
            "goal_met": self.goal_met,
            "per_photo": [
                {"photo": n, **dataclasses.asdict(s)}
                for n, s in zip(self.names, self.scores, strict=True)
            ],
        }


@torch.no_grad()
def judge_style(
    vgg: VGGFeatures,
    stylizer: Stylizer,
    style: str,
    photos: Sequence[Photo],
    label: str = "",
    keep: int = 0,
) -> StyleJudgement:
    """Judge ``style`` of ``stylizer``'s model on ``photos`` (each stylised with that style
    alone, at the photo's size), against the painting at its training scale. ``keep``: how many
    (photo, output) pairs, (3, H, W) on the CPU, to keep for ``judgement_grid``."""
    if not photos:
        raise ValueError("no photos to judge on")
    path, size = painting_for(stylizer.meta, style if stylizer.num_styles > 1 else None)
    grams = painting_grams(vgg, load_tensor(path, long_side=size))
    weights = one_hot(stylizer.style_names, style) if stylizer.num_styles > 1 else None
    model = stylizer.path.stem if stylizer.path is not None else stylizer.style
    out = StyleJudgement(model, style, label, [], [], str(path), size)
    for p in photos:
        y = stylizer.stylize_tensor(p.image, style=weights).clamp(0, 1)
        out.names.append(p.name)
        out.scores.append(score(p.features, features(vgg, y), grams))
        if len(out.pictures) < keep:
            out.pictures.append((p.image[0].float().cpu(), y[0].float().cpu()))
    return out


def judge_model(
    vgg: VGGFeatures,
    stylizer: Stylizer,
    photos: Sequence[Photo],
    styles: Sequence[str] | None = None,
    label: str = "",
    keep: int = 0,
) -> list[StyleJudgement]:
    """``judge_style`` for each of ``styles`` (None: every style of the model, in order)."""
    names = list(styles) if styles else stylizer.style_names
    return [judge_style(vgg, stylizer, s, photos, label, keep) for s in names]


# ---------------------------------------------------------------------------------------------
# Picture
# ---------------------------------------------------------------------------------------------


def judgement_grid(j: StyleJudgement, columns: int = 6, pad: int = 4) -> Image.Image:
    """The kept pairs of a judgement as one picture: photo above output, ``columns`` pairs a
    row (cells as wide as the widest picture, each row as tall as its tallest), each picture
    under a small label (the photo's name; the output's Gram reduction ``G`` and content kept
    ``C``), and a title line with the means."""
    if not j.pictures:
        raise ValueError("the judgement kept no pictures (judge_style(keep=...))")
    label_h, title_h = 12, 16
    width = max(x.shape[-1] for pair in j.pictures for x in pair)
    rows = [j.pictures[i : i + columns] for i in range(0, len(j.pictures), columns)]
    heights = [max(x.shape[-2] for pair in row for x in pair) + label_h for row in rows]
    size = (min(columns, len(j.pictures)) * (width + pad) + pad, title_h + pad)
    canvas = Image.new("RGB", (size[0], size[1] + sum(2 * h + pad for h in heights)), "white")
    draw = ImageDraw.Draw(canvas)
    name = j.model if j.model == j.style else f"{j.model}/{j.style}"
    draw.text((pad, 2), f"{name} on {j.photos}: mean G {j.gram_reduction:.3f}, "
              f"C {j.content_kept:.3f}", fill="black")  # fmt: skip
    for i, ((photo, output), s) in enumerate(zip(j.pictures, j.scores, strict=False)):
        x0 = pad + (i % columns) * (width + pad)
        y0 = title_h + sum(2 * h + pad for h in heights[: i // columns])
        texts = (j.names[i], f"G {s.gram_reduction:.2f}  C {s.content_kept:.2f}")
        for k, (img, text) in enumerate(zip((photo, output), texts, strict=True)):
            top = y0 + k * heights[i // columns]
            draw.text((x0 + 2, top), text, fill="black")
            pic = tensor_to_pil(img)
            canvas.paste(pic, (x0 + (width - pic.width) // 2, top + label_h))
    return canvas


# ---------------------------------------------------------------------------------------------
# Which models
# ---------------------------------------------------------------------------------------------


def is_shipped_style_model(path: Path, meta: Mapping[str, Any]) -> bool:
    """A full model the issue's goal is for: one style, not a demo (``*_cpu_demo``, ``"demo":
    true``) and not a nano (``*_nano``, width ``nano``)."""
    nano = path.stem.endswith("_nano") or meta.get("width") == "nano"
    return int(meta.get("num_styles") or 1) == 1 and not nano and not is_demo(path.stem, meta)


def shipped_style_models(dirs: Sequence[str | os.PathLike] | None = None) -> list[Path]:
    """The ``is_shipped_style_model`` files of ``dirs`` (default: the shipped models' folder),
    by name; a file whose metadata does not read is left out."""
    out = []
    for path in find_models(dirs if dirs is not None else [shipped_models_dir()]):
        try:
            meta = read_metadata(path)
        except ModelFileError:
            continue
        if is_shipped_style_model(path, meta):
            out.append(path)
    return out
