"""Export a trained transform network to ONNX or TorchScript, with dynamic batch, H and W, or
to the mobile runtimes ExecuTorch, LiteRT (TFLite) and CoreML (``fast_style.infer.export_mobile``).

``python -m fast_style.export --model MODEL --format onnx|torchscript --output FILE``
``python -m fast_style.export --model MODEL --format executorch|tflite|coreml --output FILE
[--size HxW] [--max-size N] [--style NAME]``

The exported graph is ``DeployNet``: ``TransformerNet`` re-parameterised for speed, with the
same outputs. Its pad to a multiple of 4 is branch-free (``(-h) % 4``), so pad amounts and the
final crop are computed from the input's shape inside the graph instead of being frozen at trace
time. Its ops are Pad, Conv, InstanceNormalization, Relu, Add, Mul, Tanh, Slice, Concat,
Reshape and shape arithmetic (Shape, Gather, Unsqueeze, …; ``CONVERTER_SAFE_OPS``): no
``Resize``/``Upsample`` with a ``scale_factor`` for converters (TensorRT, CoreML, TFLite,
OpenVINO) to trip on.

Exported models take RGB float32 ``(B, 3, H, W)`` in [0, 1] with H, W ≥ 8 and return the same
shape in [0, 1] (input name ``image``, output name ``stylized``).

Multi-style models (conditional instance norm, S styles) take a second input ``style``: float32
(B, S) weights, one row per image (one-hot for one style, convex weights for a mix, used as
given: normalise rows to sum 1), so one exported file serves every style and every mix. The γ/β
mix is a ``MatMul`` of the style rows with each layer's (S, C) table, so the ONNX graph adds
only ``MatMul`` to the ops above. Per-pixel style maps (a painted mask) are not an ONNX input
(they would need ``Einsum`` and per-layer pooling); the TorchScript export takes weights or
maps: ``module(image, style)``, with ``style`` None, (B, S) or (B, S, H, W). One-style models
export exactly as before: one input.
"""

from __future__ import annotations

import argparse
import copy
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

from fast_style.core.fileio import atomic_write
from fast_style.core.model_io import DTYPES
from fast_style.core.network import (
    ConditionalInstanceNorm,
    Style,
    TransformerNet,
    named_norms,
    style_affine,
)
from fast_style.infer.deploy import NORM_INPUT_NAME, STYLE_INPUT_NAME, DeployNet, FrozenNormNet
from fast_style.infer.export_mobile import (
    DEFAULT_MAX_SIZE,
    DYNAMIC_FORMATS,
    EXTENSIONS,
    MOBILE_FORMATS,
    MobileOptions,
    describe_sizes,
    disk_size,
    export_mobile,
    missing_runtime,
    parse_size,
)

FORMATS = ("onnx", "torchscript", "safetensors", *MOBILE_FORMATS)
# Every op the exported graph may contain (checked by the tests): plain tensor ops and shape
# arithmetic that ONNX converters handle. MatMul (multi-style models: style weights (B, S) times
# a layer's (S, C) γ/β table) is a core op of TensorRT, CoreML, TFLite and OpenVINO alike.
_SAFE_OPS = """Pad Conv InstanceNormalization Relu Add Sub Mul Neg Mod Tanh Slice Concat Reshape
    Transpose Unsqueeze Shape Gather Constant ConstantOfShape Cast Identity MatMul"""
CONVERTER_SAFE_OPS = frozenset(_SAFE_OPS.split())
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "stylized"


def _legacy_onnx_kwargs() -> dict:
    """Prefer the TorchScript-based exporter where it exists (fast, opset 17, plain ops);
    torch ≥ 2.9 defaults to the dynamo exporter, older versions have no ``dynamo`` argument."""
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        return {"dynamo": False}
    return {}


