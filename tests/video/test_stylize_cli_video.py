"""``stylize.py`` with videos: recognised by container, mixed folders, the photo options, the
codec options, temporal smoothing on by default, and one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fast_style.core.model_io import describe, save_safetensors
from fast_style.core.network import TransformerNet
from fast_style.infer.cli import main
from fast_style.infer.clip_jobs import ClipOptions, ClipStylizer
from fast_style.infer.stylizer import Stylizer
from fast_style.video import iter_frames, probe
from fast_style.video.stabilize import FlowStabilizer
from tests.video.conftest import audio_packets, video_codec, video_times


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = TransformerNet(channels=(8, 16, 32), num_residual=1)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_safetensors(net, path, describe(net, "tiny", width="tiny"))
    return path


def _frames(path: Path) -> np.ndarray:
    return np.stack([np.asarray(f) for f in iter_frames(path)])


def test_a_clip_keeps_frames_times_size_and_sound(mp4_clip, tiny_model, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    assert (
        main(["--model", str(tiny_model), "--input", str(mp4_clip.path), "--output", str(out)]) == 0
    )
    a, b = probe(mp4_clip.path), probe(out)
    assert (b.width, b.height, b.frames) == (a.width, a.height, a.frames)
    assert video_times(out) == video_times(mp4_clip.path)
    assert audio_packets(out) == audio_packets(mp4_clip.path)
    assert "stylized 1 video with" in capsys.readouterr().out
    # the network ran: not the input
    assert np.abs(_frames(out).astype(int) - _frames(mp4_clip.path).astype(int)).mean() > 5


def test_a_folder_mixing_photos_and_videos(clips, mp4_clip, tiny_model, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(mp4_clip.path, src / "a.mp4")
    shutil.copy(clips["webm-vfr"].path, src / "sub" / "b.webm")
    Image.new("RGB", (20, 14), "red").save(src / "p.jpg")
    out = tmp_path / "out"
    rc = main(
        [
            "--model",
            str(tiny_model),
            "--input",
            str(src),
            "--output",
            str(out),
            "--ext",
            "png",
            "-q",
        ]
    )
    assert rc == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*")) == [
        "a.mp4",
        "p.png",
        "sub/b.webm",
    ]
    assert video_codec(out / "sub" / "b.webm")[0] == "vp9"
    assert "stylized 1 image and 2 videos" in capsys.readouterr().out


def test_codec_and_crf_options(mp4_clip, tiny_model, tmp_path):
    out = tmp_path / "o.mkv"
    args = ["--model", str(tiny_model), "--input", str(mp4_clip.path), "--output", str(out)]
    assert main([*args, "--codec", "vp9", "--crf", "40", "-q"]) == 0
    assert video_codec(out)[0] == "vp9"


def test_temporal_is_the_default_and_can_be_switched_off(mp4_clip, tiny_model, tmp_path):
    base = ["--model", str(tiny_model), "--input", str(mp4_clip.path), "-q"]
    runs = {
        "on": [],
        "off": ["--no-temporal"],
        "zero": ["--momentum", "0", "--blend", "0"],  # both stabilisers at zero weight
        "norms": ["--blend", "0", "--momentum", "0.8"],  # the statistics smoothed, no blend
    }
    frames = {}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.mkv"
        assert main([*base, "--output", str(out), "--crf", "0", "--codec", "h264", *extra]) == 0
        frames[name] = _frames(out).astype(int)[1:]  # the first frame has no previous one
    off = frames["off"]
    assert np.abs(frames["zero"] - off).max() <= 2  # zero weights: per-frame (up to coding)
    zero_diff = np.abs(frames["zero"] - off).mean()
    assert np.abs(frames["norms"] - off).mean() > zero_diff
    assert np.abs(frames["on"] - off).mean() > zero_diff  # the default blends


def test_blend_is_checked_and_its_help_gives_the_default(capsys):
    from fast_style.video.stabilize import DEFAULT_BLEND

    with pytest.raises(SystemExit):
        main(["--model", "x", "--input", "a.mp4", "--blend", "1.5"])
    assert "--blend must be in [0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert f"(default {DEFAULT_BLEND:g};" in " ".join(capsys.readouterr().out.split())


def test_the_frame_function_applies_the_photo_options(tiny_model):
    st = Stylizer(tiny_model, device="cpu", backend="eager")
    x = torch.rand(2, 3, 24, 32)
    plain = ClipStylizer(st, ClipOptions(temporal=False))(x)
    torch.testing.assert_close(plain, st.forward(x).clamp(0, 1))
    assert isinstance(ClipStylizer(st, ClipOptions()).stabilizer, FlowStabilizer)  # the default
    assert ClipStylizer(st, ClipOptions(blend=0.0)).stabilizer is None
    half = ClipStylizer(st, ClipOptions(temporal=False, strength=0.0))(x)
    torch.testing.assert_close(half, x, atol=2e-3, rtol=0)  # strength 0: the frame itself
    black = Image.new("L", (64, 48), 0)  # mask black: the photo everywhere
    masked = ClipStylizer(st, ClipOptions(temporal=False, mask=black))(x)
    torch.testing.assert_close(masked, x, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="aspect"):
        ClipStylizer(st, ClipOptions(mask=Image.new("L", (10, 40))))(x)
    tiled = ClipStylizer(st, ClipOptions(temporal=True, tile=64, overlap=16))(
        torch.rand(1, 3, 72, 130)
    )
    assert tiled.shape == (1, 3, 72, 130)


def test_bad_clips_and_outputs_are_one_line(mp4_clip, tiny_model, tmp_path, capsys):
    base = ["--model", str(tiny_model)]
    with pytest.raises(SystemExit) as e:  # a video can't be written as a photo
        main([*base, "--input", str(mp4_clip.path), "--output", str(tmp_path / "o.png")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a video format" in err[0]

    cut = tmp_path / "cut.mp4"
    cut.write_bytes(mp4_clip.path.read_bytes()[:3000])
    out = tmp_path / "cut_out.mp4"
    with pytest.raises(SystemExit) as e:
        main([*base, "--input", str(cut), "--output", str(out), "-q"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {cut}") and "Traceback" not in err[0]
    assert not out.exists() and list(tmp_path.glob(".*cut_out*")) == []  # nothing half-written


def test_a_style_mask_is_refused_for_videos(mp4_clip, tmp_path, capsys):
    net = TransformerNet(channels=(8, 16, 32), num_residual=1, num_styles=2)
    styles = [{"name": "a"}, {"name": "b"}]
    model = save_safetensors(net, tmp_path / "two.safetensors", describe(net, "a", styles=styles))
    mask = tmp_path / "m.png"
    Image.new("L", (33, 21), 255).save(mask)
    out = tmp_path / "o.mp4"
    args = ["--model", str(model), "--style", "a,b", "--style-mask", str(mask)]
    with pytest.raises(SystemExit) as e:
        main([*args, "--input", str(mp4_clip.path), "--output", str(out), "-q"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {mp4_clip.path}: --style-mask paints photos; for a video give one style or a mix"
    ]
    assert not out.exists()
