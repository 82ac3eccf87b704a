"""Mobile exports: ExecuTorch (``.pte``, XNNPACK), LiteRT / TFLite (``.tflite``) and CoreML
(``.mlpackage``), all from ``DeployNet`` through ``torch.export``.

``python -m fast_style.export --model M --output m.pte|m.tflite|m.mlpackage [--size HxW]``

Every export takes one image, RGB float32 (1, 3, H, W) in [0, 1] (input ``image``), and returns
the same shape in [0, 1] (output ``stylized``); batch 1. A multi-style network (S styles) has a
second input ``style``, float32 (1, S) weights (one-hot for one style, a convex mix otherwise),
unless ``style=`` bakes one style's row into the file (``--style NAME``): then the export has
the image input alone.

Sizes
-----
``size=(H, W)``: a fixed-size export, any H, W ≥ 8. Without it (ExecuTorch and CoreML only):
dynamic H and W, each a *multiple of 4* in 8 … ``max_size``. ``torch.export`` cannot prove
``DeployNet``'s branch-free pad-and-crop sound for every H, only for H = 4k, where pad and crop
vanish: an app pads the photo (reflect, bottom/right) to a multiple of 4 and crops the result,
what ``DeployNet`` does inside. LiteRT cannot take dynamic sizes (its converter rejects the
symbolic ``arange`` of the reflection pads): ``size`` is required. ExecuTorch plans its memory
for ``max_size`` (about 1 GB of activations at 2048² for the full network, 270 MB at 1024²).

Metadata
--------
The model file's ``fast_style`` metadata (JSON, with ``mobile`` added: inputs, sizes, baked
style) travels in each format: a constant method ``fast_style`` returning the JSON string in a
``.pte``, a ``fast_style`` metadata buffer in a ``.tflite``, ``user_defined_metadata`` in an
``.mlpackage``.

Each runtime is imported only when used; a missing one is one line naming the pip extra
(``MobileExportError``, an ``ImportError``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fast_style.core.fileio import atomic_write, fsync_dir, temp_path_for
from fast_style.core.network import MIN_SIZE, SIZE_MULTIPLE, TransformerNet
from fast_style.infer.deploy import STYLE_INPUT_NAME, DeployNet

MOBILE_FORMATS = ("executorch", "tflite", "coreml")
EXTENSIONS = {".pte": "executorch", ".tflite": "tflite", ".mlpackage": "coreml"}
DYNAMIC_FORMATS = frozenset({"executorch", "coreml"})  # the runtimes that take dynamic H, W
DEFAULT_MAX_SIZE = 1024  # dynamic exports: the largest H and W
META_KEY = "fast_style"
INPUT_NAME, OUTPUT_NAME = "image", "stylized"  # as the ONNX export
EXTRA_HINT = "pip install 'fast_style[mobile]'"
# format → (module that must import, what to call it in the error)
_RUNTIMES = {
    "executorch": ("executorch.exir", "executorch"),
    "tflite": ("litert_torch", "litert-torch and ai-edge-litert"),
    "coreml": ("coremltools", "coremltools"),
}


class MobileExportError(ImportError):
    """A mobile export whose converter package is not installed (one line, names the extra)."""


@dataclass(frozen=True)
class MobileOptions:
    """How to export: ``size`` (H, W) fixed or None (dynamic, multiples of 4 up to
    ``max_size``); ``style`` the row of a multi-style network to bake in, None for a ``style``
    input (ignored by one-style networks); ``style_name`` its name, for the metadata."""

    size: tuple[int, int] | None = None
    max_size: int = DEFAULT_MAX_SIZE
    style: int | None = None
    style_name: str | None = None

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) < MIN_SIZE):
            raise ValueError(f"size must be H, W ≥ {MIN_SIZE}, got {self.size}")
        if self.dynamic_max < 2 * MIN_SIZE:
            raise ValueError(f"max size must be at least {2 * MIN_SIZE}, got {self.max_size}")

    @property
    def dynamic_max(self) -> int:
        """The largest dynamic H or W: ``max_size`` rounded down to a multiple of 4."""
        return self.max_size - self.max_size % SIZE_MULTIPLE


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` (or ``"H,W"``, or ``"N"`` for N × N) → (H, W); ValueError otherwise."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        h, w = (int(parts[0]),) * 2 if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise ValueError(f"--size {text!r}: expected HxW, e.g. 512x384") from None
    if len(parts) > 2 or min(h, w) < MIN_SIZE:
        raise ValueError(f"--size {text!r}: expected HxW with H, W ≥ {MIN_SIZE}")
    return h, w


def missing_runtime(fmt: str) -> str | None:
    """None when ``fmt``'s converter imports, else the one-line reason (names the extra)."""
    module, what = _RUNTIMES[fmt]
    try:
        __import__(module)
    except ImportError as e:
        root = (e.name or module).split(".")[0]
        detail = "" if root == module.split(".")[0] else f" (missing {e.name})"
        return f"{fmt} export needs {what}{detail}: {EXTRA_HINT}"
    return None


