"""Writing clips: the encoder settings that follow the output's extension, and ``ClipWriter``,
which encodes upright frames and remuxes audio packets, packet for packet (no re-encode).

Odd sizes: libx264 refuses 4:2:0 at an odd width or height, so H.264 is written in
yuv420p when both sides are even (plays everywhere) and in yuv444p (High 4:4:4 Predictive
profile) when one is odd, so the output is exactly W×H, never padded or cropped. VP9 (profile 0)
codes odd sizes in yuv420p. GIF is pal8 with an adaptive palette per frame (Pillow's median cut).
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from fast_style.video.io import READ_ERRORS, AudioPacket, VideoError, error_reason

GIF_TIME_BASE = Fraction(1, 100)  # GIF frame delays are in centiseconds

# extension → (FFmpeg muxer, default video codec)
_CONTAINERS = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
    ".avi": ("avi", "libx264"),
    ".gif": ("gif", "gif"),
}
_CODECS = {
    **dict.fromkeys(("h264", "x264", "avc", "libx264"), "libx264"),
    **dict.fromkeys(("vp9", "libvpx-vp9"), "libvpx-vp9"),
    "gif": "gif",
}
# No H.265: the libx265 in PyAV 18's wheels corrupts the heap (glibc aborts the process).
# Quality defaults: x264's CRF 18 is "visually lossless or nearly so" (FFmpeg's H.264 guide);
# 31 is the VP9 constant-quality level FFmpeg's VP9 guide starts from (libvpx-vp9 needs a zero
# bit rate for pure CRF).
_DEFAULT_CRF = {"libx264": 18, "libvpx-vp9": 31}
_CRF_RANGE = {"libx264": (0, 51), "libvpx-vp9": (0, 63)}


@dataclass(frozen=True)
class EncoderSettings:
    """The muxer, codec, pixel format and options a clip is written with."""

    format: str
    codec: str
    pix_fmt: str
    options: dict[str, str]
    container_options: dict[str, str]


def _codec_name(codec: str | None, default: str) -> str:
    if codec is None:
        return default
    name = _CODECS.get(codec.lower())
    if name is None:
        raise VideoError(f"unknown codec {codec!r}: choose one of {', '.join(sorted(_CODECS))}")
    return name


def _pix_fmt(codec: str, width: int, height: int) -> str:
    """yuv420p where it can code the size, else yuv444p (x264 needs even sides for 4:2:0)."""
    if codec == "gif":
        return "pal8"
    if codec == "libx264" and (width % 2 or height % 2):
        return "yuv444p"
    return "yuv420p"


def _codec_options(codec: str, crf: int | None) -> dict[str, str]:
    if codec == "gif":
        return {}
    crf = _DEFAULT_CRF[codec] if crf is None else crf
    lo, hi = _CRF_RANGE[codec]
    if not lo <= crf <= hi:
        raise VideoError(f"--crf {crf} is out of range for {codec} ({lo} to {hi})")
    if codec == "libvpx-vp9":
        # "good" quality with cpu-used 4 and row multithreading: libvpx's speed/quality trade for
        # offline encoding that keeps pace with the network on two cores.
        return {"crf": str(crf), "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
    # veryfast: a third of medium's time per frame at the same file size at CRF 18 (640×360),
    # which is what lets the encoder keep pace beside the network on two cores (docs/video.md).
    return {"crf": str(crf), "preset": "veryfast"}


def encoder_settings(
    dst: str | Path,
    width: int,
    height: int,
    *,
    codec: str | None = None,
    crf: int | None = None,
    pix_fmt: str | None = None,
) -> EncoderSettings:
    """The settings for writing a ``width`` × ``height`` clip to ``dst``: the codec follows the
    extension (mp4/mov/m4v/mkv/avi → H.264, webm → VP9, gif → palette GIF); ``codec``, ``crf``
    and ``pix_fmt`` override."""
    suffix = Path(dst).suffix.lower()
    if suffix not in _CONTAINERS:
        known = ", ".join(sorted(_CONTAINERS))
        raise VideoError(f"{dst}: unknown video container {suffix or '(none)'}: use one of {known}")
    fmt, default = _CONTAINERS[suffix]
    name = _codec_name(codec, default)
    if (fmt == "gif") != (name == "gif"):
        raise VideoError(f"{dst}: a {suffix} file cannot hold {name} video")
    if fmt == "webm" and name != "libvpx-vp9":
        raise VideoError(f"{dst}: WebM holds VP9 video, not {name}; write .mkv for {name}")
    cont = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}  # index first: streamable
    return EncoderSettings(
        fmt, name, pix_fmt or _pix_fmt(name, width, height), _codec_options(name, crf), cont
    )


@functools.cache
def muxer_codecs(fmt: str) -> frozenset[str]:
    """The codecs FFmpeg's muxer ``fmt`` can hold (asked of an output opened in memory)."""
    with av.open(io.BytesIO(), "w", format=fmt) as c:
        return frozenset(c.supported_codecs)


def check_audio_fits(dst: str | Path, fmt: str, codec: str) -> None:
    """``VideoError`` unless a ``fmt`` file can hold ``codec`` sound as it is (no re-encode)."""
    if codec not in muxer_codecs(fmt):
        raise VideoError(
            f"{dst}: a {fmt} file cannot hold the input's {codec} sound without re-encoding "
            "it; write .mkv or .mp4 instead (or drop the sound)"
        )


