"""Small clips built with PyAV for the video tests: a camera path over a shipped Kodak photo with
a sine-tone sound track, in mp4, mov, mkv and webm, at an odd size, with a rotation tag and at a
variable frame rate. Each is made once per session (tens of milliseconds each)."""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import av
import pytest

from fast_style.video.clips import SyntheticClip, camera_path_clip

ODD = (33, 21)  # W × H, both odd: 4:2:0 H.264 cannot code it
FRAMES = 20


def audio_packets(path: Path) -> list[tuple[str, int, list[Fraction]]]:
    """Per audio stream: (md5 of its packets' bytes in order, packet count, their times)."""
    out = []
    with av.open(str(path)) as c:
        for s in c.streams.audio:
            md5, times, n = hashlib.md5(), [], 0
            for p in c.demux(s):
                if p.size:
                    md5.update(bytes(p))
                    times.append(p.pts * p.time_base)
                    n += 1
            out.append((md5.hexdigest(), n, times))
            c.seek(0)
    return out


def video_times(path: Path) -> list[Fraction]:
    """The presentation time of every decoded video frame, exactly (pts × time base)."""
    with av.open(str(path)) as c:
        return [f.pts * f.time_base for f in c.decode(c.streams.video[0])]


def video_codec(path: Path) -> tuple[str, str]:
    """(codec name, pixel format) of the first video stream."""
    with av.open(str(path)) as c:
        ctx = c.streams.video[0].codec_context
        return ctx.name, ctx.format.name


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clips")


def _make(clip_dir: Path, name: str, **kw) -> SyntheticClip:
    kw.setdefault("size", ODD)
    kw.setdefault("frames", FRAMES)
    kw.setdefault("crf", 10)  # close to the rendered frames, for the pixel checks
    return camera_path_clip(None, clip_dir / name, **kw)


@pytest.fixture(scope="session")
def mp4_clip(clip_dir: Path) -> SyntheticClip:
    """33×21 H.264 (yuv444p) + one AAC track, constant 30 frames/s."""
    return _make(clip_dir, "pan.mp4")


@pytest.fixture(scope="session")
def clips(clip_dir: Path) -> dict[str, SyntheticClip]:
    """One clip per case: containers, two sound tracks, variable rate, rotation tags."""
    return {
        "mp4-vfr": _make(clip_dir, "vfr.mp4", vfr=True, kind="zoom"),
        "mov": _make(clip_dir, "clip.mov", kind="rotate"),
        "mkv-2audio": _make(clip_dir, "two.mkv", audio=2),
        "webm-vfr": _make(clip_dir, "vfr.webm", vfr=True),
        "mp4-rot90": _make(clip_dir, "rot90.mp4", rotation_tag=90, vfr=True),
        "mp4-rot270": _make(clip_dir, "rot270.mp4", rotation_tag=270),
        "mkv-rot180": _make(clip_dir, "rot180.mkv", rotation_tag=180),
    }