def _require(fmt: str) -> None:
    reason = missing_runtime(fmt)
    if reason:
        raise MobileExportError(reason)


# ---------------------------------------------------------------------------------------------
# The exported module and its example inputs


class MobileNet(nn.Module):
    """``DeployNet`` with the signature of the mobile exports: ``forward(image, style=None)``,
    image (1, 3, H, W) in [0, 1] → (1, 3, H, W) in [0, 1]. ``baked``: a (1, S) style row used
    when no ``style`` is given (a multi-style network exported for one style), or None.
    ``named``: return ``{"stylized": y}`` (LiteRT names its outputs by the dict keys)."""

    def __init__(self, net: TransformerNet, baked: torch.Tensor | None, named: bool = False):
        super().__init__()
        self.net = DeployNet(copy.deepcopy(net).float().cpu().eval()).eval()
        self.named = named
        self.baked: torch.Tensor | None  # a buffer, declared for the type checker
        self.register_buffer("baked", baked)

    def forward(self, image: torch.Tensor, style: torch.Tensor | None = None) -> Any:
        y = self.net(image, self.baked if style is None else style)
        return {OUTPUT_NAME: y} if self.named else y


def _baked_row(net: TransformerNet, opts: MobileOptions) -> torch.Tensor | None:
    """The (1, S) one-hot row to bake in, or None (a one-style network, or a style input)."""
    if net.num_styles == 1 or opts.style is None:
        return None
    if not 0 <= opts.style < net.num_styles:
        raise ValueError(f"style {opts.style} out of range for {net.num_styles} styles")
    return torch.eye(net.num_styles)[opts.style : opts.style + 1]


def has_style_input(net: TransformerNet, opts: MobileOptions) -> bool:
    """True when the export takes the ``style`` (1, S) input."""
    return net.num_styles > 1 and opts.style is None


def example_inputs(net: TransformerNet, opts: MobileOptions) -> dict[str, torch.Tensor]:
    """Inputs by name to trace with: the fixed size, or 64 × 64 within the dynamic range; a
    uniform style mix (no row is special) when the export has a style input."""
    side = min(64, opts.dynamic_max)
    h, w = opts.size or (side, side)
    inputs = {INPUT_NAME: torch.rand(1, 3, h, w)}
    if has_style_input(net, opts):
        inputs[STYLE_INPUT_NAME] = torch.full((1, net.num_styles), 1.0 / net.num_styles)
    return inputs


def _dynamic_shapes(inputs: dict[str, torch.Tensor], opts: MobileOptions) -> dict | None:
    """``torch.export`` shapes: H = 4·h4, W = 4·w4 in 8 … max (None for a fixed size)."""
    if opts.size is not None:
        return None
    top = opts.dynamic_max // SIZE_MULTIPLE
    lo = MIN_SIZE // SIZE_MULTIPLE
    dim = torch.export.Dim
    hw = {
        2: SIZE_MULTIPLE * dim("h4", min=lo, max=top),
        3: SIZE_MULTIPLE * dim("w4", min=lo, max=top),
    }
    return {name: (hw if name == INPUT_NAME else None) for name in inputs}


