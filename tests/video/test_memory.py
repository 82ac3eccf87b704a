"""Streaming: memory stays flat whatever the clip's length (the issue's 10 s against 60 s)."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from fast_style.video.clips import render_camera_path, write_clip
from tests.conftest import REPO

# 256×144: holding the 1500 extra frames of the long clip, even as uint8 pictures (166 MB) and
# far more as float tensors, would exceed the 100 MB allowed, so a leak cannot hide.
SIZE = (256, 144)
FPS = 30

_CHILD = """
import resource, sys
from fast_style.video import stylize_video
r = stylize_video(sys.argv[1], sys.argv[2], lambda x: x.flip(-1), batch=4, progress=False)
print(r.frames_written, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _clip(path: Path, seconds: int) -> Path:
    cam = render_camera_path(None, SIZE, FPS, "pan")
    n = seconds * FPS
    cycle = [*range(FPS), *range(FPS - 1, -1, -1)]  # back and forth: a smooth endless pan
    frames = [cam.frames[cycle[i % len(cycle)]] for i in range(n)]
    write_clip(path, frames, list(range(n)), Fraction(1, FPS), fps=FPS, crf=30)
    return path


def _peak_rss_mb(src: Path, dst: Path) -> tuple[int, int]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(dst)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    frames, rss = map(int, proc.stdout.split())
    return frames, rss


@pytest.mark.slow
def test_memory_is_flat_for_a_10s_and_a_60s_clip(tmp_path):
    short, long = _clip(tmp_path / "10s.mp4", 10), _clip(tmp_path / "60s.mp4", 60)
    n_short, rss_short = _peak_rss_mb(short, tmp_path / "o10.mp4")
    n_long, rss_long = _peak_rss_mb(long, tmp_path / "o60.mp4")
    assert (n_short, n_long) == (10 * FPS, 60 * FPS)
    assert abs(rss_long - rss_short) < 100, (rss_short, rss_long)
