"""Stylizing a clip keeps its frames: count, timestamps (variable rate too), size (odd too),
orientation, and its sound bit-exact; the codec follows the extension."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fast_style.video import VideoError, encoder_settings, is_video, iter_frames, probe
from fast_style.video import stylize_video as _stylize_video
from tests.video.conftest import FRAMES, ODD, audio_packets, video_codec, video_times


def invert(x: torch.Tensor) -> torch.Tensor:
    return 1 - x


def stylize_video(src, dst, fn=invert, **kw):
    kw.setdefault("progress", False)
    return _stylize_video(src, dst, fn, **kw)


def frames_of(path: Path) -> np.ndarray:
    return np.stack([np.asarray(img) for img in iter_frames(path)]).astype(np.float32)


@pytest.mark.parametrize(
    "name", ["mp4-vfr", "mov", "mkv-2audio", "webm-vfr", "mp4-rot90", "mp4-rot270", "mkv-rot180"]
)
def test_frames_timestamps_size_and_sound_are_kept(clips, tmp_path, name):
    clip = clips[name]
    dst = tmp_path / f"out{clip.path.suffix}"
    report = stylize_video(clip.path, dst, batch=3)
    out, src = probe(dst), probe(clip.path)
    assert report.frames_written == FRAMES and report.frames_lost == 0
    assert (out.width, out.height) == (src.width, src.height) == ODD  # as displayed
    assert out.rotation == 0  # written upright, untagged
    assert video_times(dst) == video_times(clip.path)  # exact, variable rate included
    assert audio_packets(dst) == audio_packets(clip.path)  # bytes, count and times
    assert report.audio_copied == clip.audio_tracks >= 1
    # The frames are the input's, inverted, upright (rotation honoured): not just the same size.
    err = np.abs(255 - frames_of(clip.path) - frames_of(dst)).mean()
    assert err < 6, err


def test_the_variable_frame_rate_clips_are_variable(clips):
    for name in ("mp4-vfr", "webm-vfr"):
        steps = np.diff([float(t) for t in video_times(clips[name].path)])
        assert steps.max() > 2 * steps.min(), name


def test_frames_reach_the_network_upright(clips, mp4_clip):
    """A rotated clip decodes to the same upright picture as the unrotated one shows, and as
    OpenCV's own autorotating reader (another FFmpeg build) shows."""
    for name in ("mp4-rot90", "mp4-rot270", "mkv-rot180"):
        clip = clips[name]
        assert probe(clip.path).rotation == clip.rotation_tag
        ours = frames_of(clip.path)
        assert np.abs(ours - clip.frames).mean() < 4, name  # the frames as rendered, upright
        cap = cv2.VideoCapture(str(clip.path))
        ok, bgr = cap.read()
        cap.release()
        assert ok and bgr.shape[:2] == (ODD[1], ODD[0])
        assert np.abs(bgr[..., ::-1].astype(np.float32) - ours[0]).mean() < 4, name


@pytest.mark.parametrize(
    ("ext", "codec", "expect"),
    [
        (".mp4", None, ("h264", "yuv444p")),  # odd size: High 4:4:4
        (".mov", None, ("h264", "yuv444p")),
        (".mkv", None, ("h264", "yuv444p")),
        (".webm", None, ("vp9", "yuv420p")),  # VP9 codes odd sizes in 4:2:0
        (".mkv", "vp9", ("vp9", "yuv420p")),
        (".mp4", "h264", ("h264", "yuv444p")),
    ],
)
def test_codec_follows_the_extension_and_the_override(
    clips, mp4_clip, tmp_path, ext, codec, expect
):
    src = clips["webm-vfr"].path if ext == ".webm" else mp4_clip.path  # WebM holds Opus, not AAC
    dst = tmp_path / f"out{ext}"
    stylize_video(src, dst, codec=codec, crf=30)
    assert video_codec(dst) == expect
    assert (probe(dst).width, probe(dst).height) == ODD


def test_unknown_or_misplaced_codecs_are_one_clear_error(mp4_clip, tmp_path):
    for dst, codec, words in [
        ("o.mp4", "hevc", "unknown codec"),
        ("o.webm", "h264", "WebM holds VP9"),
        ("o.gif", "h264", "cannot hold"),
        ("o.flv", None, "unknown video container"),
    ]:
        with pytest.raises(VideoError, match=words):
            stylize_video(mp4_clip.path, tmp_path / dst, codec=codec)
        assert not (tmp_path / dst).exists()


def test_even_sizes_use_yuv420p_for_every_player():
    assert encoder_settings("a.mp4", 640, 360).pix_fmt == "yuv420p"
    assert encoder_settings("a.mp4", 641, 360).pix_fmt == "yuv444p"
    assert encoder_settings("a.mp4", 640, 360, pix_fmt="yuv444p").pix_fmt == "yuv444p"


def test_crf_sets_the_quality(mp4_clip, tmp_path):
    sizes = {}
    for crf in (5, 40):
        stylize_video(mp4_clip.path, tmp_path / f"q{crf}.mp4", crf=crf, audio=False)
        sizes[crf] = (tmp_path / f"q{crf}.mp4").stat().st_size
    assert sizes[5] > 2 * sizes[40]
    with pytest.raises(VideoError, match="out of range"):
        stylize_video(mp4_clip.path, tmp_path / "bad.mp4", crf=99)