def export_program(
    net: TransformerNet, opts: MobileOptions, named: bool = False
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``MobileNet`` (what ExecuTorch and CoreML convert)."""
    inputs = example_inputs(net, opts)
    module = MobileNet(net, _baked_row(net, opts), named).eval()
    with torch.no_grad():  # positional, in forward's order: image [, style]
        return torch.export.export(
            module, tuple(inputs.values()), dynamic_shapes=_dynamic_shapes(inputs, opts)
        )


def mobile_meta(net: TransformerNet, fmt: str, opts: MobileOptions, meta: dict | None) -> dict:
    """The model file's metadata plus ``mobile``: how this export is called."""
    inputs = {INPUT_NAME: [1, 3, "H", "W"]}
    if has_style_input(net, opts):
        inputs[STYLE_INPUT_NAME] = [1, net.num_styles]
    sizes: dict[str, Any] = {"fixed": list(opts.size)} if opts.size else {}
    if not opts.size:
        sizes = {"min": MIN_SIZE, "max": opts.dynamic_max, "multiple": SIZE_MULTIPLE}
    baked = opts.style_name if opts.style is not None and net.num_styles > 1 else None
    mobile = {"format": fmt, "inputs": inputs, "output": OUTPUT_NAME, "size": sizes}
    return {**(meta or {}), "mobile": {**mobile, "baked_style": baked}}


# ---------------------------------------------------------------------------------------------
# ExecuTorch (XNNPACK)


def _xnnpack_partitioner() -> Any:
    """The XNNPACK partitioner, told one more limit of its backend: an ``unsqueeze`` (from
    ``torch.stack``) whose output has two dynamic dims is left to the portable kernels
    (XNNPACK's reshape takes one; the stock check accepts it, then lowering fails)."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.generic_node_configs import (
        UnsqueezeCopyConfig,
    )
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from torch.fx.experimental.symbolic_shapes import free_symbols

    class _OneDynamicDimUnsqueeze(UnsqueezeCopyConfig):
        def check_constraints(self, node: torch.fx.Node, ep: Any) -> bool:
            if not super().check_constraints(node, ep):
                return False
            return sum(1 for d in node.meta["val"].shape if free_symbols(d)) <= 1

    configs = [
        _OneDynamicDimUnsqueeze if c is UnsqueezeCopyConfig else c for c in ALL_PARTITIONER_CONFIGS
    ]
    return XnnpackPartitioner(configs=configs)


def _two_pass_instance_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    cudnn_enabled: bool = False,
) -> torch.Tensor:
    """``aten.instance_norm`` of (B, C, H, W) as ops XNNPACK runs: the mean over H, W, then
    the mean of the centred squares (two passes). ExecuTorch's own lowering is a portable
    batch-norm kernel: measured 2× slower and 2× further from PyTorch (docs/mobile.md)."""
    if not use_input_stats:
        raise NotImplementedError("instance norm with running statistics")
    mean = x.mean(dim=(2, 3), keepdim=True)
    centred = x - mean
    y = centred * torch.rsqrt((centred * centred).mean(dim=(2, 3), keepdim=True) + eps)
    if weight is not None:
        y = y * weight.reshape(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y


def to_executorch_bytes(net: TransformerNet, opts: MobileOptions, meta: dict) -> bytes:
    """The ``.pte`` program: ``forward`` lowered to XNNPACK where it can run (convolutions,
    instance norms as ``_two_pass_instance_norm``, elementwise ops; the reflection pads run
    on the portable kernels), plus the constant method ``fast_style`` returning ``meta`` as
    JSON."""
    _require("executorch")
    from executorch.exir import to_edge_transform_and_lower

    norm = {torch.ops.aten.instance_norm.default: _two_pass_instance_norm}
    program = export_program(net, opts).run_decompositions(norm)
    edge = to_edge_transform_and_lower(
        program,
        partitioner=[_xnnpack_partitioner()],
        constant_methods={META_KEY: json.dumps(meta)},
    )
    return bytes(edge.to_executorch().buffer)


def export_executorch(
    net: TransformerNet, path: str | os.PathLike, meta: dict | None, opts: MobileOptions
) -> Path:
    """Write an ExecuTorch ``.pte`` (XNNPACK) to ``path``."""
    data = to_executorch_bytes(net, opts, mobile_meta(net, "executorch", opts, meta))
    return _write_bytes(Path(path), data)


# ---------------------------------------------------------------------------------------------
# LiteRT (TFLite)


def to_tflite_bytes(net: TransformerNet, opts: MobileOptions, meta: dict) -> bytes:
    """The ``.tflite`` flatbuffer (fixed size: ``opts.size`` is required), signature
    ``serving_default`` with inputs ``image`` [, ``style``] and output ``stylized``, and a
    ``fast_style`` metadata buffer holding ``meta`` as JSON."""
    if opts.size is None:
        raise ValueError("a tflite export has a fixed size: pass --size HxW")
    _require("tflite")
    import litert_torch

    module = MobileNet(net, _baked_row(net, opts), named=True).eval()
    with torch.no_grad():
        model = litert_torch.convert(module, sample_kwargs=example_inputs(net, opts))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.tflite"
        model.export(str(out))
        flatbuffer = out.read_bytes()
    return add_tflite_metadata(flatbuffer, META_KEY, json.dumps(meta).encode())


def add_tflite_metadata(flatbuffer: bytes, name: str, value: bytes) -> bytes:
    """``flatbuffer`` with one more named metadata buffer (LiteRT's flatbuffer tools)."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(value, dtype=np.uint8)
    model.buffers = [*(model.buffers or []), buffer]
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or [] if m.name != name.encode()] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_tflite_metadata(flatbuffer: bytes, name: str = META_KEY) -> dict | None:
    """The JSON metadata buffer ``name`` of a ``.tflite`` flatbuffer, or None."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == name.encode():
            return json.loads(bytes(model.Buffers(entry.Buffer()).DataAsNumpy()))
    return None


def export_tflite(
    net: TransformerNet, path: str | os.PathLike, meta: dict | None, opts: MobileOptions
) -> Path:
    """Write a LiteRT ``.tflite`` of fixed size ``opts.size`` to ``path``."""
    data = to_tflite_bytes(net, opts, mobile_meta(net, "tflite", opts, meta))
    return _write_bytes(Path(path), data)


# ---------------------------------------------------------------------------------------------
# CoreML (converted and checked here; it runs on Apple devices only)


def to_coreml(net: TransformerNet, opts: MobileOptions, meta: dict) -> Any:
    """A ``coremltools.models.MLModel`` (ML program, float32 compute, iOS 15+): inputs
    ``image`` (flexible H, W ranges when dynamic) [, ``style``], output ``stylized``, the
    metadata in ``user_defined_metadata["fast_style"]``. Not loaded (no CoreML on Linux)."""
    _require("coreml")
    import coremltools as ct

    program = _alias_free(export_program(net, opts).run_decompositions({}))
    model = ct.convert(
        program,
        outputs=[ct.TensorType(name=OUTPUT_NAME)],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS15,
        compute_precision=ct.precision.FLOAT32,
        skip_model_load=True,
    )
    _describe_coreml(model, net, opts, meta)
    return model


def _alias_free(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with ``aten.alias`` (a crop that keeps everything: a fixed size that is a
    multiple of 4) as ``aten.clone``, which coremltools converts (to nothing); in place."""
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.alias.default:
            node.target = torch.ops.aten.clone.default
    program.graph_module.recompile()
    return program


def _describe_coreml(model: Any, net: TransformerNet, opts: MobileOptions, meta: dict) -> None:
    """Descriptions and metadata of the converted model (in place)."""
    sizes = describe_sizes(opts)
    model.short_description = f"fast_style transform network ({meta.get('style', 'unnamed')})"
    model.input_description[INPUT_NAME] = f"RGB (1, 3, H, W) float32 in [0, 1]; {sizes}"
    if has_style_input(net, opts):
        model.input_description[STYLE_INPUT_NAME] = (
            f"style weights (1, {net.num_styles}) float32: one-hot or a convex mix"
        )
    model.output_description[OUTPUT_NAME] = "stylized RGB (1, 3, H, W) float32 in [0, 1]"
    model.user_defined_metadata[META_KEY] = json.dumps(meta)


def export_coreml(
    net: TransformerNet, path: str | os.PathLike, meta: dict | None, opts: MobileOptions
) -> Path:
    """Write a CoreML ``.mlpackage`` (a folder) to ``path``, replacing one that is there."""
    model = to_coreml(net, opts, mobile_meta(net, "coreml", opts, meta))
    path = Path(path)
    with _atomic_folder(path) as tmp:
        model.save(str(tmp))
    return path


# ---------------------------------------------------------------------------------------------
# Dispatch and files

_EXPORTERS: dict[str, Callable[[TransformerNet, Path, dict | None, MobileOptions], Path]] = {
    "executorch": export_executorch,
    "tflite": export_tflite,
    "coreml": export_coreml,
}


def export_mobile(
    net: TransformerNet,
    fmt: str,
    path: str | os.PathLike,
    meta: dict | None = None,
    opts: MobileOptions | None = None,
) -> Path:
    """Export ``net`` as ``fmt`` (``MOBILE_FORMATS``) to ``path``."""
    if fmt not in _EXPORTERS:
        raise ValueError(f"unknown mobile format {fmt!r} (choose from {', '.join(_EXPORTERS)})")
    return _EXPORTERS[fmt](net, Path(path), meta, opts or MobileOptions())


def describe_sizes(opts: MobileOptions) -> str:
    """One phrase for the CLI's summary line."""
    if opts.size:
        return f"{opts.size[0]}x{opts.size[1]}"
    return f"H, W multiples of {SIZE_MULTIPLE} in {MIN_SIZE}..{opts.dynamic_max}"


def disk_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (an ``.mlpackage``)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _write_bytes(path: Path, data: bytes) -> Path:
    with atomic_write(path) as tmp:  # a killed export never leaves a half-written file
        tmp.write_bytes(data)
    return path


@contextlib.contextmanager
def _atomic_folder(path: Path) -> Iterator[Path]:
    """``atomic_write`` for a folder: filled under a temporary name, then renamed onto
    ``path`` (an older folder there is moved aside first and removed after)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_path_for(path).name + path.suffix)  # coremltools wants the suffix
    old = temp_path_for(path.with_name(path.name + ".old"))
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old.exists():
                os.replace(old, path)  # put the older one back
            raise
    finally:
        for leftover in (tmp, old):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            elif leftover.exists():
                leftover.unlink()
    fsync_dir(path.parent)