class _ExportConditionalNorm(nn.Module):
    """``ConditionalInstanceNorm`` for the ONNX exporter: the same function, with the instance
    norm's unit scale and zero shift explicit. The TorchScript-based exporter needs a norm's
    channel count to export it without a scale, and after the sub-pixel decoder's reshapes
    (``SubPixelConvLayer``) it does not know it. Exported: InstanceNormalization, MatMul, Mul,
    Add."""

    def __init__(self, m: ConditionalInstanceNorm):
        super().__init__()
        self.weight, self.bias, self.eps = m.weight, m.bias, m.eps
        self.one: torch.Tensor  # buffers, declared for the type checker
        self.zero: torch.Tensor
        self.register_buffer("one", torch.ones(m.num_features))
        self.register_buffer("zero", torch.zeros(m.num_features))

    def forward(self, x: torch.Tensor, style: Style = None) -> torch.Tensor:
        gamma, beta = style_affine(self.weight, self.bias, style, x.shape[-2], x.shape[-1])
        y = F.instance_norm(x, weight=self.one, bias=self.zero, eps=self.eps)
        return y * gamma + beta


def _export_copy(net: TransformerNet) -> TransformerNet:
    """A float32 CPU copy of ``net`` with every conditional norm in its exportable form."""
    net = copy.deepcopy(net).float().cpu().eval()
    for name, m in named_norms(net):
        if isinstance(m, ConditionalInstanceNorm):
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, _ExportConditionalNorm(m))
    return net


def _onnx_module(
    net: TransformerNet, frozen_norms: bool
) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str]]:
    """What ``to_onnx_bytes`` traces: the module, example inputs and input names."""
    example: tuple[torch.Tensor, ...] = (torch.rand(1, 3, 64, 64),)
    names = [INPUT_NAME]
    if frozen_norms:  # the style is folded into norm_affine: no style input
        frozen = FrozenNormNet(net)
        example += (torch.rand(2, frozen.total_channels),)
        names.append(NORM_INPUT_NAME)
        return frozen.eval(), example, names
    if net.num_styles > 1:  # a style row per image; one-hot here, any weights at run time
        example += (torch.eye(net.num_styles)[:1],)
        names.append(STYLE_INPUT_NAME)
    return DeployNet(_export_copy(net)).eval(), example, names


def to_onnx_bytes(
    net: TransformerNet, opset: int = ONNX_OPSET, frozen_norms: bool = False
) -> bytes:
    """Serialise ``net`` as an ONNX model (dynamic batch, height, width).

    ``frozen_norms``: export ``FrozenNormNet`` instead (second input ``norm_affine``). A
    multi-style ``net`` (not frozen) gets the second input ``style`` (B, S)."""
    axes = {0: "batch", 2: "height", 3: "width"}
    module, example, names = _onnx_module(net, frozen_norms)
    dynamic = {INPUT_NAME: axes, OUTPUT_NAME: axes}
    if STYLE_INPUT_NAME in names:
        dynamic[STYLE_INPUT_NAME] = {0: "batch"}  # one row per image
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        try:
            torch.onnx.export(
                module,
                example,
                buf,  # type: ignore[arg-type]  # the TorchScript exporter writes file objects too
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic,
                opset_version=opset,
                **_legacy_onnx_kwargs(),
            )
            return buf.getvalue()
        except (ImportError, RuntimeError, TypeError):
            if not _legacy_onnx_kwargs():
                raise
        return _dynamo_onnx_bytes(module, example, names)


def _dynamo_onnx_bytes(
    module: nn.Module, example: tuple[torch.Tensor, ...], names: list[str]
) -> bytes:
    """The export through torch.export (dynamo), where the legacy exporter has been removed."""
    shapes: dict = {"x": {0: "batch", 2: "height", 3: "width"}}
    if NORM_INPUT_NAME in names:
        shapes["norm_affine"] = None
    if STYLE_INPUT_NAME in names:
        shapes["style"] = {0: "batch"}
    prog = torch.onnx.export(
        module,
        example,
        input_names=names,
        output_names=[OUTPUT_NAME],
        dynamic_shapes=shapes,
        opset_version=18,
        dynamo=True,
        verbose=False,
    )
    if prog is None:
        raise RuntimeError("torch.onnx.export (dynamo) returned no program")
    return prog.model_proto.SerializeToString()


