"""Reading clips with PyAV (whose wheels bundle FFmpeg: no system ffmpeg needed).

* ``is_video(path)``: recognised by container (the extension is the quick test).
* ``probe(path)`` → ``VideoInfo``: size as displayed, rotation, frame count, rate, audio.
* ``read_clip(info)`` decodes once, in presentation order: upright RGB frames (``Frame``) and,
  interleaved as demuxed, the audio packets to remux (``fast_style.video.encode`` writes).

Rotation: phone clips carry a display matrix (e.g. 90°). Frames are turned upright here, before
the network (which must see the picture as people do), and written upright with *no* tag
(``encode``): every player, browser and GIF viewer then shows the same picture, at the input's
displayed size. Damage (a truncated or corrupt file) is counted in ``ReadStats``, not raised:
what decodes is yielded; a file that cannot be opened at all is one ``VideoError`` line.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image

from fast_style.core.imaging import IMAGE_EXTENSIONS, resize_long_side

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".gif"})
# FFmpeg demuxers of single pictures: PyAV opens a JPEG as a one-frame "video" of these formats.
_PICTURE_DEMUXERS = re.compile(r"^(image2|.*_pipe|gif_pipe)$")
# What a corrupt or truncated file raises in PyAV/FFmpeg (and the OS).
READ_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError)
_UPRIGHT = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180}
_UPRIGHT[270] = Image.Transpose.ROTATE_270  # PIL's ROTATE_n turns counter-clockwise, as FFmpeg's


class VideoError(RuntimeError):
    """A clip that cannot be read or written; the message is one line, for the user."""


@dataclass(frozen=True)
class AudioInfo:
    """One audio stream of a clip (remuxed unchanged)."""

    index: int
    codec: str
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` learns from a clip's header and first frame.

    ``width`` × ``height`` is the size as displayed (upright); ``coded_width`` ×
    ``coded_height`` as stored. ``rotation`` is the counter-clockwise turn (0, 90, 180, 270)
    that the display matrix applies to the stored frames. ``frames`` is the container's count
    (None where the container keeps none, e.g. WebM); ``duration`` is the video's, in seconds.
    """

    path: Path
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int
    frames: int | None
    fps: Fraction | None
    time_base: Fraction
    duration: float | None
    codec: str
    format: str
    video_index: int
    audio: tuple[AudioInfo, ...] = field(default_factory=tuple)

    @property
    def frames_estimate(self) -> int | None:
        """The frame count, or duration × rate where the container keeps no count."""
        if self.frames:
            return self.frames
        if self.duration and self.fps:
            return max(1, round(self.duration * float(self.fps)))
        return None


@dataclass
class Frame:
    """A decoded frame, upright: ``image`` RGB, ``pts`` in the clip's video time base."""

    image: Image.Image
    pts: int | None
    index: int


@dataclass
class AudioPacket:
    """An audio packet of the input's stream ``index``, to remux unchanged. The index is kept
    apart because ``packet.stream`` dies with the input container, which the reader closes
    while the last packets may still be queued for the writer."""

    index: int
    packet: av.Packet


@dataclass
class ReadStats:
    """What ``read_clip`` met: frames decoded, packets the decoder rejected (≈ frames lost),
    why reading stopped early (a demuxer error, e.g. a truncated file) and the last frame's time."""

    decoded: int = 0
    errors: int = 0
    stopped: str | None = None
    last_time: float | None = None


def error_reason(e: BaseException) -> str:
    """FFmpeg's words for an error, without PyAV's errno and file-name decorations."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(text).splitlines()[0].rstrip(".")


@contextlib.contextmanager
def open_input(path: Path) -> Iterator[av.container.InputContainer]:
    """``av.open`` for reading, with any failure to open turned into a one-line ``VideoError``."""
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if path.is_dir():
        raise VideoError(f"{path}: is a directory, not a video")
    try:
        container = av.open(str(path), "r")
    except READ_ERRORS as e:
        raise VideoError(
            f"{path}: cannot read the video ({error_reason(e)}): the file is corrupt, truncated "
            "or not a video"
        ) from None
    try:
        yield container
    finally:
        container.close()


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.VideoStream:
    """The first real video stream (cover art, an attached picture, does not count)."""
    for s in container.streams.video:
        if not s.disposition & av.stream.Disposition.attached_pic:
            return s
    raise VideoError(f"{path}: has no video stream")


def _first_rotation(container: av.container.InputContainer, stream: av.video.VideoStream) -> int:
    """The display matrix's counter-clockwise rotation, rounded to a quarter turn (FFmpeg puts
    the stream's matrix on every decoded frame; flips and odd angles are not honoured)."""
    with contextlib.suppress(*READ_ERRORS, StopIteration):
        frame = next(container.decode(stream))
        return round(frame.rotation / 90) % 4 * 90
    return 0


