import contextlib
import json

import pytest
import torch

from fast_style.core.model_io import (
    SCALE_SUFFIX,
    ModelFileError,
    describe,
    find_models,
    load_model,
    resolve_model,
    save_safetensors,
)
from fast_style.core.network import TransformerNet


@contextlib.contextmanager
def safe_open_meta(path):
    """The ``fast_style`` metadata string of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        yield f.metadata()["fast_style"]


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


def test_int8_files_are_a_quarter_of_the_conv_weights_and_close(saved, tmp_path):
    from safetensors import safe_open

    net, path = saved
    small = save_safetensors(net, tmp_path / "q.safetensors", describe(net, "q"), dtype="int8")
    loaded, meta = load_model(small)
    assert meta["dtype"] == "int8"
    with safe_open(str(small), framework="pt") as f:
        w = f.get_tensor("encoder.conv1.conv.weight")
        scale = f.get_tensor("encoder.conv1.conv.weight" + SCALE_SUFFIX)
        bias = f.get_tensor("encoder.conv1.conv.bias")
    assert w.dtype == torch.int8 and scale.shape == (w.shape[0],) and bias.dtype == torch.float16
    assert int(w.abs().flatten(1).amax(1).min()) == 127  # each channel uses its full range
    conv_weights = sum(v.numel() for v in net.state_dict().values() if v.dim() == 4)
    # 4 bytes a conv weight → 1 (less the scales and their header entries)
    assert small.stat().st_size < path.stat().st_size - 2.5 * conv_weights
    ref = net.encoder.conv1.conv.weight
    err = (loaded.encoder.conv1.conv.weight - ref).abs().flatten(1).amax(1)
    assert bool((err <= ref.abs().flatten(1).amax(1) / 254 + 1e-7).all())  # half a step at most
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert (loaded(x) - net(x)).abs().max() < 3e-2


def test_an_int8_file_without_its_scales_is_refused(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    net, _ = saved
    small = save_safetensors(net, tmp_path / "q.safetensors", describe(net, "q"), dtype="int8")
    with safe_open_meta(small) as meta:
        state = load_file(str(small))
        del state["encoder.conv1.conv.weight" + SCALE_SUFFIX]
        save_file(state, str(tmp_path / "cut.safetensors"), metadata={"fast_style": meta})
    with pytest.raises(ModelFileError, match="without its per-channel scales"):
        load_model(tmp_path / "cut.safetensors")


def test_unknown_dtypes_are_refused(saved, tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        save_safetensors(saved[0], tmp_path / "x.safetensors", {}, dtype="int4")


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


# --- multi-style files (conditional instance norm) -----------------------------------------


def _entry(name: str, **training) -> dict:
    return {
        "name": name,
        "painting": {"title": name.title(), "artist": "A. Painter", "year": "1900", "file": "x"},
        "image": f"{name}.jpg",
        "size": 256,
        "loss": {"content_weight": 1.0, "style_weight": 2.0, "tv_weight": 5.0},
        "training": {"steps": 3, "mode": "joint", **training},
    }


def _multi(names=("wave", "stars"), seed: int = 0) -> TransformerNet:
    torch.manual_seed(seed)
    net = TransformerNet((8, 16, 16), num_residual=1, num_styles=len(names)).eval()
    with torch.no_grad():  # distinct γ/β per style
        for name, p in net.named_parameters():
            if ".norm." in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.3, 0.3)
    return net


@pytest.fixture
def multi_file(tmp_path):
    net = _multi()
    meta = describe(net, "ignored", width="multi_tiny", styles=[_entry("wave"), _entry("stars")])
    return net, save_safetensors(net, tmp_path / "duo.safetensors", meta)


def _one_hot(i: int, n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor([i]), n).float()


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_multi_style_file_round_trips_weights_and_per_style_metadata(multi_file, tmp_path, suffix):
    from fast_style.core.model_io import read_metadata, style_entry, style_index, style_names

    net, path = multi_file
    if suffix == ".ckpt":
        _, meta = load_model(path)
        path = tmp_path / "duo.ckpt"
        state = {f"net.{k}": v for k, v in net.state_dict().items()}
        torch.save({"state_dict": state, "fast_style": meta, "global_step": 3}, path)
    loaded, meta = load_model(path)
    assert loaded.num_styles == 2 and meta["num_styles"] == 2 and meta["style"] == "wave"
    assert style_names(meta) == ["wave", "stars"] == style_names(read_metadata(path))
    assert style_entry(meta, "stars") == _entry("stars") and style_entry(meta) == _entry("wave")
    assert style_index(meta, "stars") == 1 and style_index(meta, None) == 0
    with pytest.raises(ModelFileError, match="no style 'moon' in this model; it has: wave, stars"):
        style_index(meta, "moon")
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        for i in range(2):
            torch.testing.assert_close(loaded(x, _one_hot(i, 2)), net(x, _one_hot(i, 2)))
        torch.testing.assert_close(loaded(x), net(x, _one_hot(0, 2)))  # no style: the first
        assert (loaded(x, _one_hot(0, 2)) - loaded(x, _one_hot(1, 2))).abs().max() > 1e-3


def test_single_style_files_have_one_style_entry(saved):
    from fast_style.core.model_io import read_metadata, style_entry, style_names

    _, path = saved
    meta = read_metadata(path)
    assert style_names(meta) == ["mine"] and style_entry(meta)["name"] == "mine"
    assert style_entry(meta)["training"]["mode"] == "single"


def test_describe_needs_one_entry_per_style():
    with pytest.raises(ValueError, match="2 styles needs as many entries"):
        describe(_multi(), "x", styles=[_entry("only")])


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"num_styles": 10**6}, "num_styles must be in 1..256"),
        ({"num_styles": 3}, "3 styles but 2 style entries"),
        ({"styles": [_entry("a"), _entry("a")]}, "style names repeat"),
        ({"styles": [_entry("a"), {"name": 7}]}, "bad style name"),
        ({"styles": None}, "2 styles but no style entries"),
    ],
)
def test_multi_style_claims_are_checked_before_building(multi_file, tmp_path, claims, message):
    from safetensors.torch import save_file

    net, _ = multi_file
    meta = {**describe(net, "x", styles=[_entry("a"), _entry("b")]), **claims, "dtype": "float32"}
    p = tmp_path / "liar.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(p),
              metadata={"fast_style": json.dumps(meta)})  # fmt: skip
    with pytest.raises(ModelFileError, match=message) as err:
        load_model(p)
    assert "\n" not in str(err.value) and str(p) in str(err.value)


def test_find_style_prefers_a_single_file_then_the_multi_file_holding_the_style(
    multi_file, tmp_path
):
    from fast_style.core.model_io import find_style

    _, duo = multi_file
    assert find_style("stars", [tmp_path]) == (duo, "stars")
    assert find_style("duo", [tmp_path]) == (duo, None)
    assert find_style(str(duo), []) == (duo, None)
    single = save_safetensors(
        TransformerNet((8, 16, 16), 1), tmp_path / "stars.safetensors",
        describe(TransformerNet((8, 16, 16), 1), "stars"),
    )  # fmt: skip
    assert find_style("stars", [tmp_path]) == (single, None)  # a single file of that name wins
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")  # skipped by the lookup
    with pytest.raises(ModelFileError, match=r"no model or style named 'moon'; available: ") as e:
        find_style("moon", [tmp_path])
    assert "duo (wave, stars)" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ModelFileError, match="no such model file"):
        find_style(str(tmp_path / "nope.safetensors"), [tmp_path])


def test_size_of_an_eight_style_file(tmp_path):
    """The issue's size target: eight styles in one file < 1.25x one single-style file. Each
    style adds 2 x (channels of every norm) numbers: 3,200 at full width, 1,600 at half."""
    for channels, extra in (((32, 64, 128), 3200), ((16, 32, 64), 1600)):
        one, eight = TransformerNet(channels), TransformerNet(channels, num_styles=8)
        n1, n8 = (sum(p.numel() for p in n.parameters()) for n in (one, eight))
        assert n8 - n1 == 7 * extra
        a = save_safetensors(one, tmp_path / "one.safetensors", describe(one, "x"), "float16")
        entries = [_entry(f"style_{i}") for i in range(8)]
        b = save_safetensors(
            eight, tmp_path / "eight.safetensors", describe(eight, "x", styles=entries), "float16"
        )
        assert b.stat().st_size < 1.05 * a.stat().st_size  # 1.015x (full), 1.03x (half)
