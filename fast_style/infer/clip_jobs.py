"""Videos on ``stylize.py``'s command line: recognising them, and the frame function.

A clip runs through ``fast_style.video.stylize_video`` (streaming, sound remuxed, written
crash-safely) with ``ClipStylizer`` as its frame function: the photo options (strength,
preserve-color, histogram matching, a static mask, tiling) applied to every frame, and the
temporal stabilisers: by default the output blended along the input's motion
(``fast_style.video.stabilize``, which needs OpenCV), and on request the instance-norm
statistics smoothed across frames (``fast_style.infer.temporal``, ``momentum``). PyAV and
OpenCV are the optional ``video`` extra; without PyAV a clip gets one line saying how to
install it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from fast_style.core.imaging import check_mask_size, pil_to_tensor
from fast_style.infer.postprocess import PostProcess, check_strength, feather_mask
from fast_style.infer.stylizer import Stylizer
from fast_style.infer.temporal import TemporalStylizer

if TYPE_CHECKING:  # imported where used: it needs the video extra
    from fast_style.video.stabilize import FlowStabilizer

# The clips' default momentum of the instance-norm statistics (``TemporalStylizer``): 0, none.
# On real footage smoothing them lowered the warping error by 1-2 % and raised the style loss by
# 1-2 %, and with the flow blend on it only added style loss (docs/video.md), so by default only
# the output is blended along the motion; ``--momentum 0.8`` (``DEFAULT_MOMENTUM``) adds it.
CLIP_MOMENTUM = 0.0
# Containers a clip may be written to (the codec follows: fast_style.video.encode).
VIDEO_OUTPUT_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".gif")
DEFAULT_VIDEO_EXT = ".mp4"
INSTALL_HINT = "video needs PyAV: pip install 'fast_style[video]'"
# Extensions taken for videos when PyAV is missing, so that the clip gets INSTALL_HINT
# instead of "not an image" (GIFs stay images then).
_LIKELY_VIDEO = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"})


def video_missing() -> bool:
    """True when PyAV (the ``video`` extra) is not installed."""
    try:
        import av  # noqa: F401
    except ImportError:
        return True
    return False


def is_clip(path: Path) -> bool:
    """A video (recognised by its container, ``fast_style.video.io.is_video``: an animated GIF
    is one); without PyAV, a file with a video extension."""
    if video_missing():
        return path.suffix.lower() in _LIKELY_VIDEO
    from fast_style.video.io import is_video

    return is_video(path)


def video_files(folder: Path) -> list[Path]:
    """The files under ``folder`` (recursive) with a video extension other than GIF (GIFs are
    listed with the images and recognised by their frame count)."""
    exts = set(VIDEO_OUTPUT_EXTENSIONS) - {".gif"}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts and p.is_file())


def clip_output(dst: Path) -> Path:
    """A clip's output path: its own container when writable, else .mp4."""
    if dst.suffix.lower() in VIDEO_OUTPUT_EXTENSIONS:
        return dst
    return dst.with_suffix(DEFAULT_VIDEO_EXT)


def _flow_stabilizer(
    fn: Callable[[torch.Tensor], torch.Tensor], blend: float | None
) -> FlowStabilizer | None:
    """``fast_style.video.stabilize.FlowStabilizer`` over ``fn`` (``blend`` None: its default);
    None, with a warning, where OpenCV is missing."""
    from fast_style.video.stabilize import FlowStabilizer

    try:
        return FlowStabilizer(fn) if blend is None else FlowStabilizer(fn, blend=blend)
    except ImportError as e:  # OpenCV: the constructor says how to install it
        warnings.warn(f"clips are not blended along their motion: {e}", stacklevel=2)
        return None


@dataclass
class ClipOptions:
    """The photo options as they apply to every frame of a clip."""

    style: torch.Tensor | None = None  # (S,) weights of a multi-style model
    strength: float = 1.0
    preserve_color: bool = False
    match_histogram: bool = False
    mask: Image.Image | None = None  # L, 255 = styled; feathered at the frame size
    tile: int | None = None
    overlap: int = 32
    temporal: bool = True
    momentum: float | None = None  # None: CLIP_MOMENTUM (0: the statistics are not smoothed)
    blend: float | None = None  # None: fast_style.video.stabilize.DEFAULT_BLEND; 0: no blending


class ClipStylizer:
    """The frame function of one clip: (B, 3, H, W) consecutive frames in [0, 1] → stylised,
    float32 in [0, 1]. The stabilisers keep state: one instance per clip. Tiled frames
    (``tile``) are stylised one by one with their own tiled statistics (not smoothed) and then
    blended along the motion like the others."""

    def __init__(self, stylizer: Stylizer, opts: ClipOptions):
        self.stylizer, self.opts = stylizer, opts
        self.post = PostProcess(
            check_strength(opts.strength), opts.preserve_color, opts.match_histogram
        )
        self.temporal: TemporalStylizer | None = None
        momentum = CLIP_MOMENTUM if opts.momentum is None else opts.momentum
        if opts.temporal and opts.tile is None and momentum > 0:
            self.temporal = TemporalStylizer(stylizer, momentum, style=opts.style)
        self.stabilizer: FlowStabilizer | None = None
        if opts.temporal and opts.blend != 0:
            self.stabilizer = _flow_stabilizer(self._network, opts.blend)
        self._mask: tuple[tuple[int, int], torch.Tensor] | None = None

    def _mask_at(self, h: int, w: int) -> torch.Tensor | None:
        """The static mask feathered to (1, 1, h, w) on the stylizer's device, cached."""
        if self.opts.mask is None:
            return None
        if self._mask is None or self._mask[0] != (h, w):
            check_mask_size(self.opts.mask.size, (w, h))  # one line, never stretched
            m = pil_to_tensor(feather_mask(self.opts.mask, (w, h))).unsqueeze(0)
            self._mask = ((h, w), m.to(self.stylizer.device))
        return self._mask[1]

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        o, st = self.opts, self.stylizer
        if self.temporal is not None:
            return self.temporal(x)
        if o.tile is not None:
            return st.stylize_tensor(x, style=o.style, tile=o.tile, overlap=o.overlap)
        return st.forward(x, o.style)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.tail(frames, self.head(frames))

    def head(self, frames: torch.Tensor) -> torch.Tensor:
        """The network's part: (B, 3, H, W) frames in [0, 1] → its raw output, same shape."""
        return self._network(frames.to(self.stylizer.device, torch.float32))

    def tail(self, frames: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The rest, in frame order (``fast_style.video.pipeline`` runs it in its own thread,
        beside the next batch's ``head``): the flow blend, strength, colour, mask."""
        x = frames.to(self.stylizer.device, torch.float32)
        y = y.to(x.device)
        if self.stabilizer is not None:
            y = self.stabilizer.stabilize(x, y)
        m = self._mask_at(*x.shape[-2:])
        if not self.post.is_identity or m is not None:
            y = self.post.fit(y, x)(y, x, None if m is None else m.expand(x.shape[0], -1, -1, -1))
        return y.clamp(0, 1)