def test_gif_output_is_a_palette_gif_without_sound(mp4_clip, tmp_path):
    dst = tmp_path / "out.gif"
    report = stylize_video(mp4_clip.path, dst)
    assert video_codec(dst)[0] == "gif"
    assert probe(dst).width == ODD[0] and report.frames_written == FRAMES
    assert len(video_times(dst)) == FRAMES
    assert "GIF holds no sound" in report.summary()
    # GIF's clock ticks in centiseconds: each frame within 5 ms of its time.
    t_in = np.array([float(t) for t in video_times(mp4_clip.path)])
    t_out = np.array([float(t) for t in video_times(dst)])
    assert np.abs(t_in - t_out).max() <= 0.005
    assert np.abs(255 - frames_of(mp4_clip.path) - frames_of(dst)).mean() < 8  # colours right
    assert is_video(dst)


def test_sound_that_the_container_cannot_hold_is_one_clear_error(mp4_clip, tmp_path):
    dst = tmp_path / "out.webm"
    with pytest.raises(VideoError, match=r"cannot hold the input's aac sound") as e:
        stylize_video(mp4_clip.path, dst)
    assert "\n" not in str(e.value) and not dst.exists()
    report = stylize_video(mp4_clip.path, dst, audio=False)  # or without the sound
    assert report.frames_written == FRAMES and audio_packets(dst) == []


def test_max_size_caps_the_network_not_the_output(mp4_clip, tmp_path):
    seen = []

    def fn(x):
        seen.append(tuple(x.shape[-2:]))
        return x

    stylize_video(mp4_clip.path, tmp_path / "out.mp4", fn, max_size=16)
    assert set(seen) == {(10, 16)}
    assert (probe(tmp_path / "out.mp4").width, probe(tmp_path / "out.mp4").height) == ODD


def test_the_frame_function_sees_batches_in_order(mp4_clip, tmp_path):
    shapes, calls = [], []

    def fn(x):
        shapes.append(tuple(x.shape))
        calls.append(x.dtype)
        return x

    report = stylize_video(
        mp4_clip.path, tmp_path / "out.mp4", fn, batch=8, on_frame=lambda d, t: None
    )
    assert shapes == [(8, 3, 21, 33), (8, 3, 21, 33), (4, 3, 21, 33)]
    assert set(calls) == {torch.float32} and report.fps > 0


def test_a_wrong_frame_function_is_reported(mp4_clip, tmp_path):
    with pytest.raises(ValueError, match="returned"):
        stylize_video(mp4_clip.path, tmp_path / "out.mp4", lambda x: x[:, :, :-1])
    assert not (tmp_path / "out.mp4").exists()


def test_progress_callback_and_summary(mp4_clip, tmp_path, capsys):
    seen = []
    report = _stylize_video(
        mp4_clip.path, tmp_path / "o.mp4", invert, on_frame=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (FRAMES, FRAMES) and len(seen) == FRAMES
    err = capsys.readouterr().err
    assert report.summary() in err and "frames/s" in err and "1 audio stream copied" in err


def test_is_video_by_container(mp4_clip, clips, tmp_path):
    assert is_video(mp4_clip.path) and is_video(clips["webm-vfr"].path)
    renamed = tmp_path / "clip.bin"  # no telling extension: probed
    renamed.write_bytes(mp4_clip.path.read_bytes())
    assert is_video(renamed)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 not really")
    assert not is_video(photo)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(256)) * 8)
    assert not is_video(noise) and not is_video(tmp_path / "missing.mp4")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "still.gif")
    assert not is_video(tmp_path / "still.gif")


class Staged:
    """A two-part frame function whose tail keeps state across batches (a running mean of the
    frames so far), recording which thread ran each part."""

    def __init__(self) -> None:
        self.threads: dict[str, set[str]] = {"head": set(), "tail": set()}
        self.tail_shapes: list[tuple[int, ...]] = []
        self.total: torch.Tensor | None = None
        self.count = 0

    def head(self, x: torch.Tensor) -> torch.Tensor:
        self.threads["head"].add(threading.current_thread().name)
        return 1 - x

    def tail(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.threads["tail"].add(threading.current_thread().name)
        self.tail_shapes.append(tuple(x.shape))
        out = []
        for frame in y:  # frame order matters: the mean of the frames so far
            self.total = frame if self.total is None else self.total + frame
            self.count += 1
            out.append(self.total / self.count)
        return torch.stack(out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(x, self.head(x))


def test_a_staged_frame_function_runs_its_tail_in_its_own_thread_in_order(mp4_clip, tmp_path):
    staged, whole = Staged(), Staged()
    stylize_video(mp4_clip.path, tmp_path / "staged.mp4", staged, batch=8)
    stylize_video(mp4_clip.path, tmp_path / "whole.mp4", whole.__call__, batch=8)  # unstaged
    assert staged.threads == {"head": {"MainThread"}, "tail": {"fs-video-tail"}}
    assert whole.threads == {"head": {"MainThread"}, "tail": {"MainThread"}}
    assert staged.tail_shapes == [(8, 3, 21, 33), (8, 3, 21, 33), (4, 3, 21, 33)]
    assert np.abs(frames_of(tmp_path / "staged.mp4") - frames_of(tmp_path / "whole.mp4")).max() == 0
    assert audio_packets(tmp_path / "staged.mp4") == audio_packets(mp4_clip.path)


def test_a_failing_tail_is_reported_and_leaves_no_file(mp4_clip, tmp_path):
    bad = Staged()
    bad.tail = lambda x, y: y[:, :1]  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="returned"):
        stylize_video(mp4_clip.path, tmp_path / "out.mp4", bad)
    assert list(tmp_path.iterdir()) == []
