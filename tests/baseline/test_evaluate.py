"""Evaluation harness: runs on two small images with the smoke model and writes JSON, the
Markdown table and both pictures; its numbers are the training loss's."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from fast_style.baseline import evaluate
from fast_style.core.imaging import load_tensor
from fast_style.core.model_io import load_model
from fast_style.core.resources import photos_dir
from fast_style.loss import LossNetworkWeightsError, VGGFeatures
from fast_style.train.config import ConfigError, validate
from fast_style.train.system import StyleTransferSystem
from tests.conftest import DataSource

PHOTOS = [photos_dir() / name for name in ("kodim05.jpg", "kodim23.jpg")]
TERMS = {"content", "style", "tv", "total", "time_s"}


@pytest.fixture
def two_photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in PHOTOS:
        shutil.copy(p, folder)
    return folder


@pytest.mark.slow
def test_evaluate_writes_json_table_and_pictures(
    smoke_run, data_source: DataSource, two_photos, tmp_path
):
    """On each layer's smoke model and loss network (the judge: a random VGG19)."""
    vgg_weights = data_source.weights_file
    model = smoke_run / "starry_night.safetensors"
    out = tmp_path / "eval"
    argv = [
        "--model", str(model), "--content", str(two_photos), "--out", str(out),
        "--size", "64", "--gatys-steps", "4,2", "--vgg-weights", str(vgg_weights),
        "--judge", "--judge-weights", "random", "--quiet",
    ]  # fmt: skip
    assert evaluate.main(argv) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["gatys_steps"] == [2, 4]
    assert set(results["mean"]) == {"network", "Gatys-2", "Gatys-4"}
    for values in results["mean"].values():
        assert set(values) == TERMS | {"judge_content", "judge_style"}
    per_image = results["per_image"]
    assert [r["image"] for r in per_image] == ["kodim05", "kodim23"]
    assert all(len(r["gatys_trace"]) == 5 for r in per_image)
    assert all(r["Gatys-2"]["time_s"] < r["Gatys-4"]["time_s"] for r in per_image)
    mean_total = sum(r["network"]["total"] for r in per_image) / 2
    assert results["mean"]["network"]["total"] == pytest.approx(mean_total)

    table = (out / "results.md").read_text().splitlines()
    assert table[2].startswith("| method | content | style | TV | total | time (s)")
    assert [row.split(" | ")[0] for row in table[4:]] == ["| network", "| Gatys-2", "| Gatys-4"]
    assert Image.open(out / "objective.png").format == "PNG"
    grid = Image.open(out / "grid.png")  # 2 rows × (content | network | Gatys-4) of 64×43 px
    assert grid.size == (3 * (64 + 2) + 2, 2 * (43 + 2) + 2)
    assert (out / "images" / "kodim23_gatys-2.png").is_file()

    # The network's numbers are exactly what the training criterion says about its output.
    settings = validate(OmegaConf.load(smoke_run / ".hydra" / "config.yaml"))
    settings.loss.weights = str(vgg_weights)
    criterion = StyleTransferSystem(settings).criterion
    net, _ = load_model(model)
    content = load_tensor(two_photos / "kodim23.jpg", long_side=64)
    with torch.no_grad():
        expected = criterion(net(content), content)
    for term in ("content", "style", "tv", "total"):
        assert per_image[1]["network"][term] == float(expected[term])


def test_judge_unavailable_offline_says_so(monkeypatch, tmp_path):
    def offline(network):
        raise LossNetworkWeightsError(
            f"could not fetch torchvision's {network} weights. Offline? …"
        )

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.setattr(evaluate, "fetch_torchvision_weights", offline)
    loss_net = VGGFeatures({"relu1_1"}, weights="random")
    with pytest.raises(ConfigError, match=r"no judge network available: .*--judge-weights FILE"):
        evaluate.build_judge("vgg19", None, loss_net)


def test_judge_must_not_be_the_loss_network(tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save(VGGFeatures({"relu5_1"}, weights="random").layers.state_dict(), path)
    loss_net = VGGFeatures({"relu1_1"}, weights=str(path))
    with pytest.raises(ConfigError, match="the judge is the loss network"):
        evaluate.build_judge("vgg16", str(path), loss_net)
    other = tmp_path / "other.pth"
    torch.save(VGGFeatures({"relu5_1"}, weights="random").layers.state_dict(), other)
    judge = evaluate.build_judge("vgg16", str(other), loss_net)
    assert set(judge.weights.style_layers) == {
        "relu1_1",
        "relu2_1",
        "relu3_1",
        "relu4_1",
        "relu5_1",
    }


def test_markdown_table():
    mean = {
        "network": {"content": 1.0, "style": 2.0, "tv": 0.1, "total": 3.1, "time_s": 0.01},
        "Gatys-100": {"content": 0.5, "style": 1.0, "tv": 0.2, "total": 1.7, "time_s": 5.0},
    }
    lines = evaluate.markdown_table(mean, "caption").splitlines()
    assert lines[0] == "caption"
    assert lines[4] == "| network | 1 | 2 | 0.1 | 3.1 | 0.01 | 1 |"
    assert lines[5] == "| Gatys-100 | 0.5 | 1 | 0.2 | 1.7 | 5 | 500 |"


@pytest.mark.parametrize(
    ("model", "content", "message"),
    [
        ("nope.safetensors", "photos", "no such model file"),
        ("nope.safetensors", "empty", "no images in"),
        ("nope.safetensors", "missing", "image folder not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(model, content, message, two_photos, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    argv = [
        "--model",
        str(tmp_path / model),
        "--content",
        str(tmp_path / content),
        "--out",
        str(out),
    ]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ")
    assert "\n" not in err
    assert message in err
    assert not out.exists()


def test_bad_steps_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--model", "m", "--content", "c", "--gatys-steps", "0,100"])
    assert e.value.code == 2
    assert "positive integers" in capsys.readouterr().err