def _stream_duration(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    """The video's own duration in seconds: the stream's, Matroska's per-track DURATION tag,
    else the container's (which may include longer audio)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    m = re.match(r"^(\d+):(\d+):(\d+(?:\.\d+)?)$", tag or "")
    if m:
        return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    return container.duration / av.time_base if container.duration else 0.0


def _describe(path: Path, c: av.container.InputContainer) -> VideoInfo:
    """``VideoInfo`` from an open container (read everything before it closes)."""
    v = _video_stream(c, path)
    w, h = v.codec_context.width, v.codec_context.height
    if not w or not h:
        raise VideoError(f"{path}: the video stream has no size (corrupt header)")
    audio = tuple(
        AudioInfo(a.index, a.codec_context.name, a.rate or 0, a.channels or 0)
        for a in c.streams.audio
    )
    fps = v.average_rate or v.guessed_rate or v.base_rate
    rotation = _first_rotation(c, v)
    up_w, up_h = (h, w) if rotation in (90, 270) else (w, h)
    return VideoInfo(
        path=path,
        width=up_w,
        height=up_h,
        coded_width=w,
        coded_height=h,
        rotation=rotation,
        frames=v.frames or None,
        fps=Fraction(fps) if fps else None,
        time_base=Fraction(v.time_base or Fraction(1, 90_000)),  # 90 kHz: MPEG's clock
        duration=_stream_duration(c, v) or None,
        codec=v.codec_context.name,
        format=c.format.name,
        video_index=v.index,
        audio=audio,
    )


def probe(path: str | Path) -> VideoInfo:
    """Read a clip's header (and decode its first frame, for the rotation); ``VideoError`` with
    one line if it is not a readable video."""
    path = Path(path)
    with open_input(path) as c:
        return _describe(path, c)


def _is_animated_gif(path: Path) -> bool:
    with contextlib.suppress(OSError, ValueError), Image.open(path) as im:
        return getattr(im, "n_frames", 1) > 1
    return False


def is_video(path: str | Path) -> bool:
    """True for a video file, recognised by its container.

    The extension is the quick test (mp4/mov/m4v/mkv/webm/avi: a video; a photo's extension: not
    one; a GIF: a video if animated); any other file is probed with PyAV: a video stream that
    is not a single picture."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        return False
    if suffix == ".gif":
        return _is_animated_gif(path)
    if suffix in VIDEO_EXTENSIONS:
        return True
    if suffix in IMAGE_EXTENSIONS:
        return False
    try:
        with open_input(path) as c:
            _video_stream(c, path)
            return not _PICTURE_DEMUXERS.match(c.format.name)
    except VideoError:
        return False


def upright(img: Image.Image, rotation: int) -> Image.Image:
    """Turn a stored frame by the display matrix's ``rotation`` (counter-clockwise degrees)."""
    return img.transpose(_UPRIGHT[rotation]) if rotation in _UPRIGHT else img


def _demux(
    container: av.container.InputContainer, streams: list, stats: ReadStats
) -> Iterator[av.Packet]:
    """The packets of ``streams``; a demuxer error (truncated or corrupt file) ends the clip."""
    it = container.demux(streams)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except READ_ERRORS as e:
            stats.stopped = error_reason(e)
            return


def _decode(
    packet: av.Packet, info: VideoInfo, stats: ReadStats, max_size: int | None
) -> Iterator[Frame]:
    """The frames of one video packet (an empty packet flushes the decoder); a packet the decoder
    rejects is counted and skipped."""
    try:
        frames = packet.decode()
    except READ_ERRORS:
        stats.errors += 1
        return
    for f in frames:
        img = upright(f.to_image(), info.rotation)
        if max_size is not None and max(img.size) > max_size:
            img = resize_long_side(img, max_size)
        if f.pts is not None:
            stats.last_time = float(f.pts * info.time_base)
        stats.decoded += 1
        yield Frame(img, f.pts, stats.decoded - 1)


def read_clip(
    info: VideoInfo,
    *,
    audio: bool = True,
    max_size: int | None = None,
    stats: ReadStats | None = None,
) -> Iterator[Frame | AudioPacket]:
    """Decode ``info.path`` once: upright frames (long side ≤ ``max_size`` when given) and, with
    ``audio``, every audio packet as demuxed (for remuxing), in file order. Damage is counted in
    ``stats``, never raised: what decodes is yielded."""
    stats = stats if stats is not None else ReadStats()
    with open_input(info.path) as c:
        v = c.streams[info.video_index]
        streams = [v, *(c.streams[a.index] for a in info.audio)] if audio else [v]
        for packet in _demux(c, streams, stats):
            if packet.stream.index == info.video_index:
                yield from _decode(packet, info, stats, max_size)
            elif packet.size:  # demux ends each stream with an empty flush packet
                yield AudioPacket(packet.stream.index, packet)


def iter_frames(
    path: str | Path, *, max_size: int | None = None, max_frames: int | None = None
) -> Iterator[Image.Image]:
    """The upright RGB frames of a clip (no audio), at most ``max_frames``."""
    for i, item in enumerate(read_clip(probe(path), audio=False, max_size=max_size)):
        if max_frames is not None and i >= max_frames:
            return
        assert isinstance(item, Frame)
        yield item.image
