"""Gatys et al. optimisation: it lowers the loss, and its loss *is* the training loss."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from fast_style.baseline import gatys
from fast_style.baseline.gatys import GatysOptions, load_loss, load_style, optimise
from fast_style.core.imaging import load_tensor
from fast_style.core.resources import config_dir, default_photo
from fast_style.loss import PerceptualLoss
from fast_style.loss.criterion import style_criterion
from fast_style.train.config import ConfigError, validate
from fast_style.train.system import StyleTransferSystem
from tests.conftest import DataSource

PHOTO = default_photo()


@pytest.fixture(scope="module")
def small_criterion(data_source: DataSource) -> PerceptualLoss:
    """starry_night's loss with its Gram targets at 64 px, on each layer's loss network."""
    style = dataclasses.replace(load_style("starry_night"), size=64)
    crit, _ = style_criterion(style, load_loss("vgg16", str(data_source.weights_file)))
    return crit


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_gatys_lowers_the_total_loss(small_criterion, optimizer):
    content = load_tensor(PHOTO, long_side=64)
    noise = torch.rand(content.shape, generator=torch.Generator().manual_seed(0))
    result = optimise(small_criterion, content, noise, GatysOptions(steps=6, optimizer=optimizer))
    trace = result.trace
    assert [e["step"] for e in trace] == list(range(7))
    assert trace[-1]["total"] < 0.7 * trace[0]["total"]
    assert trace[-1]["style"] < trace[0]["style"]
    assert all(a["time_s"] <= b["time_s"] for a, b in itertools.pairwise(trace))
    assert result.evaluations == 6  # one loss evaluation per iteration, for both optimizers
    assert result.image.shape == content.shape
    assert result.image.min() >= 0
    assert result.image.max() <= 1


def test_gatys_and_training_compute_identical_losses(data_source: DataSource, monkeypatch):
    """The Gatys objective, built from the style name the way the CLI builds it, equals the
    training criterion of a composed training config on the same images, bit for bit (with the
    random-weight VGG16 file, and with the real weights)."""
    vgg_weights = data_source.weights_file
    overrides = ["style=starry_night", "experiment=smoke", f"loss.weights={vgg_weights}"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        settings = validate(compose("train", overrides=overrides))
    system = StyleTransferSystem(settings)
    content = load_tensor(PHOTO, long_side=64).contiguous()
    with torch.no_grad():
        output = system.net(content)  # what training_step feeds the criterion
        expected = {k: float(v) for k, v in system.criterion(output, content).items()}

    style = load_style("starry_night")
    assert dataclasses.replace(style, size=settings.style.size) == settings.style
    crit, _ = style_criterion(
        dataclasses.replace(style, size=settings.style.size), load_loss("vgg16", str(vgg_weights))
    )
    assert type(crit) is type(system.criterion) is PerceptualLoss
    assert (
        crit.network.weights_source == system.criterion.network.weights_source == str(vgg_weights)
    )
    calls = []
    forward = PerceptualLoss.forward
    monkeypatch.setattr(
        PerceptualLoss, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k)
    )
    result = optimise(crit, content, output, GatysOptions(steps=1))
    got = {k: v for k, v in result.trace[0].items() if k not in ("step", "time_s")}
    assert got == expected  # every term, per layer too, identical
    assert calls  # the Gatys objective went through PerceptualLoss.forward


def test_cli_writes_image_trace_intermediates_and_tensorboard(random_vgg_file, tmp_path, capsys):
    out = tmp_path / "out" / "gatys.png"
    argv = [
        "--content", str(PHOTO), "--style", "starry_night", "--output", str(out),
        "--size", "48", "--steps", "2", "--multiscale", "2", "--save-every", "2",
        "--preserve-color", "--style-scale", "1.5", "--tv-weight", "0",
        "--vgg-weights", str(random_vgg_file), "--tensorboard", str(tmp_path / "tb"), "--quiet",
    ]  # fmt: skip
    assert gatys.main(argv) == 0
    assert Image.open(out).size == (48, 32)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["sizes"] == [32, 48]
    assert report["iterations"] == 4 == len(report["trace"]) - 1
    assert report["style"]["size"] == 72
    assert report["style"]["tv_weight"] == 0
    assert report["final"]["tv"] == 0
    assert report["wall_time_s"] > 0
    assert report["preserve_color"] == "luminance"
    times = [e["time_s"] for e in report["trace"]]  # levels chained: time keeps increasing
    assert all(a < b for a, b in itertools.pairwise(times))
    assert sorted(p.name for p in out.parent.glob("gatys_*.png")) == [
        "gatys_00002.png",
        "gatys_00004.png",
    ]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert "saved" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        (
            "--style",
            "starry_nite",
            "is neither a style name, a YAML file nor an image (did you mean 'starry_night'?)",
        ),
        ("--content", "missing.jpg", "no such file"),
        ("--output", "{tmp}/out.xyz", "unknown image format"),
        ("--style-layers", "relu9_9", "not a vgg16 layer"),
        ("--steps", "0", "--steps must be at least 1"),
        ("--device", "tpu", "unknown device 'tpu' (use auto, cpu, cuda or cuda:N)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(flag, value, message, tmp_path, capsys):
    args = {
        "--content": str(PHOTO),
        "--style": "starry_night",
        "--output": str(tmp_path / "o.png"),
        "--steps": "1",
        "--vgg-weights": "random",
        flag: value.format(tmp=tmp_path),
    }
    assert gatys.main([x for kv in args.items() for x in kv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ")
    assert "\n" not in err
    assert message in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_style_config_parsing(tmp_path):
    assert load_style("the_scream").image.endswith("the_scream.jpg")
    path = tmp_path / "painting.jpg"
    Image.new("RGB", (8, 8)).save(path)
    custom = load_style(str(path))
    assert (custom.name, custom.image) == ("painting", str(path))
    assert gatys.parse_layers("relu1_2, relu2_2:0.5") == {"relu1_2": 1.0, "relu2_2": 0.5}
    with pytest.raises(ConfigError, match="bad layer weight"):
        gatys.parse_layers("relu1_2:x")
    assert gatys.pyramid(256, 3) == [64, 128, 256]
    assert gatys.pyramid(40, 3) == [32, 40]


def test_progress_bar_shows_the_loss_terms_and_can_be_hidden(capsys):
    bar = gatys.Progress(40, "gatys")
    for _ in range(40):
        bar.update({"content": 1.0, "style": 2.0, "tv": 0.5, "total": 3.5})
    bar.close()
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("gatys: 100%") and "40/40" in last
    assert last.endswith("content=1, style=2, tv=0.5, total=3.5]")
    hidden = gatys.Progress(5, "gatys", enabled=False)
    hidden.update({"total": 1.0})
    hidden.close()
    assert capsys.readouterr().err == ""
