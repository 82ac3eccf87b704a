import os
import subprocess
import sys
import urllib.error

import pytest
import torch
import torchvision

from fast_style.loss.vgg import WEIGHTS_ENV, LossNetworkWeightsError, VGGFeatures, layer_names
from tests.conftest import DataSource


def test_tap_names_match_torchvision_indices():
    names = layer_names("vgg16")
    assert [names.index(t) for t in ("relu1_2", "relu2_2", "relu3_3", "relu4_3")] == [3, 8, 15, 22]
    assert len(names) == len(torchvision.models.vgg16().features)
    names19 = layer_names("vgg19")
    assert names19.index("relu4_4") == 26 and names19.index("relu5_4") == 35


def test_only_needed_layers_are_built():
    net = VGGFeatures(["relu2_2", "relu1_2"], weights="random")
    assert len(net.layers) == 9 and net.taps == ["relu1_2", "relu2_2"]
    out = net(torch.rand(1, 3, 32, 32))
    assert set(out) == {"relu1_2", "relu2_2"}
    assert out["relu2_2"].shape == (1, 128, 16, 16)
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training


def test_unknown_tap_is_a_clear_error():
    with pytest.raises(ValueError, match="relu9_9"):
        VGGFeatures(["relu9_9"], weights="random")


def test_vgg19_taps():
    out = VGGFeatures(["relu4_4"], arch="vgg19", weights="random")(torch.rand(1, 3, 32, 32))
    assert out["relu4_4"].shape == (1, 512, 4, 4)


def test_a_weights_file_matches_torchvision_vgg16(data_source: DataSource):
    """Our truncated extractor equals torchvision's own VGG16 loaded with the same file (the
    random-weight file, and the real fp16 weights)."""
    vgg_weights = data_source.weights_file
    feats = VGGFeatures(["relu4_3"], weights=vgg_weights)
    ref = torchvision.models.vgg16()
    sd = {k: v.float() for k, v in torch.load(vgg_weights, weights_only=True).items()}
    ref.load_state_dict(sd, strict=False)
    x = torch.rand(1, 3, 48, 48)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.features[:23]((x - mean) / std)
        got = feats(x)["relu4_3"]
    torch.testing.assert_close(got, expected)
    assert feats.weights_source == str(vgg_weights)


def test_env_var_points_at_weights(random_vgg_file, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(random_vgg_file))
    net = VGGFeatures(["relu1_2"])
    assert net.weights_source == str(random_vgg_file)
    expected = torch.load(random_vgg_file, weights_only=True)["features.2.weight"].float()
    torch.testing.assert_close(net.layers[2].weight, expected)  # and its weights are loaded


def _one_line_error(weights) -> str:
    with pytest.raises(LossNetworkWeightsError) as err:
        VGGFeatures(["relu1_2"], weights=weights)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def test_wrong_weight_files_are_one_line_errors(tmp_path):
    missing = tmp_path / "nope.pth"
    assert _one_line_error(missing) == f"VGG weights file not found: {missing}"
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    assert _one_line_error(other) == (
        f"{other}: not vgg16 features weights; missing ['0.weight', '0.bias', '2.weight', "
        "'2.bias'] (found 0 matching keys)"
    )
    shapes = tmp_path / "shapes.pth"
    torch.save(
        {
            "features.0.weight": torch.zeros(8, 3, 3, 3),
            "features.0.bias": torch.zeros(8),
            "features.2.weight": torch.zeros(64, 64, 3, 3),
            "features.2.bias": torch.zeros(64),
        },
        shapes,
    )
    assert _one_line_error(shapes) == (
        f"{shapes}: 0.weight has shape (8, 3, 3, 3), vgg16 needs (64, 3, 3, 3)"
    )
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint")
    assert _one_line_error(garbage).startswith(f"{garbage}: not a loadable state_dict (")
    tensors = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], tensors)
    assert _one_line_error(tensors) == (f"{tensors}: expected a dict of tensors (a VGG state_dict)")


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    bad = tmp_path / "evil.pth"
    torch.save({"features.0.weight": Evil()}, bad)
    msg = _one_line_error(bad)
    assert msg.startswith(f"{bad}: not a loadable state_dict (") and "system" in msg, msg
    assert not (tmp_path / "pwned").exists()


def test_offline_without_a_file_says_how_to_supply_one(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(LossNetworkWeightsError) as err:
        VGGFeatures(["relu1_2"])
    msg = str(err.value)
    assert "\n" not in msg
    assert "loss.weights=PATH" in msg and WEIGHTS_ENV in msg and "Offline" in msg


def test_nothing_is_downloaded_at_import_time(tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "th")}
    code = "import fast_style.train.run, fast_style.loss, fast_style.train.system"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert not (tmp_path / "th").exists()
