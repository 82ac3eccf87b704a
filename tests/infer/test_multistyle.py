"""Multi-style networks (conditional instance norm) in every derived form and backend: style
weights (one style, mixes, one row per image) and painted two-style masks, against eager.

A random 3-style tiny network with γ/β of both signs. Tolerances as elsewhere: 1e-5 for PyTorch
forms, 1e-4 for ONNX Runtime and the fused kernels, one 8-bit level for images.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from fast_style.core.imaging import pil_to_tensor
from fast_style.core.network import ConditionalInstanceNorm, TransformerNet
from fast_style.infer.backends import fused as fused_cpu
from fast_style.infer.backends.ort import OrtRunner, onnxruntime_available
from fast_style.infer.deploy import DeployNet, FrozenNormNet, PaintedStyle
from fast_style.infer.export import (
    CONVERTER_SAFE_OPS,
    export_onnx,
    export_torchscript,
    to_onnx_bytes,
    to_torchscript,
)
from fast_style.infer.postprocess import feather_mask
from fast_style.infer.stylizer import Stylizer, check_style_weights
from fast_style.infer.tiling import frozen_norm_stats, pack_norm_affine, record_norm_stats
from tests._stylize_helpers import photo, tiny_net

FUSED = fused_cpu.fused_available()
needs_fused = pytest.mark.skipif(not FUSED, reason="fused CPU kernels unavailable")
needs_ort = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")

A, B = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
MIX = torch.tensor([0.5, 0.2, 0.3])
ROWS = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.2, 0.8]])  # a painted pair: all 3 styles in use
NAMES = ["starry", "wave", "scream"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Keep built kernels and ONNX exports of these tests out of the user's home."""
    monkeypatch.setenv("FAST_STYLE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def multi_net(styles: int = 3, seed: int = 5) -> TransformerNet:
    """Tiny random network with every style's γ/β different, of both signs."""
    torch.manual_seed(seed)
    net = TransformerNet((8, 16, 16), num_residual=1, num_styles=styles).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ConditionalInstanceNorm):
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net


def half_mask(h: int, w: int, batch: int = 1) -> torch.Tensor:
    """(batch, 1, h, w): 1 on the left, 0 on the right, a soft ramp between (then flipped for
    the second image of a batch, so that the images' masks differ)."""
    ramp = ((w / 2 + 3 - torch.arange(w)) / 6).clamp(0, 1).expand(h, w)
    masks = [ramp if i % 2 == 0 else ramp.flip(-1) for i in range(batch)]
    return torch.stack(masks)[:, None].contiguous()


@pytest.fixture(scope="module")
def net() -> TransformerNet:
    return multi_net()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(6)
    return torch.rand(2, 3, 37, 45)


def _stylizer(net: TransformerNet, backend: str, **kw) -> Stylizer:
    meta = {"styles": [{"name": n} for n in NAMES], "style": "multi"}
    return Stylizer(net, device="cpu", backend=backend, meta=meta, **kw)


# --- the network and its derived forms -------------------------------------------------------


def test_one_hot_weights_are_exactly_that_style(net, x):
    with torch.no_grad():
        first = net(x)
        assert torch.equal(net(x, A[None].expand(2, 3)), first)  # = style None
        assert (net(x, B[None]) - first).abs().max() > 0.05  # the styles differ
        d = DeployNet(net)
        assert torch.equal(d(x, A[None]), d(x))
    if FUSED:
        runner = fused_cpu.FusedRunner(net)
        assert torch.equal(runner(x, style=A), runner(x))
    eager = _stylizer(net, "eager")
    assert torch.equal(eager.stylize_tensor(x, style=A), eager.stylize_tensor(x))


