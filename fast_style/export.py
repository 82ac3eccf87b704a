"""Export a trained transform network to ONNX or TorchScript, with dynamic batch, H and W.

``python -m fast_style.export --model MODEL --format onnx|torchscript --output FILE``

The exported graph is ``ExportableNet``: the same layers as ``TransformerNet`` with its
pad-to-a-multiple-of-4 written branch-free (``(-h) % 4``), so the pad amounts and the final crop
are computed from the input's shape inside the graph instead of being frozen at trace time.
Upsampling is ``Upsample2x`` (reshape/expand), so there is no ``Resize`` with a ``scale_factor``
for converters (TensorRT, CoreML, TFLite, OpenVINO) to trip on.

Exported models take RGB float32 ``(B, 3, H, W)`` in [0, 1] with H, W ≥ 8 and return the same
shape in [0, 1] (input name ``image``, output name ``stylized``).
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fast_style.transformer import SIZE_MULTIPLE, TransformerNet

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "stylized"


class ExportableNet(nn.Module):
    """``TransformerNet`` with shape-generic padding: (B, 3, H ≥ 8, W ≥ 8) in [0, 1] → same."""

    def __init__(self, net: TransformerNet):
        super().__init__()
        self.encoder, self.residuals, self.decoder = net.encoder, net.residuals, net.decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        # Same padding as imaging.pad_to_multiple for H, W ≥ 8 (reflect, bottom/right), without
        # Python branches on the shape so tracing/scripting keeps H and W symbolic.
        x = F.pad(x, (0, (-w) % SIZE_MULTIPLE, 0, (-h) % SIZE_MULTIPLE), mode="reflect")
        y = self.decoder(self.residuals(self.encoder(x)))
        y = 0.5 * (torch.tanh(y) + 1.0)  # TransformerNet's scaled tanh
        return y[:, :, :h, :w]


def _legacy_onnx_kwargs() -> dict:
    """Prefer the TorchScript-based exporter where it exists (fast, opset 17, plain ops);
    torch ≥ 2.9 defaults to the dynamo exporter, older versions have no ``dynamo`` argument."""
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        return {"dynamo": False}
    return {}


def to_onnx_bytes(net: TransformerNet, opset: int = ONNX_OPSET) -> bytes:
    """Serialise ``net`` as an ONNX model (dynamic batch, height, width)."""
    module = ExportableNet(net.float().cpu().eval()).eval()
    example = torch.rand(1, 3, 64, 64)
    axes = {0: "batch", 2: "height", 3: "width"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        try:
            torch.onnx.export(
                module, (example,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes}, opset_version=opset,
                **_legacy_onnx_kwargs(),
            )
            return buf.getvalue()
        except (ImportError, RuntimeError, TypeError):
            if not _legacy_onnx_kwargs():
                raise
        # The legacy exporter has been removed from this torch: use torch.export (dynamo).
        prog = torch.onnx.export(
            module, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: "batch", 2: "height", 3: "width"}}, opset_version=18,
            dynamo=True, verbose=False,
        )
        return prog.model_proto.SerializeToString()


def export_onnx(net: TransformerNet, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``net`` as ONNX to ``path``; ``meta`` goes into the model's metadata_props."""
    import onnx

    model = onnx.load_from_string(to_onnx_bytes(net))
    if meta:
        entry = model.metadata_props.add()
        entry.key, entry.value = "fast_style", json.dumps(meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def to_torchscript(net: TransformerNet) -> torch.jit.ScriptModule:
    """Script (not trace) ``ExportableNet`` so that any H, W works."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        return torch.jit.script(ExportableNet(net.float().cpu().eval()).eval())


def export_torchscript(
    net: TransformerNet, path: str | os.PathLike, meta: dict | None = None
) -> Path:
    """Write a TorchScript archive; ``meta`` is stored as the extra file ``fast_style.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"fast_style.json": json.dumps(meta or {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(to_torchscript(net), str(path), _extra_files=extra)
    return path


def export(
    net: TransformerNet, fmt: str, path: str | os.PathLike, meta: dict | None = None
) -> Path:
    """Export in ``fmt`` (``onnx`` or ``torchscript``)."""
    if fmt == "onnx":
        return export_onnx(net, path, meta)
    if fmt == "torchscript":
        return export_torchscript(net, path, meta)
    raise ValueError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fast_style.export",
        description="Export a fast_style model to ONNX or TorchScript (dynamic batch, H, W).",
    )
    p.add_argument(
        "--model", required=True, help=".ckpt, .safetensors or a style name in checkpoints/"
    )
    p.add_argument(
        "--format", choices=FORMATS, default=None,
        help="default: from the output's extension (.onnx → onnx, .pt/.ts → torchscript)",
    )
    p.add_argument("--output", required=True, help="file to write")
    p.add_argument("--models-dir", action="append", default=[], help="extra folder for style names")
    return p


def _format_for(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.suffix.lower() in (".pt", ".ts", ".torchscript", ".jit"):
        return "torchscript"
    raise ValueError(f"{path}: cannot tell the format from the extension; pass --format")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns 0, or exits with status 2 and one line on bad input."""
    from fast_style.inference import DEFAULT_MODEL_DIRS
    from fast_style.model_io import ModelFileError, load_model, resolve_model

    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.output)
    try:
        fmt = _format_for(out, args.format)
        path = resolve_model(args.model, [*args.models_dir, *DEFAULT_MODEL_DIRS])
        if out.resolve() == path.resolve():
            raise ValueError(f"{out}: refusing to overwrite the model file")
        net, meta = load_model(path, "cpu")
    except (ModelFileError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    try:
        import onnx  # noqa: F401
    except ImportError:
        if fmt == "onnx":
            parser.exit(2, "error: ONNX export needs: pip install 'fast_style[export]'\n")
    written = export(net, fmt, out, meta)
    mb = written.stat().st_size / 1e6
    print(f"wrote {written} ({fmt}, style {meta.get('style')!r}, {mb:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
