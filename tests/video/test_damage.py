"""Bad input and interruptions: a truncated or corrupt clip stylizes what decodes and counts
what it lost, or fails with one clear line; Ctrl-C, a crash or an error never leaves a file
under the output's name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fast_style.core.fileio import is_temp_file
from fast_style.video import VideoError, stylize_video
from fast_style.video.clips import camera_path_clip
from tests.conftest import REPO

N = 60


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("healthy")
    return {
        "mp4": camera_path_clip(None, d / "a.mp4", (48, 32), N).path,
        "webm": camera_path_clip(None, d / "a.webm", (48, 32), N).path,
        "mp4-index-last": camera_path_clip(None, d / "b.mp4", (48, 32), N, faststart=False).path,
    }


def _run(src: Path, dst: Path):
    return stylize_video(src, dst, lambda x: x, progress=False)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_a_truncated_clip_keeps_what_decodes_and_counts_the_rest(healthy, tmp_path, kind):
    data = healthy[kind].read_bytes()
    src = tmp_path / f"cut.{kind}"
    src.write_bytes(data[: len(data) // 2])
    report = _run(src, tmp_path / f"out.{kind}")
    assert 10 < report.frames_written < N
    if kind == "mp4":  # the index counts every frame: exact
        assert report.frames_written + report.frames_lost == N and not report.lost_estimated
    else:  # WebM keeps no count: estimated from the duration
        assert abs(report.frames_written + report.frames_lost - N) <= 2 and report.lost_estimated
    assert "frames lost to a damaged input" in report.summary()


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_a_corrupt_clip_keeps_what_decodes_and_counts_the_rest(healthy, tmp_path, kind):
    data = bytearray(healthy[kind].read_bytes())
    mid = len(data) // 2
    data[mid : mid + 400] = np.random.default_rng(0).integers(0, 256, 400, np.uint8).tobytes()
    src = tmp_path / f"bad.{kind}"
    src.write_bytes(bytes(data))
    report = _run(src, tmp_path / f"out.{kind}")
    assert report.frames_written > 10
    assert abs(report.frames_written + report.frames_lost - N) <= 2


def test_a_clip_cut_before_its_index_is_one_clear_error(healthy, tmp_path):
    data = healthy["mp4-index-last"].read_bytes()
    src = tmp_path / "cut.mp4"
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError) as e:
        _run(src, tmp_path / "out.mp4")
    assert "cannot read the video" in _one_line(e) and not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize(
    "content", [os.urandom(20_000), b"", b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000)]
)
def test_not_a_video_is_one_clear_error(tmp_path, content):
    src = tmp_path / "noise.mp4"
    src.write_bytes(content)
    with pytest.raises(VideoError) as e:
        _run(src, tmp_path / "out.mp4")
    assert str(src) in _one_line(e)
    assert list(tmp_path.iterdir()) == [src]


def test_missing_input_and_folder_input(tmp_path):
    for src, words in [(tmp_path / "none.mp4", "no such file"), (tmp_path, "directory")]:
        with pytest.raises(VideoError, match=words) as e:
            _run(src, tmp_path / "out.mp4")
        _one_line(e)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interruption_leaves_no_file_at_the_output(healthy, tmp_path, error):
    calls = []

    def fn(x):
        calls.append(1)
        if len(calls) == 3:
            raise error("stop")
        return x

    dst = tmp_path / "out.mp4"
    dst_old = tmp_path / "old.mp4"
    dst_old.write_bytes(b"previous")
    for target in (dst, dst_old):
        with pytest.raises(error):
            stylize_video(healthy["mp4"], target, fn, progress=False)
        calls.clear()
    assert not dst.exists() and dst_old.read_bytes() == b"previous"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["old.mp4"]  # no temporary left either


_SLOW = """
import sys, time
from fast_style.video import stylize_video
calls = []
def fn(x):
    calls.append(1)
    print("batch", flush=True)
    # from the third frame on, slow enough that the signal lands mid-clip however late the
    # (loaded) test process reads these lines
    time.sleep(0.2 if len(calls) < 3 else 5)
    return x
stylize_video(sys.argv[1], sys.argv[2], fn, batch=1, progress=False)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_ctrl_c_or_a_kill_mid_clip_leaves_no_file_at_the_output(healthy, tmp_path, sig):
    dst = tmp_path / "out.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW, str(healthy["mp4"]), str(dst)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(3):  # a few frames in: the encoder has written part of the file
        assert proc.stdout.readline().strip() == "batch"
    time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not dst.exists()
    left = list(tmp_path.iterdir())
    if sig == signal.SIGINT:  # cleaned up; the one line Python prints for Ctrl-C
        assert left == [] and "KeyboardInterrupt" in err
    else:  # SIGKILL: at most a hidden temporary file, which clean_temp_files removes later
        assert all(is_temp_file(p) for p in left)