class ClipWriter:
    """Writes one clip to ``path``: upright RGB frames (``write_frame``, encoded with
    ``settings``) and audio packets remuxed unchanged (``write_audio``).

    ``path`` is written in place: callers write to a temporary file and rename it
    (``fast_style.core.fileio.atomic_write``). ``time_base`` is the input video's: frames keep
    its timestamps (GIF's own time base is 1/100 s, so they are rounded to centiseconds there).
    ``audio`` are the input's audio streams, the templates of the output's (a GIF drops them).
    """

    def __init__(
        self,
        path: str | Path,
        settings: EncoderSettings,
        *,
        size: tuple[int, int],
        time_base: Fraction,
        fps: Fraction | None,
        audio: Sequence[av.stream.Stream] = (),
        name: str | None = None,
    ) -> None:
        self.path, self.settings, self.size = Path(path), settings, size
        self.name = name or str(path)  # the final name, for messages (``path`` may be temporary)
        self.frames = 0
        self._in_tb = time_base
        self._tb = GIF_TIME_BASE if settings.codec == "gif" else time_base
        # A missing timestamp follows the previous one by a nominal frame duration.
        self._step = max(1, round(1 / (float(fps or 30) * self._tb)))
        self._last: int | None = None
        try:
            self._c = av.open(
                str(path), "w", format=settings.format, options=settings.container_options
            )
        except READ_ERRORS as e:
            raise VideoError(
                f"{path}: cannot write a {settings.format} file ({error_reason(e)})"
            ) from None
        try:
            self._video = self._add_video(fps)
            self._audio = {s.index: self._add_audio(s) for s in audio}
        except BaseException:
            self.abort()
            raise

    def _add_video(self, fps: Fraction | None) -> av.video.VideoStream:
        s = self._c.add_stream(self.settings.codec, rate=fps or Fraction(30))
        assert isinstance(s, av.video.stream.VideoStream)
        s.width, s.height = self.size
        s.pix_fmt = self.settings.pix_fmt
        s.time_base = self._tb
        s.codec_context.time_base = self._tb
        s.options = dict(self.settings.options)
        return s

    def _add_audio(self, template: av.stream.Stream) -> av.stream.Stream:
        check_audio_fits(self.name, self.settings.format, template.codec_context.name)
        return self._c.add_stream_from_template(template)

    def _next_pts(self, pts: int | None) -> int:
        """The frame's timestamp in the output time base, strictly increasing."""
        if pts is not None and self._tb != self._in_tb:
            pts = round(pts * self._in_tb / self._tb)
        if self._last is not None and (pts is None or pts <= self._last):
            pts = self._last + (self._step if pts is None else 1)
        self._last = 0 if pts is None else pts
        return self._last

    def _to_frame(self, img: Image.Image) -> av.VideoFrame:
        if self.settings.pix_fmt == "pal8":
            return pal8_frame(img)
        return av.VideoFrame.from_image(img)

    def write_frame(self, img: Image.Image, pts: int | None) -> None:
        """Encode one upright RGB frame (resized to the output size if it differs); ``pts`` in
        the input's video time base."""
        if img.size != self.size:
            img = img.resize(self.size, Image.Resampling.BICUBIC)
        frame = self._to_frame(img.convert("RGB"))
        frame.pts = self._next_pts(pts)
        frame.time_base = self._tb
        self._mux(self._video.encode(frame))
        self.frames += 1

    def write_audio(self, item: AudioPacket) -> None:
        """Remux one audio packet of the input (bytes and timestamps unchanged)."""
        out = self._audio.get(item.index)
        if out is not None:
            item.packet.stream = out
            self._mux([item.packet])

    def _mux(self, packets: Iterable[av.Packet]) -> None:
        try:
            for p in packets:
                self._c.mux(p)
        except READ_ERRORS as e:
            raise VideoError(f"{self.name}: writing the video failed ({error_reason(e)})") from None

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        self._mux(self._video.encode(None))
        try:
            self._c.close()
        except READ_ERRORS as e:
            raise VideoError(
                f"{self.name}: finishing the video failed ({error_reason(e)})"
            ) from None

    def abort(self) -> None:
        """Close without flushing (the caller removes the file)."""
        with contextlib.suppress(*READ_ERRORS):
            self._c.close()


def pal8_frame(img: Image.Image) -> av.VideoFrame:
    """An RGB image as a pal8 frame with its own adaptive 256-colour palette (median cut,
    Floyd–Steinberg dithering: Pillow's defaults for RGB)."""
    q = img.quantize(256)
    rgb = np.frombuffer(bytes(q.getpalette() or []), np.uint8).reshape(-1, 3)[:256]
    palette = np.zeros((256, 4), np.uint8)  # ARGB rows, opaque
    palette[:, 0] = 255
    palette[: len(rgb), 1:] = rgb
    pair = (np.asarray(q), palette)  # PyAV's pal8 form; its stubs know only plain arrays
    return av.VideoFrame.from_ndarray(pair, format="pal8")  # type: ignore[arg-type]