def export_onnx(net: TransformerNet, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``net`` as ONNX to ``path``; ``meta`` goes into the model's metadata_props."""
    import onnx

    model = onnx.load_from_string(to_onnx_bytes(net))
    if meta:
        entry = model.metadata_props.add()
        entry.key, entry.value = "fast_style", json.dumps(meta)
    path = Path(path)
    with atomic_write(path) as tmp:  # a killed export never leaves a half-written file
        onnx.save(model, str(tmp))
    return path


def to_torchscript(net: TransformerNet) -> torch.jit.ScriptModule:
    """Script (not trace) ``DeployNet`` so that any H, W works: ``module(image)``, and for a
    multi-style ``net`` ``module(image, style)`` with (B, S) weights or a (B, S, H, W) map."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        return torch.jit.script(DeployNet(copy.deepcopy(net).float().cpu().eval()).eval())


def export_torchscript(
    net: TransformerNet, path: str | os.PathLike, meta: dict | None = None
) -> Path:
    """Write a TorchScript archive; ``meta`` is stored as the extra file ``fast_style.json``."""
    path = Path(path)
    extra = {"fast_style.json": json.dumps(meta or {})}
    with warnings.catch_warnings(), atomic_write(path) as tmp:
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(to_torchscript(net), str(tmp), _extra_files=extra)
    return path


def export_safetensors(
    net: TransformerNet, path: str | os.PathLike, meta: dict | None, dtype: str
) -> Path:
    """The model file again, its weights in ``dtype``: ``float16`` halves it, ``int8``
    (weight-only, per output channel: ``model_io.INT8``) quarters its conv weights."""
    from fast_style.core.model_io import describe, save_safetensors

    info = meta if meta else describe(net, style="unknown")
    return save_safetensors(net, path, info, dtype=dtype)  # its "dtype" entry becomes ``dtype``


def export(
    net: TransformerNet,
    fmt: str,
    path: str | os.PathLike,
    meta: dict | None = None,
    mobile: MobileOptions | None = None,
    dtype: str = "float16",
) -> Path:
    """Export in ``fmt`` (``FORMATS``); ``mobile``: size and style of a mobile export;
    ``dtype``: the weights of a ``safetensors`` model file (``model_io.DTYPES``)."""
    if fmt == "onnx":
        return export_onnx(net, path, meta)
    if fmt == "torchscript":
        return export_torchscript(net, path, meta)
    if fmt == "safetensors":
        return export_safetensors(net, path, meta, dtype)
    if fmt in MOBILE_FORMATS:
        return export_mobile(net, fmt, path, meta, mobile)
    raise ValueError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fast-style export",
        description="Export a fast_style model to ONNX or TorchScript (dynamic batch, H, W), "
        "to ExecuTorch, TFLite or CoreML for phones (docs/mobile.md), or to a smaller model file "
        "(safetensors in float16 or int8).",
    )
    p.add_argument(
        "--model", required=True, help=".ckpt, .safetensors or a style name in checkpoints/"
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="default: from the output's extension (.onnx → onnx, .pt/.ts → torchscript, "
        ".safetensors → safetensors, .pte → executorch, .tflite → tflite, .mlpackage → coreml)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="safetensors only: the weights' type (default float16; int8: conv weights in 8 "
        "bits per output channel, the network still computes in float)",
    )
    p.add_argument("--output", required=True, help="file to write")
    p.add_argument("--models-dir", action="append", default=[], help="extra folder for style names")
    mobile = p.add_argument_group("mobile formats (executorch, tflite, coreml)")
    mobile.add_argument(
        "--size",
        type=str,
        default=None,
        metavar="HxW",
        help="a fixed input size (required for tflite); default for executorch and coreml: "
        "dynamic H, W, multiples of 4 up to --max-size",
    )
    mobile.add_argument(
        "--max-size",
        type=int,
        default=DEFAULT_MAX_SIZE,
        metavar="N",
        help=f"largest H and W of a dynamic export (default {DEFAULT_MAX_SIZE}; ExecuTorch "
        "plans its memory for it)",
    )
    mobile.add_argument(
        "--style",
        default=None,
        help="a multi-style model: bake this style in (default: a 'style' weights input)",
    )
    return p


def _format_for(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.suffix.lower() in (".pt", ".ts", ".torchscript", ".jit"):
        return "torchscript"
    if path.suffix.lower() == ".safetensors":
        return "safetensors"
    if path.suffix.lower() in EXTENSIONS:
        return EXTENSIONS[path.suffix.lower()]
    raise ValueError(f"{path}: cannot tell the format from the extension; pass --format")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns 0, or exits with status 2 and one line on bad input."""
    from fast_style.core.model_io import ModelFileError, load_model, resolve_model
    from fast_style.core.resources import model_dirs

    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.output)
    try:
        fmt = _format_for(out, args.format)
        path = resolve_model(args.model, model_dirs(args.models_dir))
        if out.resolve() == path.resolve():
            raise ValueError(f"{out}: refusing to overwrite the model file")
        net, meta = load_model(path, "cpu")
        mobile = _mobile_options(args, fmt, meta)
        if args.dtype is not None and fmt != "safetensors":
            raise ValueError(f"--dtype applies to safetensors model files, not {fmt}")
    except (ModelFileError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    missing = _missing_package(fmt)
    if missing:
        parser.exit(2, f"error: {missing}\n")
    dtype = args.dtype or "float16"
    written = export(net, fmt, out, meta, mobile, dtype)
    size = disk_size(written)
    shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} KB"
    what = _summary(net, meta, mobile) + (f", {dtype}" if fmt == "safetensors" else "")
    print(f"wrote {written} ({fmt}, {what}, {shown})")
    return 0


