import pytest
import torch

from fast_style.model_io import (
    ModelFileError,
    describe,
    find_models,
    load_model,
    resolve_model,
    save_safetensors,
)
from fast_style.transformer import TransformerNet


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    net = TransformerNet((8, 16, 16), num_residual=2).eval()
    path = save_safetensors(net, tmp_path / "mine.safetensors", describe(net, "mine", width="tiny"))
    return net, path


def test_safetensors_roundtrip_rebuilds_the_model(saved):
    net, path = saved
    loaded, meta = load_model(path)
    assert meta["style"] == "mine" and meta["channels"] == [8, 16, 16] and meta["num_residual"] == 2
    x = torch.rand(1, 3, 20, 30)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))


def test_float16_export_is_close(saved, tmp_path):
    net, _ = saved
    half = save_safetensors(net, tmp_path / "half.safetensors", describe(net, "h"), dtype="float16")
    loaded, meta = load_model(half)
    assert meta["dtype"] == "float16"
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert (loaded(x) - net(x)).abs().max() < 2e-2


def test_checkpoint_loads_without_unpickling_code(smoke_run):
    net, meta = load_model(smoke_run / "checkpoints" / "last.ckpt")
    assert meta["style"] == "starry_night" and net.config.channels == (16, 32, 64)


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"PK\x03\x04broken zip"])
def test_corrupt_files_are_one_line_errors(tmp_path, content):
    for suffix in (".safetensors", ".ckpt"):
        p = tmp_path / f"bad{suffix}"
        p.write_bytes(content)
        with pytest.raises(ModelFileError) as err:
            load_model(p)
        assert "\n" not in str(err.value) and str(p) in str(err.value)


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    p = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}, "global_step": 3}, p)
    with pytest.raises(ModelFileError, match="not a fast_style model"):
        load_model(p)


def test_metadata_that_lies_about_the_architecture_is_rejected(saved, tmp_path):
    net, _ = saved
    meta = describe(net, "liar")
    meta["channels"] = [32, 64, 128]
    p = tmp_path / "liar.ckpt"
    torch.save(
        {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "fast_style": meta}, p
    )
    with pytest.raises(ModelFileError, match="do not match the architecture"):
        load_model(p)


def test_resolve_bare_style_names(saved, tmp_path):
    _, path = saved
    assert resolve_model("mine", [tmp_path]) == path
    assert resolve_model(str(path), []) == path
    assert find_models([tmp_path]) == [path]
    with pytest.raises(ModelFileError, match="available: mine"):
        resolve_model("nope", [tmp_path])
