"""Export a trained transform network to ONNX or TorchScript, with dynamic batch, H and W.

``python -m fast_style.export --model MODEL --format onnx|torchscript --output FILE``

The exported graph is ``DeployNet``: ``TransformerNet`` re-parameterised for speed, with the
same outputs. Its pad to a multiple of 4 is branch-free (``(-h) % 4``), so pad amounts and the
final crop are computed from the input's shape inside the graph instead of being frozen at trace
time. Its ops are Pad, Conv, InstanceNormalization, Relu, Add, Mul, Tanh, Slice, Concat,
Reshape and shape arithmetic (Shape, Gather, Unsqueeze, …; ``CONVERTER_SAFE_OPS``): no
``Resize``/``Upsample`` with a ``scale_factor`` for converters (TensorRT, CoreML, TFLite,
OpenVINO) to trip on.

Exported models take RGB float32 ``(B, 3, H, W)`` in [0, 1] with H, W ≥ 8 and return the same
shape in [0, 1] (input name ``image``, output name ``stylized``).
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

from fast_style.fileio import atomic_write
from fast_style.transformer import SIZE_MULTIPLE, TransformerNet

FORMATS = ("onnx", "torchscript")
# Every op the exported graph may contain (checked by the tests): plain tensor ops and shape
# arithmetic that ONNX converters handle.
_SAFE_OPS = """Pad Conv InstanceNormalization Relu Add Sub Mul Neg Mod Tanh Slice Concat Reshape
    Transpose Unsqueeze Shape Gather Constant ConstantOfShape Cast Identity"""
CONVERTER_SAFE_OPS = frozenset(_SAFE_OPS.split())
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME, NORM_INPUT_NAME = "image", "stylized", "norm_affine"
DEPLOY_VERSION = 3  # bump when DeployNet's graph changes (invalidates cached exports)


def _phase_kernels(k: torch.Tensor) -> torch.Tensor:
    """Nearest ×2 upsampling → reflection pad 1 → 3×3 conv ``k`` (Cout, Cin, 3, 3), rewritten as
    four 2×2 convs on the low-resolution input padded by 1 (replicate), one per output phase.

    Output row 2i + a reads upsampled rows 2i + a - 1 … 2i + a + 1, i.e. low-res rows
    (i - 1, i, i) for a = 0 and (i, i, i + 1) for a = 1 (at the borders the reflection of the
    upsampled image is the replicate padding of the low-res one). So row taps k0, k1, k2 merge
    into (k0, k1 + k2) at offset 0 and (k0 + k1, k2) at offset 1; likewise for columns.
    Returns (4, Cout, Cin, 2, 2), phase index 2a + b.
    """
    merge = k.new_tensor([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], dtype=torch.float64)
    kk = k.detach().double()
    out = [torch.einsum("ru,oiuv,sv->oirs", merge[a], kk, merge[b]) for a in (0, 1) for b in (0, 1)]
    return torch.stack(out).to(k.dtype)


class SubPixelConvLayer(nn.Module):
    """``UpsampleConv`` (nearest ×2 → reflect pad → 3×3 conv → IN → ReLU) computed at low
    resolution: the 4 phase convs with 2×2 kernels (16 instead of 36 multiply-adds per input
    pixel and channel pair) run as *one* conv to 4 · Cout channels over the replicate-padded
    input; phase (a, b) is that output shifted by (a, b). One conv over the whole input instead
    of four over shifted input slices moves half the bytes (the shifts act on Cout rather than
    Cin = 2 · Cout channels) and needs one layout reorder instead of four in ONNX Runtime.

    The phases are interleaved by two stacks and free reshapes (columns within each row
    phase, then the two row phases) rather than ``pixel_shuffle``: ONNX Runtime's
    ``DepthToSpace`` was the slowest copy of the network (A/B in docs/benchmarks.md). Same
    result."""

    def __init__(self, up: nn.Module):
        super().__init__()
        _, layer = up  # (Upsample2x, ConvLayer(pad, conv, norm, act))
        _, conv, self.norm, self.act = layer
        # (4 · Cout, Cin, 2, 2), phase-major: a 4-D buffer, so .to(channels_last) works.
        self.register_buffer("weight", _phase_kernels(conv.weight).flatten(0, 1))
        self.register_buffer("bias", conv.bias.detach().repeat(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        co = self.weight.shape[0] // 4
        # (B, 4 · Cout, h + 1, w + 1): output (i, j) of phase (a, b) is at (i + a, j + b)
        y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.weight, self.bias)
        rows: list[torch.Tensor] = []
        for a in range(2):
            left = y[:, (2 * a) * co : (2 * a + 1) * co, a : a + h, 0:w]
            right = y[:, (2 * a + 1) * co : (2 * a + 2) * co, a : a + h, 1 : 1 + w]
            # (B, Cout, h, w, 2) → (B, Cout, h, 2w): output row 2i + a
            rows.append(torch.stack([left, right], -1).reshape(y.shape[0], co, h, 2 * w))
        # (B, Cout, h, 2, 2w) → (B, Cout, 2h, 2w)
        up = torch.stack(rows, 3).reshape(y.shape[0], co, 2 * h, 2 * w)
        return self.act(self.norm(up))


class RowSplitConv(nn.Module):
    """The output layer (reflect pad 4 → 9×9 conv to 3 channels) as a 1×9 conv to 3 · 9
    channels, one per (output channel, kernel row), followed by the sum of the 9 row-shifted
    slices. A 3-channel output wastes most lanes of a SIMD conv kernel (MLAS and oneDNN block
    output channels by 8 or 16) and made this layer the slowest of the network; 27 channels fill
    them. Same multiply-adds, same result (measured 4× faster in ONNX Runtime)."""

    __constants__ = ("pad", "rows", "cout")

    def __init__(self, layer: nn.Module):
        super().__init__()
        pad, conv = layer
        k = conv.weight.detach()  # (Cout, Cin, kh, kw)
        self.cout, cin, self.rows, kw = k.shape
        self.pad = int(pad.padding[0])
        # channel o * rows + dy holds kernel row dy of output channel o
        self.register_buffer("weight", k.permute(0, 2, 1, 3).reshape(-1, cin, 1, kw).contiguous())
        bias = torch.zeros(self.cout, self.rows, dtype=k.dtype)
        bias[:, 0] = conv.bias.detach()
        self.register_buffer("bias", bias.flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-2]
        p = self.pad
        t = F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), self.weight, self.bias)
        t = t.reshape(t.shape[0], self.cout, self.rows, t.shape[-2], t.shape[-1])
        out = t[:, :, 0, 0:h]
        for dy in range(1, self.rows):
            out = out + t[:, :, dy, dy : dy + h]
        return out


class DeployNet(nn.Module):
    """``TransformerNet`` re-parameterised for inference and export: equal outputs (to float
    rounding), (B, 3, H ≥ 8, W ≥ 8) in [0, 1] → same shape.

    * the pad to a multiple of 4 is branch-free (``(-h) % 4``), so tracing and scripting keep H
      and W symbolic (dynamic axes in ONNX, any size in TorchScript);
    * the decoder's upsample + conv stages run at low resolution (``SubPixelConvLayer``), with
      no upsampled tensor, no ``Resize``/``Upsample`` op and 12% fewer FLOPs in total;
    * the output conv runs as ``RowSplitConv``.

    Encoder, residual blocks and instance norms are *shared* with ``net`` (not copied), so
    code that patches the instance norms (tiled inference) sees them in the same order. The
    derived weights are a snapshot: rebuild after changing ``net``'s weights.
    """

    __constants__ = ("multiple",)  # TorchScript: a constant, not a Python global

    def __init__(self, net: TransformerNet):
        super().__init__()
        self.encoder, self.residuals = net.encoder, net.residuals
        up1, up2, out = net.decoder
        self.up1, self.up2 = SubPixelConvLayer(up1), SubPixelConvLayer(up2)
        self.out = RowSplitConv(out)
        self.multiple = SIZE_MULTIPLE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        # imaging.pad_to_multiple's padding for H, W ≥ 8 (reflect, bottom/right), branch-free.
        x = F.pad(x, (0, (-w) % self.multiple, 0, (-h) % self.multiple), mode="reflect")
        y = self.out(self.up2(self.up1(self.residuals(self.encoder(x)))))
        y = 0.5 * (torch.tanh(y) + 1.0)  # TransformerNet's scaled tanh
        return y[:, :, :h, :w]


class _AffineHolder:
    """Carries the ``norm_affine`` graph input to the ``_FrozenNorm`` layers during a forward."""

    affine: torch.Tensor | None = None


class _FrozenNorm(nn.Module):
    """An instance norm replaced by the per-channel affine map ``x * scale + shift`` whose
    parameters are columns ``offset … offset + C`` of the ``norm_affine`` input."""

    def __init__(self, holder: _AffineHolder, offset: int, channels: int):
        super().__init__()
        self.holder, self.offset, self.channels = holder, offset, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.holder.affine[:, self.offset : self.offset + self.channels]
        return x * p[0].reshape(1, -1, 1, 1) + p[1].reshape(1, -1, 1, 1)


class FrozenNormNet(nn.Module):
    """``DeployNet`` with every instance norm frozen to given statistics, for tiled inference
    in ONNX Runtime: ``forward(image (B, 3, H, W), norm_affine (2, ΣC))``. Row 0 of
    ``norm_affine`` holds the scales, row 1 the shifts, instance-norm layers in module order
    (``fast_style.inference.pack_norm_affine`` builds it from recorded statistics)."""

    def __init__(self, net: TransformerNet):
        super().__init__()
        self.deploy = DeployNet(copy.deepcopy(net).float().cpu().eval()).eval()
        self.holder = _AffineHolder()
        offset = 0
        for name, m in list(self.deploy.named_modules()):
            if isinstance(m, nn.InstanceNorm2d):
                parent_name, _, child = name.rpartition(".")
                parent = self.deploy.get_submodule(parent_name)
                setattr(parent, child, _FrozenNorm(self.holder, offset, m.num_features))
                offset += m.num_features
        self.total_channels = offset

    def forward(self, x: torch.Tensor, norm_affine: torch.Tensor) -> torch.Tensor:
        self.holder.affine = norm_affine
        try:
            return self.deploy(x)
        finally:
            self.holder.affine = None


def _legacy_onnx_kwargs() -> dict:
    """Prefer the TorchScript-based exporter where it exists (fast, opset 17, plain ops);
    torch ≥ 2.9 defaults to the dynamo exporter, older versions have no ``dynamo`` argument."""
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        return {"dynamo": False}
    return {}


def to_onnx_bytes(
    net: TransformerNet, opset: int = ONNX_OPSET, frozen_norms: bool = False
) -> bytes:
    """Serialise ``net`` as an ONNX model (dynamic batch, height, width).

    ``frozen_norms``: export ``FrozenNormNet`` instead (second input ``norm_affine``)."""
    axes = {0: "batch", 2: "height", 3: "width"}
    example: tuple[torch.Tensor, ...] = (torch.rand(1, 3, 64, 64),)
    names = [INPUT_NAME]
    if frozen_norms:
        module: nn.Module = FrozenNormNet(net)
        example += (torch.rand(2, module.total_channels),)
        names.append(NORM_INPUT_NAME)
    else:
        module = DeployNet(copy.deepcopy(net).float().cpu().eval())
    module = module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        try:
            torch.onnx.export(
                module,
                example,
                buf,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                opset_version=opset,
                **_legacy_onnx_kwargs(),
            )
            return buf.getvalue()
        except (ImportError, RuntimeError, TypeError):
            if not _legacy_onnx_kwargs():
                raise
        # The legacy exporter has been removed from this torch: use torch.export (dynamo).
        shapes: dict = {"x": {0: "batch", 2: "height", 3: "width"}}
        if frozen_norms:
            shapes["norm_affine"] = None
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
    """Script (not trace) ``DeployNet`` so that any H, W works."""
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
        "--format",
        choices=FORMATS,
        default=None,
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
