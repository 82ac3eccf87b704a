"""Synthetic clips: a camera path (pan, zoom, rotation) over a photo, with its exact flow.

A planar scene filmed by a moving camera has no occlusions and a flow known in closed form:
frame ``t`` shows photo point ``p = A_t · x`` at pixel ``x`` (an affine map), so pixel ``x`` of
frame ``t`` is at ``A_{t+1}^{-1} · A_t · x`` in frame ``t + 1``. That gives the synthetic warping
error benchmark exact flows and masks (no flow-estimation error enters), and gives the tests
small clips with every property a phone clip has: an odd size, a sine-tone sound track, a
rotation tag, variable frame rate, in mp4, mov, mkv or webm.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import cv2
import numpy as np
from PIL import Image

from fast_style.core.imaging import load_rgb
from fast_style.core.resources import default_photo
from fast_style.video.encode import encoder_settings, pal8_frame

Kind = Literal["pan", "zoom", "rotate"]
KINDS: tuple[Kind, ...] = ("pan", "zoom", "rotate")
COVER = 0.6  # at the start the frame spans 60 % of the photo's width or height: room to move
# The camera's optics: a Gaussian blur of 1 px band-limits the frames, so that resampling them
# (rendering, then warping in E_warp) changes them by ~1e-5 in squared error, not ~5e-4 as a
# razor-sharp downscaled photo does; the input's exact-flow E_warp is then ~0.
BLUR_SIGMA = 1.0
AUDIO_RATE = 48_000  # Opus codes only 48 kHz; AAC takes it too
TONES = (440.0, 660.0, 880.0)  # Hz, one per audio track
VFR_TICKS = (2, 4, 7, 3)  # frame durations in quarter frames: irregular, averaging one frame


@dataclass
class CameraPath:
    """Rendered frames and their exact flow.

    ``frames`` (T, H, W, 3) uint8 RGB, upright. ``flows`` (T-1, H, W, 2) float32: pixel (x, y)
    of frame t is at (x, y) + flow in frame t+1 (OpenCV's DIS convention). ``masks`` (T-1, H, W)
    bool: the pixels of frame t still inside frame t+1."""

    frames: np.ndarray
    flows: np.ndarray
    masks: np.ndarray


@dataclass
class SyntheticClip(CameraPath):
    """A camera path written to ``path``: ``pts`` in ``time_base`` as written; ``rotation_tag``
    the display rotation stored (``frames`` are what a player shows, upright)."""

    path: Path
    pts: list[int]
    time_base: Fraction
    rotation_tag: int
    audio_tracks: int


def _base_photo(photo: str | Path | Image.Image | None, size: tuple[int, int]) -> np.ndarray:
    """The photo scaled (Lanczos) so that the frame covers ``COVER`` of it at one photo pixel
    per frame pixel, blurred by ``BLUR_SIGMA``; (PH, PW, 3) uint8."""
    img = photo if isinstance(photo, Image.Image) else load_rgb(photo or default_photo())
    img = img.convert("RGB")
    w, h = size
    k = max(w / (COVER * img.width), h / (COVER * img.height))
    scaled = img.resize(
        (math.ceil(img.width * k), math.ceil(img.height * k)), Image.Resampling.LANCZOS
    )
    return cv2.GaussianBlur(np.asarray(scaled), (0, 0), BLUR_SIGMA)


def camera_matrix(
    kind: Kind, u: float, size: tuple[int, int], photo: tuple[int, int]
) -> np.ndarray:
    """The 3×3 map from frame pixels to photo pixels at path position ``u`` in [0, 1].

    pan: a diagonal sweep over 80 % of the room; zoom: into 65 %; rotate: −12° to +12° at 90 %
    scale (the turned frame stays inside the photo)."""
    (w, h), (pw, ph) = size, photo
    room_x, room_y = (pw - w) / 2, (ph - h) / 2
    scale, angle, dx, dy = 1.0, 0.0, 0.0, 0.0
    if kind == "pan":
        dx, dy = (u - 0.5) * 1.6 * room_x, (u - 0.5) * 0.8 * room_y
    elif kind == "zoom":
        scale = 1.0 - 0.35 * u
    elif kind == "rotate":
        scale, angle = 0.9, math.radians((u - 0.5) * 24)
    else:
        raise ValueError(f"unknown camera path {kind!r}: choose one of {', '.join(KINDS)}")
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    frame_c = np.array([[1, 0, -(w - 1) / 2], [0, 1, -(h - 1) / 2], [0, 0, 1]])
    turn = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    photo_c = np.array([[1, 0, (pw - 1) / 2 + dx], [0, 1, (ph - 1) / 2 + dy], [0, 0, 1]])
    return photo_c @ turn @ frame_c


def exact_flow(
    a: np.ndarray, b: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Flow (H, W, 2) from the frame of camera matrix ``a`` to that of ``b``, and the mask
    (H, W) of the pixels that stay inside the frame."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([xs, ys, np.ones_like(xs)], -1) @ (np.linalg.inv(b) @ a).T
    flow = (pts[..., :2] - np.stack([xs, ys], -1)).astype(np.float32)
    x1, y1 = pts[..., 0], pts[..., 1]
    return flow, (x1 >= 0) & (x1 <= w - 1) & (y1 >= 0) & (y1 <= h - 1)


def render_camera_path(
    photo: str | Path | Image.Image | None, size: tuple[int, int], frames: int, kind: Kind = "pan"
) -> CameraPath:
    """Film ``photo`` (default: the shipped Kodak photo) along a camera path: ``frames``
    frames of ``size`` = (W, H), bilinear, with the exact flow between consecutive frames."""
    if frames < 2:
        raise ValueError(f"a camera path needs at least 2 frames, got {frames}")
    base = _base_photo(photo, size)
    mats = [
        camera_matrix(kind, i / (frames - 1), size, (base.shape[1], base.shape[0]))
        for i in range(frames)
    ]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # dst(x) = src(M x)
    imgs = [
        cv2.warpAffine(base, m[:2], size, flags=flags, borderMode=cv2.BORDER_REFLECT101)
        for m in mats
    ]
    pairs = [exact_flow(a, b, size) for a, b in itertools.pairwise(mats)]
    return CameraPath(
        np.stack(imgs), np.stack([f for f, _ in pairs]), np.stack([m for _, m in pairs])
    )


def frame_times(frames: int, fps: int, vfr: bool) -> tuple[list[int], Fraction]:
    """(pts, time base): constant rate in 1/fps; variable in quarter frames (``VFR_TICKS``)."""
    if not vfr:
        return list(range(frames)), Fraction(1, fps)
    steps = [VFR_TICKS[i % len(VFR_TICKS)] for i in range(frames - 1)]
    return [0, *np.cumsum(steps).tolist()], Fraction(1, 4 * fps)


def _audio_codec(fmt: str) -> tuple[str, str, int] | None:
    """(codec, sample format, samples per frame) of the sound for a muxer; None: no sound."""
    if fmt == "webm":
        return "libopus", "flt", 960  # 20 ms, Opus's usual frame
    if fmt in ("mp4", "mov", "matroska"):
        return "aac", "fltp", 1024
    return None


class _Tones:
    """Sine tones (one per track) written as the video advances, interleaved with it."""

    def __init__(self, container: av.container.OutputContainer, tracks: int) -> None:
        spec = _audio_codec(container.format.name) if tracks else None
        self.streams: list = []
        self.done = 0
        if spec is None:
            return
        self.codec, self.fmt, self.chunk = spec
        for _ in range(tracks):
            self.streams.append(container.add_stream(self.codec, rate=AUDIO_RATE, layout="mono"))
        self._c = container

    def write_until(self, seconds: float) -> None:
        """Encode whole frames of every track up to ``seconds``."""
        while self.streams and self.done < seconds * AUDIO_RATE:
            t = (self.done + np.arange(self.chunk)) / AUDIO_RATE
            for s, hz in zip(self.streams, TONES, strict=False):
                wave = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(wave, format=self.fmt, layout="mono")
                frame.sample_rate, frame.pts = AUDIO_RATE, self.done
                frame.time_base = Fraction(1, AUDIO_RATE)
                for p in s.encode(frame):
                    self._c.mux(p)
            self.done += self.chunk

    def flush(self) -> None:
        for s in self.streams:
            for p in s.encode(None):
                self._c.mux(p)


def write_clip(
    path: str | Path,
    frames: Sequence[np.ndarray] | np.ndarray,
    pts: Sequence[int],
    time_base: Fraction,
    *,
    fps: int | Fraction = 30,
    audio: int = 1,
    rotation_tag: int = 0,
    codec: str | None = None,
    crf: int | None = None,
    faststart: bool = True,
) -> None:
    """Write upright RGB ``frames`` ((H, W, 3) uint8) at ``pts`` to ``path``, the container and
    codec following its extension, with ``audio`` sine-tone tracks (none in GIF or AVI).

    ``rotation_tag`` (counter-clockwise degrees, a multiple of 90) stores the frames turned the
    other way with that display rotation, as a phone does: players show ``frames``.
    ``faststart=False`` leaves an mp4's index at the end (a truncated copy is then unreadable)."""
    k = (rotation_tag // 90) % 4
    h, w = np.rot90(frames[0], -k).shape[:2]
    cfg = encoder_settings(path, w, h, codec=codec, crf=crf)
    opts = cfg.container_options if faststart else {}
    with av.open(str(path), "w", format=cfg.format, options=opts) as c:
        v = c.add_stream(cfg.codec, rate=Fraction(fps))
        v.width, v.height, v.pix_fmt, v.options = w, h, cfg.pix_fmt, dict(cfg.options)
        v.time_base = v.codec_context.time_base = time_base
        if k:
            v.set_display_rotation(rotation_tag)
        tones = _Tones(c, int(audio))
        for img, t in zip(frames, pts, strict=True):
            stored = np.ascontiguousarray(np.rot90(img, -k))
            frame = (
                pal8_frame(Image.fromarray(stored))
                if cfg.pix_fmt == "pal8"
                else av.VideoFrame.from_ndarray(stored, format="rgb24")
            )
            frame.pts, frame.time_base = t, time_base
            for p in v.encode(frame):
                c.mux(p)
            tones.write_until(float((t + 1) * time_base))
        for p in v.encode(None):
            c.mux(p)
        tones.flush()


def camera_path_clip(
    photo: str | Path | Image.Image | None,
    path: str | Path,
    size: tuple[int, int] = (33, 21),
    frames: int = 20,
    fps: int = 30,
    kind: Kind = "pan",
    *,
    audio: bool | int = True,
    rotation_tag: int = 0,
    vfr: bool = False,
    codec: str | None = None,
    crf: int | None = None,
    faststart: bool = True,
) -> SyntheticClip:
    """A camera path over ``photo`` written to ``path`` (mp4, mov, mkv, webm, gif): ``size`` =
    (W, H) as displayed, ``frames`` at ``fps`` (``vfr``: irregular durations averaging 1/fps),
    ``audio`` sine-tone tracks (True: one), ``rotation_tag`` (degrees, counter-clockwise).
    Returns the frames as rendered (before encoding), their exact flows and masks, and the
    timestamps as written."""
    cam = render_camera_path(photo, size, frames, kind)
    pts, tb = frame_times(frames, fps, vfr)
    write_clip(
        path,
        cam.frames,
        pts,
        tb,
        fps=fps,
        audio=int(audio),
        rotation_tag=rotation_tag,
        codec=codec,
        crf=crf,
        faststart=faststart,
    )
    spec = _audio_codec(encoder_settings(path, *size).format)
    tracks = int(audio) if spec else 0
    return SyntheticClip(
        cam.frames, cam.flows, cam.masks, Path(path), pts, tb, rotation_tag, tracks
    )