def _mobile_options(args: argparse.Namespace, fmt: str, meta: dict) -> MobileOptions | None:
    """The mobile options of the command line; ValueError (or ModelFileError for an unknown
    style) on options that do not apply or do not parse."""
    from fast_style.core.model_io import style_index

    given = [f"--{k.replace('_', '-')}" for k in ("size", "style") if getattr(args, k)]
    if args.max_size != DEFAULT_MAX_SIZE:
        given.append("--max-size")
    if fmt not in MOBILE_FORMATS:
        if given:
            raise ValueError(f"{', '.join(given)}: only for {', '.join(MOBILE_FORMATS)} exports")
        return None
    size = parse_size(args.size) if args.size else None
    if size is None and fmt not in DYNAMIC_FORMATS:
        raise ValueError(f"{fmt} exports have a fixed size: pass --size HxW (e.g. 512x512)")
    style = style_index(meta, args.style) if args.style else None
    return MobileOptions(size, args.max_size, style, args.style)


def _missing_package(fmt: str) -> str | None:
    """The one-line reason ``fmt``'s exporter cannot run here, or None."""
    if fmt in MOBILE_FORMATS:
        return missing_runtime(fmt)
    try:
        import onnx  # noqa: F401
    except ImportError:
        if fmt == "onnx":
            return "ONNX export needs: pip install 'fast_style[export]'"
    return None


def _summary(net: TransformerNet, meta: dict, mobile: MobileOptions | None) -> str:
    """What the summary line says about styles (and sizes of a mobile export)."""
    if net.num_styles > 1 and not (mobile and mobile.style is not None):
        what = f"{net.num_styles} styles (input {STYLE_INPUT_NAME!r})"
    else:
        what = f"style {(mobile and mobile.style_name) or meta.get('style')!r}"
    return f"{what}, {describe_sizes(mobile)}" if mobile else what


if __name__ == "__main__":
    sys.exit(main())
