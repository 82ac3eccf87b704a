"""Mobile exports (ExecuTorch, LiteRT, CoreML): each runs in its Python runtime where there is
one and matches PyTorch at two sizes; CoreML (no runtime on Linux) is converted and its model
specification checked. Each runtime's tests skip when its package is not installed: they run in
an environment with ``pip install 'fast_style[mobile]'`` (docs/mobile.md).

A one-style tiny network and a three-style one with the lightweight blocks (depthwise-separable
residuals, 5×5 / 3×3 first and last kernels), so that nothing here depends on specific layers.
Tolerance 1e-4 (max abs difference, outputs in [0, 1]), as for ONNX Runtime; measured
differences are about 1e-5 (docs/mobile.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fast_style.core.model_io import describe, save_safetensors
from fast_style.core.network import ConditionalInstanceNorm, TransformerNet
from fast_style.infer.export import main
from fast_style.infer.export_mobile import (
    MobileOptions,
    export_program,
    missing_runtime,
    parse_size,
)
from tests._stylize_helpers import save_tiny, tiny_net

ATOL = 1e-4
DYNAMIC_SIZES = [(36, 52), (64, 96)]  # multiples of 4: a dynamic export's sizes
FIXED_SIZES = [(37, 50), (64, 96)]  # a fixed-size export takes any H, W ≥ 8
STYLES = ["starry", "wave", "scream"]
MIX = torch.tensor([[0.2, 0.5, 0.3]])


def multi_net(seed: int = 5) -> TransformerNet:
    """Tiny random 3-style network with the lightweight blocks, γ/β of both signs."""
    torch.manual_seed(seed)
    net = TransformerNet((8, 16, 16), 1, num_styles=3, block="dwsep", kernels=(5, 3)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ConditionalInstanceNorm):
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny.safetensors")


@pytest.fixture(scope="module")
def multi_file(tmp_path_factory) -> Path:
    net = multi_net()
    meta = describe(net, "multi", width="tiny", styles=[{"name": n} for n in STYLES])
    return save_safetensors(net, tmp_path_factory.mktemp("models") / "multi.safetensors", meta)


def _reference(net: TransformerNet, x: torch.Tensor, style: torch.Tensor | None = None):
    with torch.no_grad():
        return net(x, style).numpy()


def _needs(fmt: str) -> None:
    reason = missing_runtime(fmt)
    if reason:
        pytest.skip(reason)


def _export(*argv: str) -> None:
    assert main(list(argv)) == 0


# --- without any runtime: the command line and the exported program ---------------------------


def test_parse_size():
    assert parse_size("512x384") == (512, 384)
    assert parse_size("40,48") == (40, 48)
    assert parse_size("64") == (64, 64)
    for bad in ["", "x", "4x64", "64x", "1x2x3", "axb"]:
        with pytest.raises(ValueError, match="--size"):
            parse_size(bad)


def test_mobile_option_errors_are_one_line_and_exit_2(model_file, multi_file, tmp_path, capsys):
    cases = [
        [str(model_file), "m.tflite"],  # tflite without --size
        [str(model_file), "m.pte", "--size", "4x4"],  # too small
        [str(model_file), "m.pte", "--size", "big"],
        [str(model_file), "m.pte", "--max-size", "8"],
        [str(model_file), "m.onnx", "--size", "64x64"],  # not for onnx
        [str(model_file), "m.pt", "--style", "tiny"],  # not for torchscript
        [str(multi_file), "m.pte", "--style", "no_such_style"],
    ]
    for model, out, *rest in cases:
        with pytest.raises(SystemExit) as e:
            main(["--model", model, "--output", str(tmp_path / out), *rest])
        assert e.value.code == 2, (out, rest)
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["executorch", "tflite", "coreml"])
def test_a_missing_runtime_is_one_line_naming_the_extra(
    fmt, model_file, tmp_path, monkeypatch, capsys
):
    module = {"executorch": "executorch.exir", "tflite": "litert_torch", "coreml": "coremltools"}
    monkeypatch.setitem(sys.modules, module[fmt], None)  # import fails as if not installed
    out = tmp_path / f"m.{fmt}"
    argv = ["--model", str(model_file), "--format", fmt, "--output", str(out), "--size", "64"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {fmt} export needs") and "\n" not in err
    assert "pip install 'fast_style[mobile]'" in err
    assert not out.exists()


@pytest.mark.parametrize("style", ["input", "baked"])
def test_exported_program_matches_pytorch_at_two_sizes(style):
    """The ``torch.export`` program that ExecuTorch and CoreML convert: dynamic H, W
    (multiples of 4), with the style as an input or baked in; checked here in PyTorch."""
    net = multi_net()
    opts = MobileOptions(style=None if style == "input" else 2, max_size=256)
    module = export_program(net, opts).module()
    for h, w in DYNAMIC_SIZES:
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            y = module(x, MIX) if style == "input" else module(x)
        ref = _reference(net, x, MIX if style == "input" else torch.eye(3)[2:])
        np.testing.assert_allclose(y.numpy(), ref, atol=1e-5, rtol=0)


def test_exported_program_of_a_one_style_net_has_one_input():
    program = export_program(tiny_net(), MobileOptions(size=(37, 50)))
    specs = program.graph_signature.input_specs
    assert [s.arg.name for s in specs if s.kind.name == "USER_INPUT"] == ["image"]


# --- ExecuTorch (XNNPACK): the .pte in ExecuTorch's Python runtime ----------------------------


def _executorch_method(path: Path):
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(path))
    meta = json.loads(program.load_method("fast_style").execute([])[0])
    return program.load_method("forward"), meta


@pytest.mark.slow
def test_executorch_dynamic_export_matches_pytorch_at_two_sizes(model_file, tmp_path):
    _needs("executorch")
    out = tmp_path / "tiny.pte"
    _export("--model", str(model_file), "--output", str(out), "--max-size", "256")
    method, meta = _executorch_method(out)
    assert meta["style"] == "tiny" and meta["mobile"]["size"] == {
        "min": 8,
        "max": 256,
        "multiple": 4,
    }
    assert meta["mobile"]["inputs"] == {"image": [1, 3, "H", "W"]}
    assert method.metadata.num_inputs() == 1
    assert tuple(method.metadata.input_tensor_meta(0).sizes()) == (1, 3, 256, 256)  # planned for
    for h, w in DYNAMIC_SIZES:
        x = torch.rand(1, 3, h, w)
        y = method.execute([x])[0]
        assert tuple(y.shape) == (1, 3, h, w)
        np.testing.assert_allclose(y.numpy(), _reference(tiny_net(), x), atol=ATOL, rtol=0)


@pytest.mark.slow
def test_executorch_fixed_size_multistyle_export_takes_style_weights(multi_file, tmp_path):
    _needs("executorch")
    out = tmp_path / "multi.pte"
    _export("--model", str(multi_file), "--output", str(out), "--size", "37x50")
    method, meta = _executorch_method(out)
    assert meta["mobile"]["inputs"]["style"] == [1, 3] and meta["mobile"]["baked_style"] is None
    x = torch.rand(1, 3, 37, 50)
    for style in (MIX, torch.eye(3)[1:2]):  # one file, every style and mix
        y = method.execute([x, style])[0]
        np.testing.assert_allclose(y.numpy(), _reference(multi_net(), x, style), atol=ATOL, rtol=0)


# --- LiteRT (TFLite): the .tflite in ai-edge-litert's Interpreter ----------------------------


def _run_tflite(path: Path, **inputs: torch.Tensor) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": sorted(inputs), "outputs": ["stylized"]}
    }
    runner = interpreter.get_signature_runner()
    return runner(**{k: v.numpy() for k, v in inputs.items()})["stylized"]


@pytest.mark.slow
def test_tflite_export_matches_pytorch_at_two_sizes(model_file, tmp_path):
    _needs("tflite")
    from fast_style.infer.export_mobile import read_tflite_metadata

    for h, w in FIXED_SIZES:  # a fixed size per file: one export per size
        out = tmp_path / f"tiny_{h}x{w}.tflite"
        _export("--model", str(model_file), "--output", str(out), "--size", f"{h}x{w}")
        meta = read_tflite_metadata(out.read_bytes())
        assert meta and meta["style"] == "tiny" and meta["mobile"]["size"] == {"fixed": [h, w]}
        x = torch.rand(1, 3, h, w)
        y = _run_tflite(out, image=x)
        assert y.shape == (1, 3, h, w)
        np.testing.assert_allclose(y, _reference(tiny_net(), x), atol=ATOL, rtol=0)


@pytest.mark.slow
def test_tflite_multistyle_export_bakes_one_style(multi_file, tmp_path):
    _needs("tflite")
    out = tmp_path / "wave.tflite"
    _export("--model", str(multi_file), "--output", str(out), "--size", "40x48", "--style", "wave")
    x = torch.rand(1, 3, 40, 48)
    y = _run_tflite(out, image=x)  # no style input
    np.testing.assert_allclose(y, _reference(multi_net(), x, torch.eye(3)[1:2]), atol=ATOL, rtol=0)


# --- CoreML: converted and its specification checked (it runs on Apple devices only) ----------


def _coreml_spec(path: Path):
    import coremltools as ct

    assert path.is_dir() and (path / "Manifest.json").is_file()
    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def _shape_ranges(feature) -> list[tuple[int, int]]:
    ranges = feature.type.multiArrayType.shapeRange.sizeRanges
    return [(r.lowerBound, r.upperBound) for r in ranges]


@pytest.mark.slow
def test_coreml_dynamic_export_has_flexible_sizes_and_metadata(model_file, tmp_path):
    _needs("coreml")
    out = tmp_path / "tiny.mlpackage"
    _export("--model", str(model_file), "--output", str(out), "--max-size", "512")
    spec = _coreml_spec(out)
    assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion >= 6
    assert [i.name for i in spec.description.input] == ["image"]
    assert [o.name for o in spec.description.output] == ["stylized"]
    assert _shape_ranges(spec.description.input[0]) == [(1, 1), (3, 3), (8, 512), (8, 512)]
    meta = json.loads(spec.description.metadata.userDefined["fast_style"])
    assert meta["style"] == "tiny" and meta["mobile"]["size"]["multiple"] == 4
    assert "multiples of 4" in spec.description.input[0].shortDescription
    blocks = [
        b for f in spec.mlProgram.functions.values() for b in f.block_specializations.values()
    ]
    ops = {op.type for b in blocks for op in b.operations}
    assert {"conv", "pad", "tanh"} <= ops and not ops & {"upsample_nearest_neighbor", "resize"}
    _export("--model", str(model_file), "--output", str(out), "--size", "40x48")  # replaces it
    assert _shape_ranges(_coreml_spec(out).description.input[0]) == []


@pytest.mark.slow
def test_coreml_multistyle_export_takes_style_weights(multi_file, tmp_path):
    _needs("coreml")
    out = tmp_path / "multi.mlpackage"
    _export("--model", str(multi_file), "--output", str(out), "--size", "40x48")
    spec = _coreml_spec(out)
    inputs = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    assert inputs == {"image": [1, 3, 40, 48], "style": [1, 3]}
    meta = json.loads(spec.description.metadata.userDefined["fast_style"])
    assert [s["name"] for s in meta["styles"]] == STYLES