def _styles(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Style inputs of the forms that take tensors: per-image rows, and a per-pixel map."""
    painted = PaintedStyle(ROWS, half_mask(*x.shape[-2:], batch=x.shape[0]))
    return {"rows": torch.stack([MIX, B]), "map": painted.to_map()}


def test_deploy_and_torchscript_take_weights_and_maps(net, x):
    scripted = to_torchscript(net)
    with torch.no_grad():
        for name, style in _styles(x).items():
            want = net(x, style)
            torch.testing.assert_close(DeployNet(net)(x, style), want, atol=1e-5, rtol=0)
            got = scripted(x, style)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=name)


@needs_fused
def test_fused_runner_weights_painted_masks_and_maps(net, x):
    runner = fused_cpu.FusedRunner(net)
    styles = _styles(x)
    mask = half_mask(*x.shape[-2:], batch=2)
    with torch.no_grad():
        torch.testing.assert_close(
            runner(x, style=styles["rows"]), net(x, styles["rows"]), atol=1e-4, rtol=0
        )
        want = net(x, styles["map"])
        torch.testing.assert_close(
            runner(x, style=PaintedStyle(ROWS, mask)), want, atol=1e-4, rtol=0
        )
        # a map of two styles is run as a painted mask; one of three falls back, with a warning
        two = PaintedStyle(torch.stack([A, B]), mask).to_map()
        assert isinstance(PaintedStyle.from_map(two), PaintedStyle)
        torch.testing.assert_close(runner(x, style=two), net(x, two), atol=1e-4, rtol=0)
        assert PaintedStyle.from_map(styles["map"]) is None
        with pytest.warns(RuntimeWarning, match="more than two styles"):
            got = runner(x, style=styles["map"])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@needs_fused
def test_fused_white_and_black_masks_are_the_two_styles(net, x):
    runner = fused_cpu.FusedRunner(net)
    h, w = x.shape[-2:]
    with torch.no_grad():
        for fill, row in ((1.0, ROWS[0]), (0.0, ROWS[1])):
            got = runner(x, style=PaintedStyle(ROWS, torch.full((1, 1, h, w), fill)))
            torch.testing.assert_close(got, net(x, row[None]), atol=1e-4, rtol=0)


@needs_ort
def test_onnx_export_takes_the_style_weights(net, x):
    import onnx
    import onnxruntime as ort

    data = to_onnx_bytes(net)
    model = onnx.load_from_string(data)
    assert [i.name for i in model.graph.input] == ["image", "style"]
    ops = {n.op_type for n in model.graph.node}
    assert "MatMul" in ops and ops <= CONVERTER_SAFE_OPS, ops - CONVERTER_SAFE_OPS
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rows = _styles(x)["rows"]
    got = session.run(None, {"image": x.numpy(), "style": rows.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x, rows).numpy(), atol=1e-4, rtol=0)
        torch.testing.assert_close(
            OrtRunner(net)(x, style=MIX), net(x, MIX[None]), atol=1e-4, rtol=0
        )
    single = onnx.load_from_string(to_onnx_bytes(tiny_net()))
    assert [i.name for i in single.graph.input] == ["image"]  # one-style exports: unchanged


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_one_exported_file_serves_every_style(net, x, tmp_path):
    """One ONNX file and one TorchScript file, two styles and a mix: each equals eager."""
    ts_path = export_torchscript(net, tmp_path / "multi.pt", {"num_styles": 3})
    scripted = torch.jit.load(str(ts_path))
    session = None
    if onnxruntime_available():
        import onnxruntime as ort

        onnx_path = export_onnx(net, tmp_path / "multi.onnx", {"num_styles": 3})
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outs = []
    with torch.no_grad():
        for style in (A, B, MIX):
            rows = style[None].expand(2, 3).contiguous()
            want = net(x, rows)
            torch.testing.assert_close(scripted(x, rows), want, atol=1e-5, rtol=0)
            if session is not None:
                got = session.run(None, {"image": x.numpy(), "style": rows.numpy()})[0]
                np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
            outs.append(want)
    assert (outs[0] - outs[1]).abs().max() > 0.05


def test_frozen_statistics_forms_with_styles(net):
    """Tiles: statistics recorded with the style, then frozen, in every form."""
    torch.manual_seed(7)
    thumb, tile = torch.rand(1, 3, 40, 36), torch.rand(1, 3, 28, 32)
    deploy = DeployNet(net).eval()
    runner = fused_cpu.FusedRunner(net) if FUSED else None
    with torch.no_grad():
        for style in (MIX[None], PaintedStyle(ROWS, half_mask(40, 36))):
            thumb_style = style.to_map() if isinstance(style, PaintedStyle) else style
            with record_norm_stats(deploy) as stats:
                deploy(thumb, thumb_style)
            tile_style = style
            if isinstance(style, PaintedStyle):
                tile_style = PaintedStyle(ROWS, half_mask(28, 32))
            tile_map = tile_style.to_map() if isinstance(tile_style, PaintedStyle) else style
            with frozen_norm_stats(deploy, stats):
                want = deploy(tile, tile_map)
            with frozen_norm_stats(net, stats):  # the plain network's (GPU) frozen path
                torch.testing.assert_close(net(tile, tile_map), want, atol=1e-5, rtol=0)
            affine = pack_norm_affine(deploy, stats, style)
            if isinstance(style, PaintedStyle):
                assert affine.shape[:2] == (2, 2)
            else:
                torch.testing.assert_close(
                    FrozenNormNet(net)(tile, affine), want, atol=1e-5, rtol=0
                )
            if runner is not None:
                got = runner(tile, affine, style=tile_style)
                torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    with record_norm_stats(deploy) as none_stats, torch.no_grad():
        deploy(thumb)
    assert not torch.allclose(none_stats.means[-1], stats.means[-1])  # statistics follow the style


# --- Stylizer -------------------------------------------------------------------------------


BACKENDS = (
    ["eager"] + (["fused"] if FUSED else []) + (["onnxruntime"] if onnxruntime_available() else [])
)


@pytest.fixture(scope="module")
def stylizers(net) -> dict[str, Stylizer]:
    return {b: _stylizer(net, b, stats_pixels=96 * 64) for b in BACKENDS}


def test_names_and_count(stylizers):
    s = stylizers["eager"]
    assert s.num_styles == 3 and s.style_names == NAMES
    plain = Stylizer(tiny_net(), device="cpu", backend="eager", meta={"style": "tiny"})
    assert plain.num_styles == 1 and plain.style_names == ["tiny"]
    unnamed = Stylizer(multi_net(2), device="cpu", backend="eager", meta={"styles": [{}]})
    assert unnamed.style_names == ["style1", "style2"]


def test_stylize_tensor_mixes_in_every_backend(stylizers, net, x):
    rows = torch.stack([MIX * 2, B])  # not normalised: the Stylizer normalises each row
    with torch.no_grad():
        want_rows, want_mix = net(x, torch.stack([MIX, B])), net(x, MIX[None])
    for backend, s in stylizers.items():
        torch.testing.assert_close(s.stylize_tensor(x, style=rows), want_rows, atol=1e-4, rtol=0)
        got = s.stylize_tensor(x, style=MIX)
        torch.testing.assert_close(got, want_mix, atol=1e-4, rtol=0, msg=backend)


def test_tiled_mixes_agree_across_backends_and_with_the_whole_image(stylizers):
    x = pil_to_tensor(photo(150, 101)).unsqueeze(0)
    eager = stylizers["eager"]
    want = eager.stylize_tensor(x, style=MIX, tile=64, overlap=16, preserve_color=True)
    for s in stylizers.values():
        got = s.stylize_tensor(x, style=MIX, tile=64, overlap=16, preserve_color=True)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    big = Stylizer(eager.net, device="cpu", backend="eager")  # exact statistics: ~ untiled
    whole = big.stylize_tensor(x, style=MIX)
    tiled = big.stylize_tensor(x, style=MIX, tile=128, overlap=32)  # 2 tiles, small borders
    assert (tiled - whole).abs().mean() < 1e-4


def _levels(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def test_white_and_black_masks_give_the_two_styles(stylizers):
    img = photo(48, 32)
    white, black = Image.new("L", (24, 16), 255), Image.new("L", (96, 64), 0)  # 3:2 as img
    for s in stylizers.values():
        a, b = s.stylize_image(img, style=ROWS[0]), s.stylize_image(img, style=ROWS[1])
        assert _levels(s.stylize_image(img, style=ROWS, style_mask=white), a) <= 1
        assert _levels(s.stylize_image(img, style=ROWS, style_mask=black), b) <= 1
        assert _levels(a, b) > 20


def test_painted_mask_matches_the_eager_per_pixel_map(stylizers, net):
    img, mask = photo(60, 40), Image.new("L", (60, 40), 0)
    mask.paste(255, (0, 0, 30, 40))  # white (row 0) on the left half
    soft = pil_to_tensor(feather_mask(mask, img.size)).unsqueeze(0)
    with torch.no_grad():
        want = net(pil_to_tensor(img).unsqueeze(0), PaintedStyle(ROWS, soft).to_map())
    want_img = Image.fromarray((want[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    for s in stylizers.values():
        assert _levels(s.stylize_image(img, style=ROWS * 3, style_mask=mask), want_img) <= 1


def test_tiled_painted_mask_agrees_across_backends(stylizers):
    img, mask = photo(150, 101), Image.new("L", (150, 101), 0)
    mask.paste(255, (0, 0, 75, 101))
    opts = {"style": ROWS, "style_mask": mask, "tile": 64, "overlap": 16}
    want = stylizers["eager"].stylize_image(img, **opts)
    for s in stylizers.values():
        assert _levels(s.stylize_image(img, **opts), want) <= 1
    big = Stylizer(stylizers["eager"].net, device="cpu", backend="eager")
    whole = np.asarray(big.stylize_image(img, style=ROWS, style_mask=mask), np.float32)
    tiled = big.stylize_image(img, **{**opts, "tile": 128, "overlap": 32})  # 2 tiles
    # 8-bit levels: the tiles see the styles of the whole image (statistics and mask)
    assert np.abs(whole - np.asarray(tiled, np.float32)).mean() < 0.05


def test_stylize_images_passes_the_style_through(stylizers):
    s = stylizers["eager"]
    imgs = [photo(20, 16, 1), photo(20, 16, 2), photo(13, 9, 3)]
    for img, out in zip(imgs, s.stylize_images(imgs, style=MIX), strict=True):
        assert _levels(out, s.stylize_image(img, style=MIX)) <= 1


_BAD = {
    "wrong length": ({"style": torch.tensor([1.0, 0.0])}, "3 weights per row"),
    "negative": ({"style": torch.tensor([1.0, -0.5, 0.0])}, "≥ 0"),
    "all zero": ({"style": torch.zeros(3)}, "positive weight"),
    "not finite": ({"style": torch.tensor([1.0, float("nan"), 0.0])}, "finite"),
    "not a tensor": ({"style": "starry"}, "tensor of style weights"),
    "one row for a mask": ({"style": MIX, "style_mask": Image.new("L", (48, 32))}, "2 row"),
    "mask without style": ({"style_mask": Image.new("L", (48, 32))}, "needs style"),
    "mask of another shape": ({"style": ROWS, "style_mask": Image.new("L", (32, 32))}, "aspect"),
    "mask not an image": ({"style": ROWS, "style_mask": torch.ones(32, 48)}, "PIL image"),
}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_bad_style_inputs_are_one_clear_error(stylizers, case):
    kw, message = _BAD[case]
    with pytest.raises(ValueError, match=re.escape(message)) as err:  # MaskSizeError is one
        stylizers["eager"].stylize_image(photo(48, 32), **kw)
    assert "\n" not in str(err.value)


def test_bad_style_batches_and_kernel_masks(stylizers, x):
    with pytest.raises(ValueError, match="1 or 2 row"):
        stylizers["eager"].stylize_tensor(x, style=torch.ones(3, 3))
    with pytest.raises(ValueError, match="3 weights"):
        check_style_weights([[1.0, 2.0]], 3)
    if FUSED:
        runner = fused_cpu.FusedRunner(multi_net())
        with pytest.raises(ValueError, match="style mask"):
            runner(x, style=PaintedStyle(ROWS, torch.ones(1, 1, 10, 10)))
        src = fused_cpu.Source(torch.rand(1, 8, 6, 6).contiguous(memory_format=torch.channels_last))
        one = torch.ones(8)
        with pytest.raises(ValueError, match="mask must be"):
            fused_cpu.norm_apply(
                src,
                one,
                one,
                relu=True,
                pad=1,
                mask=torch.ones(1, 5, 6),
                mask_scale=one,
                mask_shift=one,
            )
        with pytest.raises(ValueError, match="come together"):
            fused_cpu.norm_apply(src, one, one, relu=True, pad=1, mask=torch.ones(1, 6, 6))


def test_a_one_style_model_checks_and_ignores_the_style():
    s = Stylizer(tiny_net(), device="cpu", backend="fused" if FUSED else "eager")
    img, x = photo(24, 16), torch.rand(1, 3, 16, 24)
    assert torch.equal(s.stylize_tensor(x, style=torch.tensor([2.0])), s.stylize_tensor(x))
    half = Image.new("L", (24, 16), 0)
    painted = s.stylize_image(img, style=torch.ones(2, 1), style_mask=half)
    assert _levels(painted, s.stylize_image(img)) == 0
    with pytest.raises(ValueError, match="1 weights per row"):
        s.stylize_tensor(x, style=MIX)


def test_the_mix_of_one_style_with_itself_is_that_style(stylizers):
    """Two equal rows need no mask: the painted path is skipped, the result is the style's."""
    img, mask = photo(30, 20), Image.new("L", (30, 20), 128)
    s = stylizers["eager"]
    same = torch.stack([MIX, MIX * 4])
    assert (
        _levels(s.stylize_image(img, style=same, style_mask=mask), s.stylize_image(img, style=MIX))
        == 0
    )
