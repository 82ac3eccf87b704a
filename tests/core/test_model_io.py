import json

import pytest
import torch

from fast_style.core.model_io import (
    ModelFileError,
    describe,
    find_models,
    load_model,
    resolve_model,
    save_safetensors,
)
from fast_style.core.network import TransformerNet


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


# --- corruption, digests, hostile metadata (reliability issue, items 3-4) -------------------


def _flip_byte(path, offset_from_end: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x40
    path.write_bytes(bytes(data))


def test_bit_flipped_safetensors_is_refused_by_its_digest(saved):
    _, path = saved
    _flip_byte(path)  # inside the last tensor's data: still a well-formed file
    with pytest.raises(ModelFileError, match="content digest mismatch") as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_bit_flipped_checkpoint_is_refused_by_its_digest(saved, tmp_path):
    from fast_style.train.checkpointing import AtomicCheckpointIO

    net, _ = saved
    p = tmp_path / "flip.ckpt"
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    AtomicCheckpointIO().save_checkpoint(
        {"state_dict": state, "fast_style": describe(net, "x"), "global_step": 3}, p
    )
    load_model(p)  # intact: loads
    data = bytearray(p.read_bytes())
    weight = net.state_dict()["residuals.res1.conv2.conv.weight"].numpy().tobytes()
    at = bytes(data).find(weight[:64])  # torch.save stores tensor bytes uncompressed
    assert at > 0
    data[at + 5] ^= 0x40
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="content digest mismatch"):
        load_model(p)


def test_files_without_a_digest_still_load(saved, tmp_path):
    from safetensors.torch import save_file

    net, _ = saved
    p = tmp_path / "old.safetensors"
    meta = {**describe(net, "old"), "dtype": "float32"}
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()},
        str(p),
        metadata={"fast_style": json.dumps(meta)},
    )
    loaded, m = load_model(p)
    assert m["style"] == "old" and loaded.config.num_residual == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(saved, tmp_path, bad):
    net, _ = saved
    with torch.no_grad():
        net.output.conv.bias[0] = bad
    p = save_safetensors(net, tmp_path / "nan.safetensors", describe(net, "nan"))
    with pytest.raises(ModelFileError, match=r"not finite \(NaN or infinity in output\.conv\.bias"):
        load_model(p)


def _lying_safetensors(tmp_path, saved, **claims):
    from safetensors.torch import save_file

    net, _ = saved
    meta = {**describe(net, "liar"), **claims, "dtype": "float32"}
    p = tmp_path / "liar.safetensors"
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(p), metadata={"fast_style": json.dumps(meta)})
    return p


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"channels": [65536, 64, 128]}, "channels must be 3 widths in 1..1024"),
        ({"num_residual": 10**7}, "num_residual must be in 0..64"),
        ({"channels": [8, 16, 16], "num_residual": 3}, "missing"),
        ({"channels": [8, 16, 24]}, "expected"),
        ({"channels": "eight"}, "must be integers"),
        ({"num_residual": 2.5}, "must be integers"),
    ],
)
def test_metadata_claims_are_checked_against_the_header_before_building(
    tmp_path, saved, claims, message
):
    import resource
    import time

    p = _lying_safetensors(tmp_path, saved, **claims)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError, match=message) as err:
        load_model(p)
    assert "\n" not in str(err.value) and str(p) in str(err.value)
    assert time.perf_counter() - t0 < 2.0  # refused at once, nothing built
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 100_000  # KiB


def test_expected_shapes_need_no_memory():
    from fast_style.core.model_io import expected_shapes
    from fast_style.core.network import TransformerConfig

    shapes = expected_shapes(TransformerConfig((1024, 1024, 1024), 64))  # 1.2 G parameters
    assert shapes["residuals.res64.conv2.conv.weight"] == (1024, 1024, 3, 3)
