"""The ``ort-int8`` backend: ONNX Runtime static int8 quantisation of the ONNX export, calibrated
on the shipped photos, cached on disk, run on CPU (docs/int8.md).

Opt-in (``--backend ort-int8``). ``auto`` picks it only for a model whose metadata records a
*measured* int8 PSNR against fp32 of at least ``INT8_MIN_PSNR_DB`` on held-out photos
(``int8_measured_ok``; ``scripts/bench_int8.py`` measures it), never by guessing.

The recipe (``Int8Recipe``, chosen by PSNR and speed in docs/int8.md): QDQ format, int8
weights per output channel, uint8 asymmetric activations with percentile ranges from the two
shipped photos (``fast_style/assets/photos``) at 512 and 768 px; the convolutions of the
residual blocks run in int8 (``QLinearConv``: 60-70% of the multiply-adds, at 1/4 resolution),
the encoder, decoder and output convs stay in float32. Against fp32 on held-out photos: about
44 dB on average, 34-36 dB on the worst (flat) ones; ×1.4-1.6 faster on the full network.

Instance norm
-------------
Only convolutions are quantised: every ``InstanceNormalization`` (and everything else: pads,
ReLU, the residual adds, the sub-pixel interleave, tanh) runs in float32 on dequantised
activations, so the norm's statistics are exact for the int8 conv outputs it receives. What
instance norm does to int8 is re-amplify the quantisation noise of its *input*: a conv output
is quantised with one scale per tensor, while the norm then rescales every channel to unit
variance, so channels with a small range (or an offset mean) lose most of their 256 levels.
Because the norm is invariant to a positive per-channel scale and a per-channel shift of its
input (up to its eps), each conv feeding a norm is *equalised* first (``equalise``): its
weights and bias are rescaled and shifted per output channel, from statistics of the
calibration photos, so that every channel spans about ±4 around zero. The float network is the
same function (checked: ≥ 80 dB PSNR against the original), and the per-tensor int8 grid then
fits every channel: +1.5 to +4.3 dB. The high-resolution encoder and decoder layers remain the
most sensitive (their ranges follow each photo's contrast), hence int8 in the residual blocks
only.

Tiled inference runs the quantised ``FrozenNormNet`` export: the norms there are the affine
maps of the image's statistics (recorded in PyTorch on the thumbnail), which ``Int8Runner``
maps onto the equalised convs (``equalised_affine``). A painted style mask runs in PyTorch
(float), as for ``onnxruntime``: ONNX has no per-pixel style input.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fast_style.core.fileio import atomic_write
from fast_style.core.imaging import load_rgb, pil_to_tensor, resize_long_side
from fast_style.core.network import (
    STAGE_GROUPS,
    ConvNormAct,
    TransformerNet,
    named_norms,
    named_stages,
    norm_params,
)
from fast_style.core.resources import photos_dir
from fast_style.infer.backends.ort import (
    OrtRunner,
    cached_onnx,
    hash_weights,
    onnx_cache_dir,
    onnxruntime_available,
)
from fast_style.infer.deploy import NORM_INPUT_NAME, STYLE_INPUT_NAME

log = logging.getLogger(__name__)

INT8_VERSION = 2  # bump when this module's output changes (invalidates cached models)
INT8_PSNR_KEY = "int8_psnr_db"  # model metadata: the measured PSNR (dB) of int8 against fp32
INT8_MIN_PSNR_DB = 38.0  # the least PSNR for which ``auto`` uses int8
META_KEY = "fast_style_int8"  # the quantised model's metadata_props entry (recipe, tables)
CALIBRATIONS = ("minmax", "percentile", "entropy")
GROUPS = (*STAGE_GROUPS, "output")  # what Int8Recipe.float_groups may name
EQUALISED_RANGE = 4.0  # an equalised conv output spans about ±this around zero
EPS_TOLERANCE = 1e-3  # the most an equalisation may change a norm's denominator (relative)
INSTALL_HINT = "backend 'ort-int8' needs: pip install 'fast_style[export]'"


@dataclass(frozen=True)
class Int8Recipe:
    """How a network is quantised (part of the cache key).

    ``float_groups``: stage groups (``GROUPS``) whose convolutions stay float32.
    ``calibration``: activation ranges by ``CALIBRATIONS`` (ONNX Runtime's calibrators).
    ``calib_sizes``: long sides (px) at which each shipped photo is a calibration input.
    ``per_channel``: int8 weights per output channel (else per tensor).
    ``equalise``: rescale the convs feeding instance norms first (module docstring).
    ``symmetric``: int8 activations symmetric around 0 (else uint8 with a zero point).
    ``quantize_adds``: the residual blocks' skip additions in int8 too (``QLinearAdd``).
    ``compact``: the file made small (``compact_model``): the float groups' conv weights stored
    in int8 too (weight-only: dequantised on load, computed in float32), short tensor names, no
    shape annotations."""

    float_groups: tuple[str, ...] = ("encoder", "decoder", "output")
    calibration: str = "percentile"
    calib_sizes: tuple[int, ...] = (512, 768)
    per_channel: bool = True
    equalise: bool = True
    symmetric: bool = False
    quantize_adds: bool = False
    compact: bool = True

    def __post_init__(self) -> None:
        bad = [g for g in self.float_groups if g not in GROUPS]
        if bad:
            raise ValueError(f"float_groups: unknown group(s) {bad} (choose from {GROUPS})")
        if set(self.float_groups) >= set(GROUPS):
            raise ValueError("float_groups names every group: nothing would be quantised")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, not {self.calibration}")
        if not self.calib_sizes or not all(16 <= s <= 4096 for s in self.calib_sizes):
            raise ValueError(f"calib_sizes must be long sides in 16..4096, got {self.calib_sizes}")

    def key(self) -> str:
        """A stable text form (cache keys, the quantised model's metadata)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


DEFAULT_RECIPE = Int8Recipe()


def int8_available() -> bool:
    """True when ONNX Runtime and its quantisation tools can be imported."""
    if not onnxruntime_available():
        return False
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        return False
    return True


def int8_measured_ok(meta: dict[str, Any] | None) -> bool:
    """True when model metadata records ``INT8_PSNR_KEY`` ≥ ``INT8_MIN_PSNR_DB`` (a finite
    number; anything else, or no entry, is False)."""
    value = (meta or {}).get(INT8_PSNR_KEY)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return bool(np.isfinite(value)) and value >= INT8_MIN_PSNR_DB


# --------------------------------------------------------------------------------------------
# Calibration inputs and the equalisation of the convs that feed instance norms.

Pair = tuple[torch.Tensor, torch.Tensor | None]  # image (1, 3, H, W) in [0, 1], style (1, S)


def calibration_photos() -> list[Path]:
    """The shipped photos (``fast_style.core.resources.photos_dir``), sorted by name."""
    photos = sorted(photos_dir().glob("*.jpg"))
    if not photos:
        raise FileNotFoundError(f"no calibration photos (*.jpg) in {photos_dir()}")
    return photos


def calibration_pairs(
    net: TransformerNet, sizes: Sequence[int], same_shape: bool = False
) -> list[Pair]:
    """(image, style) calibration inputs: every shipped photo at every long side in ``sizes``
    (``same_shape``: centre-cropped to the smallest, as ONNX Runtime's histogram calibrations
    need); a multi-style network cycles through its styles (one-hot rows), with more inputs
    when it has more styles than that (up to 16)."""
    images = [
        pil_to_tensor(resize_long_side(load_rgb(p), s))[None]
        for s in sizes
        for p in calibration_photos()
    ]
    if same_shape:
        h, w = min(x.shape[-2] for x in images), min(x.shape[-1] for x in images)
        images = [_centre_crop(x, h, w) for x in images]
    styles = net.num_styles
    if styles == 1:
        return [(x, None) for x in images]
    eye = torch.eye(styles)
    n = max(len(images), min(styles, 16))
    return [(images[i % len(images)], eye[i % styles][None]) for i in range(n)]


def _centre_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    y0, x0 = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., y0 : y0 + h, x0 : x0 + w].contiguous()


def _conv_units(net: TransformerNet) -> dict[int, ConvNormAct]:
    """The conv unit feeding each norm, keyed by the norm's ``id``."""
    return {id(m.norm): m for m in net.modules() if isinstance(m, ConvNormAct)}


def _fp32_feeds(pairs: Sequence[Pair]) -> list[dict[str, np.ndarray]]:
    """The ONNX inputs (``image``, and ``style`` for a multi-style network) of ``pairs``."""
    feeds = []
    for x, style in pairs:
        feed = {"image": np.ascontiguousarray(x.numpy(), dtype=np.float32)}
        if style is not None:
            feed[STYLE_INPUT_NAME] = np.ascontiguousarray(style.numpy(), dtype=np.float32)
        feeds.append(feed)
    return feeds


def norm_input_stats(net: TransformerNet, pairs: Sequence[Pair]) -> list[list[torch.Tensor]]:
    """Per norm, in ``named_norms`` order: the channel statistics of its input (the output of
    the conv feeding it) on each pair: [mean, variance, min, max], each (N, C). Run by ONNX
    Runtime on the fp32 export (``cached_onnx``) with every ``InstanceNormalization`` input as
    an extra output: several times faster than PyTorch on a small CPU."""
    import onnx
    import onnxruntime as ort

    model = onnx.load_from_string(cached_onnx(net))
    inputs = [n.input[0] for n in model.graph.node if n.op_type == "InstanceNormalization"]
    norms = len(named_norms(net))
    if len(inputs) != norms:
        raise RuntimeError(f"int8: {len(inputs)} instance norms in the export, {norms} in net")
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in inputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    records: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in inputs]
    for feed in _fp32_feeds(pairs):
        for rec, y in zip(records, session.run(inputs, feed), strict=True):
            t, dims = torch.from_numpy(y).float(), (0, 2, 3)
            var, mean = torch.var_mean(t, dims, unbiased=False)
            rec.append((mean, var, t.amin(dims), t.amax(dims)))
    return [[torch.stack(col) for col in zip(*rec, strict=True)] for rec in records]


