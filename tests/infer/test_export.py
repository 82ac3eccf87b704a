"""ONNX and TorchScript export: dynamic H/W, equivalence with PyTorch, converter-friendly ops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fast_style.core.model_io import load_model
from fast_style.core.network import TransformerNet
from fast_style.infer.export import CONVERTER_SAFE_OPS, DeployNet, main
from tests._stylize_helpers import save_tiny, tiny_net
from tests.conftest import REPO

SIZES = [(1, 3, 37, 50), (2, 3, 64, 96)]  # two sizes, one odd, one batched


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny.safetensors")


def _reference(x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return tiny_net()(x).numpy()


def test_exportable_net_equals_the_network():
    net = tiny_net()
    for shape in [*SIZES, (1, 3, 8, 9)]:
        x = torch.rand(shape)
        with torch.no_grad():
            torch.testing.assert_close(DeployNet(net)(x), net(x))


def test_onnx_export_matches_pytorch_at_two_sizes(model_file, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "tiny.onnx"
    assert main(["--model", str(model_file), "--format", "onnx", "--output", str(out)]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["fast_style"])["style"] == "tiny"
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims][1] == 3
    assert all(d.dim_param for i, d in enumerate(dims) if i != 1)  # batch, H, W symbolic
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in SIZES:
        x = torch.rand(shape)
        y = session.run(None, {"image": x.numpy()})[0]
        assert y.shape == shape
        np.testing.assert_allclose(y, _reference(x), atol=1e-4, rtol=0)


def test_onnx_graph_has_no_resize_or_upsample(model_file, tmp_path):
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    main(["--model", str(model_file), "--output", str(out)])  # format from the extension
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert not ops & {"Resize", "Upsample"}
    assert {"Conv", "Pad"} <= ops <= CONVERTER_SAFE_OPS, ops - CONVERTER_SAFE_OPS


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_matches_pytorch_at_two_sizes(model_file, tmp_path):
    out = tmp_path / "tiny.pt"
    assert main(["--model", str(model_file), "--format", "torchscript", "--output", str(out)]) == 0
    files = {"fast_style.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=files)
    assert json.loads(files["fast_style.json"])["channels"] == [8, 16, 16]
    for shape in SIZES:
        x = torch.rand(shape)
        with torch.no_grad():
            np.testing.assert_allclose(scripted(x).numpy(), _reference(x), atol=1e-5, rtol=0)


def test_full_width_network_exports(tmp_path):
    """The real architecture (5 residual blocks, 32/64/128) goes through the ONNX exporter."""
    ort = pytest.importorskip("onnxruntime")
    from fast_style.infer.export import to_onnx_bytes

    torch.manual_seed(1)
    net = TransformerNet().eval()
    session = ort.InferenceSession(to_onnx_bytes(net), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 45, 31)
    with torch.no_grad():
        ref = net(x).numpy()
    np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], ref, atol=1e-4, rtol=0)


def test_safetensors_export_rewrites_the_model_file_in_int8(model_file, tmp_path, capsys):
    out = tmp_path / "small.safetensors"
    assert main(["--model", str(model_file), "--output", str(out), "--dtype", "int8"]) == 0
    assert "int8" in capsys.readouterr().out
    net, meta = load_model(model_file)
    small, small_meta = load_model(out)
    assert small_meta["dtype"] == "int8" and small_meta["style"] == meta["style"]
    assert out.stat().st_size < 0.4 * model_file.stat().st_size
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert (small(x) - net(x)).abs().max() < 5e-2
    with pytest.raises(SystemExit) as e:  # --dtype is for model files only
        main(["--model", str(model_file), "--output", str(tmp_path / "x.onnx"), "--dtype", "int8"])
    assert e.value.code == 2 and "--dtype applies to safetensors" in capsys.readouterr().err


def test_export_errors_are_one_line_and_exit_2(model_file, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nonsense")
    cases = [
        ["--model", str(bad), "--output", str(tmp_path / "x.onnx")],
        ["--model", "no_such_style", "--output", str(tmp_path / "x.onnx")],
        ["--model", str(model_file), "--output", str(tmp_path / "x.bin")],  # unknown format
        ["--model", str(model_file), "--format", "onnx", "--output", str(model_file)],
    ]
    for argv in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err
    assert model_file.stat().st_size > 1000  # the model was not overwritten


@pytest.mark.slow
def test_bench_script_runs_and_writes_json(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench_stylize.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    from fast_style.infer.backends.fused import fused_available

    backends = {"deploy", "onnxruntime"} | ({"fused"} if fused_available() else set())
    argv = ["--sizes", "256²", "--widths", "slim", "--backends", ",".join(sorted(backends))]
    argv += ["--wait-idle", "0.05", "--repeats", "1", "--json", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {r["backend"] for r in rows} == backends
    assert all(r["median_s"] > 0 for r in rows)
    assert result["env"]["cold_runs"] is False and "malloc_tuned" in result["env"]
    assert "| slim | onnxruntime |" in capsys.readouterr().out


def test_bench_variants_leave_the_given_net_unchanged():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench_stylize.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    net = TransformerNet((8, 16, 16), 1).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for backend in ("bf16w", "bf16w-plain", "channels_last"):  # cast / relayout in place
        bench.make_runner(backend, net, torch.device("cpu"), 1)
    after = net.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and after[k].is_contiguous(), k
        assert torch.equal(after[k], v), k