def _channel_scale(stats: list[torch.Tensor], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, μ) (C,) of one conv unit from its ``norm_input_stats``: its output becomes
    s · (y − μ), spanning about ±``EQUALISED_RANGE``. A channel whose norm would change by more
    than ``EPS_TOLERANCE`` (variance near the norm's eps, or constant) keeps s = 1, μ = 0."""
    mean_i, var_i, min_i, max_i = stats
    mu = mean_i.mean(0)
    spread = torch.maximum(max_i.amax(0) - mu, mu - min_i.amin(0))
    s = EQUALISED_RANGE / spread.clamp_min(1e-30)
    # IN(s·y) divides by sqrt(var + eps / s²) instead of sqrt(var + eps)
    change = eps * (1 / s**2 - 1).abs() / (var_i.amin(0) + eps)
    ok = (spread > 0) & (change <= EPS_TOLERANCE)
    return torch.where(ok, s, torch.ones_like(s)), torch.where(ok, mu, torch.zeros_like(mu))


def equalise(
    net: TransformerNet, stats: Sequence[list[torch.Tensor]]
) -> tuple[TransformerNet, torch.Tensor, torch.Tensor]:
    """A copy of ``net`` with each conv that feeds a norm rescaled and shifted per output
    channel (the same function: the norm is invariant to that), from ``norm_input_stats``;
    and the tables (s, μ), each (ΣC,) in ``named_norms`` order: that conv's output is
    s · (y − μ) for the original output y (s = 1, μ = 0 for norms fed by no conv unit)."""
    net = copy.deepcopy(net).float().cpu().eval()
    units = _conv_units(net)
    scales, means = [], []
    with torch.no_grad():
        for (_, norm), norm_stats in zip(named_norms(net), stats, strict=True):
            unit = units.get(id(norm))
            s, mu = _channel_scale(norm_stats, norm_params(norm)[2])
            if unit is None or unit.conv.bias is None:
                s, mu = torch.ones_like(s), torch.zeros_like(mu)
            else:
                w = unit.conv.weight
                w.mul_(s.view(-1, *([1] * (w.dim() - 1))))
                unit.conv.bias.copy_(s * (unit.conv.bias - mu))
            scales.append(s)
            means.append(mu)
    return net, torch.cat(scales), torch.cat(means)


def equalised_affine(affine: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``norm_affine`` (2, ΣC) of the original network (``tiling.pack_norm_affine``) → that of
    the equalised one: y · a + b = y' · (a / s) + (b + a · μ) for y' = s · (y − μ)."""
    if affine.dim() != 2 or affine.shape != (2, scale.numel()):
        raise ValueError(f"norm_affine must be (2, {scale.numel()}), got {tuple(affine.shape)}")
    a, b = affine.float().cpu()
    return torch.stack([a / scale, b + a * mean])


# --------------------------------------------------------------------------------------------
# Quantisation.


def _frozen_feeds(
    net: TransformerNet,
    pairs: Sequence[Pair],
    stats: Sequence[list[torch.Tensor]],
    tables: tuple[torch.Tensor, torch.Tensor],
) -> list[dict[str, np.ndarray]]:
    """The inputs of the frozen export for each pair: ``image`` and its own ``norm_affine``
    (its statistics, its style folded in), packed for the original ``net`` and mapped onto the
    equalised one as ``Int8Runner`` does at run time."""
    from fast_style.infer.tiling import NormStats, pack_norm_affine

    names = [n for n, _ in named_norms(net)]
    feeds = []
    for i, (x, style) in enumerate(pairs):
        recorded = NormStats([t[0][i : i + 1] for t in stats], [t[1][i : i + 1] for t in stats])
        recorded.names = names
        affine = equalised_affine(pack_norm_affine(net, recorded, style), *tables)
        feeds.append({"image": np.ascontiguousarray(x.numpy()), NORM_INPUT_NAME: affine.numpy()})
    return feeds


def int8_nodes(model: Any, net: TransformerNet, recipe: Int8Recipe) -> list[str]:
    """Names of the nodes of the ONNX ``model`` (an export of ``net``) to quantise: every
    ``Conv`` outside ``recipe.float_groups`` and, with ``recipe.quantize_adds``, the skip
    ``Add`` of each such residual stage. A node is placed by the first part of its scope name
    that names a stage (``/res1/conv1/conv/Conv`` → ``residuals``); ``RuntimeError`` for a
    conv that names none."""
    group_of = {name.rsplit(".", 1)[-1]: name.split(".")[0] for name, _ in named_stages(net)}
    picked = []
    for node in model.graph.node:
        parts = node.name.split("/")
        group = next((group_of[p] for p in parts if p in group_of), None)
        if node.op_type == "Conv" and group is None:
            raise RuntimeError(f"int8: ONNX node {node.name!r} is in no stage of the network")
        if group is None or group in recipe.float_groups:
            continue
        # the skip add of a residual stage is its own top-level Add (/res1/Add)
        skip_add = node.op_type == "Add" and parts[-1] == "Add" and parts[-2] in group_of
        if node.op_type == "Conv" or (recipe.quantize_adds and group == "residuals" and skip_add):
            picked.append(node.name)
    return picked


def _quantize_file(src: Path, dst: Path, nodes: list[str], feeds: list, recipe: Int8Recipe) -> None:
    """``quantize_static`` of the ONNX file ``src`` (only ``nodes``) into ``dst``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    extra: dict[str, Any] = {"ActivationSymmetric": recipe.symmetric}
    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=recipe.per_channel,
        activation_type=QuantType.QInt8 if recipe.symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv", "Add"] if recipe.quantize_adds else ["Conv"],
        nodes_to_quantize=nodes,
        calibrate_method=methods[recipe.calibration],
        extra_options=extra,
    )


def quantize_int8(
    net: TransformerNet, recipe: Int8Recipe = DEFAULT_RECIPE, frozen_norms: bool = False
) -> bytes:
    """The int8 ONNX model of ``net`` (``DeployNet``, or ``FrozenNormNet`` with
    ``frozen_norms``) by ``recipe``, serialised; its metadata entry ``META_KEY`` holds the
    recipe and the equalisation tables (``equalised_affine``). Seconds on a small CPU."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fast_style.infer.export import to_onnx_bytes

    net = copy.deepcopy(net).float().cpu().eval()
    pairs = calibration_pairs(net, recipe.calib_sizes, recipe.calibration != "minmax")
    stats = norm_input_stats(net, pairs)
    if recipe.equalise:
        quantized, scale, mean = equalise(net, stats)
    else:
        channels = sum(norm_params(m)[0].shape[-1] for _, m in named_norms(net))
        quantized, scale, mean = net, torch.ones(channels), torch.zeros(channels)
    feeds = _frozen_feeds(net, pairs, stats, (scale, mean)) if frozen_norms else _fp32_feeds(pairs)
    with tempfile.TemporaryDirectory(prefix="fast_style_int8_") as tmp:
        src, pre, dst = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(to_onnx_bytes(quantized, frozen_norms=frozen_norms))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        nodes = int8_nodes(onnx.load(str(pre)), net, recipe)
        _quantize_file(pre, dst, nodes, feeds, recipe)
        model = onnx.load(str(dst))
    if recipe.compact:
        compact_model(model)
    info: dict[str, Any] = {"int8_version": INT8_VERSION, "recipe": json.loads(recipe.key())}
    if frozen_norms:  # only the frozen-norm graph takes norm affines, which need the tables
        info["norm_scale"], info["norm_mean"] = scale.tolist(), mean.tolist()
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(info)
    return model.SerializeToString()


def weight_only_int8(model: Any) -> int:
    """Every ``Conv`` of the ONNX ``model`` whose weight is still a float32 initializer gets it
    as int8, symmetric per output channel as in int8 model files (``model_io.int8_per_channel``),
    behind a ``DequantizeLinear``: the conv still computes in float32, with weights rounded to 8
    bits. In place; returns how many weights were converted."""
    from onnx import TensorProto, helper, numpy_helper

    from fast_style.core.model_io import int8_per_channel

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    added, count = [], 0
    for node in graph.node:
        w_init = inits.get(node.input[1]) if node.op_type == "Conv" else None
        if w_init is None or w_init.data_type != TensorProto.FLOAT:
            continue
        q, scale = int8_per_channel(torch.from_numpy(numpy_helper.to_array(w_init)))
        name = w_init.name
        graph.initializer.remove(w_init)
        graph.initializer.extend(
            [
                numpy_helper.from_array(q.numpy(), f"{name}_q"),
                numpy_helper.from_array(scale.numpy(), f"{name}_s"),
            ]
        )
        dq = [f"{name}_q", f"{name}_s"]  # no zero point: symmetric (it defaults to 0)
        added.append(helper.make_node("DequantizeLinear", dq, [name], axis=0))
        count += q.numel()
    for i, node in enumerate(added):  # they read initializers only: first is topological
        graph.node.insert(i, node)
    return count


def compact_model(model: Any) -> None:
    """The int8 ONNX ``model`` made small, in place: float conv weights to int8
    (``weight_only_int8``), the quantisation tools' shape annotations and the node names
    dropped, and every inner tensor renamed to a short id (the graph's inputs and outputs keep
    theirs). The same computation: names are labels and ONNX Runtime infers shapes again."""
    weight_only_int8(model)
    graph = model.graph
    del graph.value_info[:]
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names):x}")

    for t in graph.initializer:
        t.name = short(t.name)
    for node in graph.node:
        node.name, node.doc_string = "", ""  # names are optional in ONNX
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]


def int8_cache_path(net: TransformerNet, recipe: Int8Recipe, frozen_norms: bool) -> Path:
    """Where the int8 model of ``net`` is cached: ``onnx_cache_dir()/int8/<key>.onnx``, the key
    a hash of the weights, the recipe, the calibration photos, this module's, the deployed
    graph's and the tools' versions (fast_style, torch, onnx, onnxruntime)."""
    import onnx
    import onnxruntime

    from fast_style import __version__
    from fast_style.infer.deploy import DEPLOY_VERSION

    versions = (__version__, DEPLOY_VERSION, INT8_VERSION, torch.__version__, onnx.__version__)
    key = f"int8/{versions}/{onnxruntime.__version__}/{recipe.key()}/{frozen_norms}"
    h = hashlib.sha256(key.encode())
    for photo in calibration_photos():
        h.update(photo.name.encode())
        h.update(photo.read_bytes())
    hash_weights(h, net)
    return onnx_cache_dir() / "int8" / f"{h.hexdigest()[:32]}.onnx"


def cached_int8(
    net: TransformerNet,
    recipe: Int8Recipe = DEFAULT_RECIPE,
    frozen_norms: bool = False,
    refresh: bool = False,
) -> bytes:
    """``quantize_int8`` of ``net``, cached on disk (``int8_cache_path``; written atomically,
    an unwritable cache is skipped): quantising once takes seconds, loading milliseconds."""
    path = int8_cache_path(net, recipe, frozen_norms)
    if not refresh:
        try:
            return path.read_bytes()
        except OSError:
            pass
    log.info("quantising the model to int8 (once; cached in %s)", path.parent)
    data = quantize_int8(net, recipe, frozen_norms)
    try:
        with atomic_write(path) as tmp:
            tmp.write_bytes(data)
    except OSError:
        pass
    return data


class Int8Runner(OrtRunner):
    """``OrtRunner`` of the int8 model (``cached_int8``): the same call, inputs and outputs.

    ``runner(x, norm_affine=None, style=None)``: ``x`` (B, 3, H, W) in [0, 1] → same shape;
    ``norm_affine`` (2, ΣC) with ``frozen_norms``: the original network's (as for
    ``OrtRunner``; mapped onto the equalised convs here)."""

    def __init__(
        self,
        net: TransformerNet,
        threads: int | None = None,
        frozen_norms: bool = False,
        recipe: Int8Recipe = DEFAULT_RECIPE,
    ):
        self.recipe = recipe
        self.norm_scale = torch.ones(0)
        self.norm_mean = torch.zeros(0)
        super().__init__(net, threads, frozen_norms)

    def _model_bytes(self, net: TransformerNet, frozen_norms: bool, refresh: bool) -> bytes:
        return cached_int8(net, self.recipe, frozen_norms, refresh)

    def _open(self, session: Any) -> Any:
        """Read the equalisation tables of the model (KeyError/ValueError: not ours)."""
        info = json.loads(session.get_modelmeta().custom_metadata_map[META_KEY])
        if info.get("int8_version") != INT8_VERSION:
            raise ValueError("an int8 model of another version")
        if "norm_scale" in info:  # only frozen-norm models carry the tables
            self.norm_scale = torch.tensor(info["norm_scale"], dtype=torch.float32)
            self.norm_mean = torch.tensor(info["norm_mean"], dtype=torch.float32)
        return session

    def __call__(
        self,
        x: torch.Tensor,
        norm_affine: torch.Tensor | None = None,
        style: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if norm_affine is not None:
            norm_affine = equalised_affine(norm_affine, self.norm_scale, self.norm_mean)
        return super().__call__(x, norm_affine, style)
