"""The flow stabiliser: it removes the flicker a frame function adds, leaves a steady one alone,
restarts at a scene cut, keeps texture contrast, and blend 0 changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fast_style.video import stabilize as S
from fast_style.video.clips import render_camera_path
from fast_style.video.metrics import evaluate_exact
from fast_style.video.stabilize import FlowStabilizer, flow_coords, restore_contrast, to_grid

SIZE = (96, 64)


@pytest.fixture(scope="module")
def pan():
    return render_camera_path(None, SIZE, 8, "pan")


def _tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (T, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255


class Flicker:
    """A frame function with a new random texture on every frame (what a style network's
    shimmer looks like to the metric): x + 0.15 · noise_t."""

    def __init__(self) -> None:
        self.g = torch.Generator().manual_seed(0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 0.15 * torch.randn(x.shape, generator=self.g)).clamp(0, 1)


def _run(fn, frames: torch.Tensor, batch: int = 4) -> torch.Tensor:
    return torch.cat([fn(b) for b in frames.split(batch)])


def _e_warp(out: torch.Tensor, path) -> float:
    return evaluate_exact(list(out), path.flows, path.masks)["e_warp"]


def test_blend_zero_is_the_frame_function_exactly(pan):
    x = _tensor(pan.frames)
    torch.testing.assert_close(_run(FlowStabilizer(torch.sqrt, blend=0.0), x), x.sqrt())


def test_it_removes_the_flicker_a_frame_function_adds(pan):
    x = _tensor(pan.frames)
    plain = _e_warp(_run(Flicker(), x), pan)
    stable = _e_warp(_run(FlowStabilizer(Flicker()), x), pan)
    flat = _e_warp(_run(FlowStabilizer(Flicker(), restore=False), x), pan)
    assert stable < 0.6 * plain  # the default α = 0.55 leaves about 1 − α of it
    assert flat < stable  # restoring the contrast gives some of it back ...
    higher = _e_warp(_run(FlowStabilizer(Flicker(), blend=0.9), x), pan)
    assert higher < stable  # ... and a larger α removes more


def test_a_steady_frame_function_is_left_alone(pan):
    x = _tensor(pan.frames)
    out = _run(FlowStabilizer(torch.sqrt), x)
    assert (out - x.sqrt()).abs().mean() < 0.01  # no ghosts where the output already moves
    assert _e_warp(out, pan) < 2 * _e_warp(x.sqrt(), pan) + 1e-4


def test_a_scene_cut_restarts_the_filter(pan):
    x = _tensor(pan.frames)
    cut = torch.cat([x[:4], x[4:].flip(-2)])  # frames 4… show another scene
    fn = Flicker()
    out = _run(FlowStabilizer(fn), cut)
    torch.testing.assert_close(out[:1], Flicker()(cut)[:1])  # the first frame is the network's
    ref = Flicker()
    raw = torch.cat([ref(b) for b in cut.split(4)])
    assert (out[4] - raw[4]).abs().mean() < 0.2 * (out[3] - raw[3]).abs().mean()


def test_batches_state_reset_and_a_new_size():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 24, 40, generator=g)
    one, four = FlowStabilizer(torch.sqrt), FlowStabilizer(torch.sqrt)
    torch.testing.assert_close(_run(one, x, 1), _run(four, x, 4))  # state spans the calls
    four.reset()
    torch.testing.assert_close(four(x[:1]), x[:1].sqrt())  # after reset: the network's own
    torch.testing.assert_close(four(x[:1, :, :16]), x[:1, :, :16].sqrt())  # a new size restarts


def flow_grid(flow: np.ndarray, size: tuple[int, int], device: torch.device):
    tx, ty, inside = flow_coords(flow, size, device)
    return to_grid(tx, ty), inside


def test_flow_grid_pulls_along_the_flow_scaled_to_the_frame():
    img = torch.rand(1, 3, 16, 24)
    grid, inside = flow_grid(np.zeros((8, 12, 2), np.float32), (16, 24), torch.device("cpu"))
    torch.testing.assert_close(F.grid_sample(img, grid, align_corners=True), img)
    assert inside.all()
    shift = np.zeros((8, 12, 2), np.float32)
    shift[..., 0] = 1.0  # one pixel at half size: two at full size
    grid, inside = flow_grid(shift, (16, 24), torch.device("cpu"))
    pulled = F.grid_sample(img, grid, align_corners=True)
    torch.testing.assert_close(pulled[..., :-2], img[..., 2:])
    assert not inside[..., -2:].any() and inside[..., :-2].all()


def test_restore_contrast_gives_an_average_of_textures_its_contrast_back():
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    torch.testing.assert_close(restore_contrast(a, a), a)  # nothing to restore
    avg = (a + b) / 2
    restored = restore_contrast(avg, a)
    assert avg.std() < 0.8 * a.std() and restored.std() > 0.9 * a.std()
    # Never flattens: with a flatter reference, the blend is kept as it is.
    torch.testing.assert_close(restore_contrast(a, torch.full_like(a, 0.5)), a)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"blend": 1.0}, "blend"), ({"blend": -0.1}, "blend"), ({"tolerance": 0.0}, "tolerance")],
)
def test_bad_parameters_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        FlowStabilizer(torch.sqrt, **kw)


def test_an_unknown_flow_preset_is_refused():
    with pytest.raises(ValueError, match="preset must be one of"):
        FlowStabilizer(torch.sqrt, preset="slow")


@pytest.mark.parametrize("channels", [1, 8])
@pytest.mark.parametrize("r", [1, 2])
@pytest.mark.parametrize("box", [S._box, S._box_torch, lambda x, r: S._box_cv2([x], r)])
def test_local_means_are_box_filters_with_replicated_borders(box, r, channels):
    x = torch.rand(2, channels, 20, 30, generator=torch.Generator().manual_seed(4))
    k = 2 * r + 1
    inner = (..., slice(r, -r), slice(r, -r))
    torch.testing.assert_close(box(x, r)[inner], F.avg_pool2d(x, k, 1, r)[inner])
    padded = F.pad(x, (r, r, r, r), mode="replicate")
    torch.testing.assert_close(box(x, r), F.avg_pool2d(padded, k, 1))


def test_the_local_means_of_several_tensors_are_those_of_their_concatenation():
    g = torch.Generator().manual_seed(7)
    parts = [
        torch.rand(2, 3, 12, 16, generator=g),
        torch.rand(2, 1, 12, 16, generator=g)[:, :, :, :],
    ]
    parts.append(torch.rand(2, 16, 12, 2, generator=g).transpose(1, 3))  # not contiguous
    whole = S._box_torch(torch.cat(parts, 1), 1)
    torch.testing.assert_close(S._box(parts, 1), whole)
    torch.testing.assert_close(S._box_cv2(parts, 1), whole)


def _smooth_flow(h: int, w: int, amp: float, seed: int) -> np.ndarray:
    coarse = torch.randn(1, 2, 3, 4, generator=torch.Generator().manual_seed(seed)) * amp
    flow = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    return flow[0].permute(1, 2, 0).contiguous().numpy()


def test_the_cpu_warp_is_the_bicubic_grid_sample():
    img = F.avg_pool2d(
        torch.rand(1, 3, 40, 60, generator=torch.Generator().manual_seed(5)), 3, 1, 1
    )
    tx, ty, _ = S.flow_coords(_smooth_flow(20, 30, 3.0, 6), (40, 60), torch.device("cpu"))
    imgs = [img, img.flip(-1)]  # two images, as the stabiliser pulls (one grid_sample)
    for fast, ref in zip(S._pull_cv2(imgs, tx, ty), S._pull_torch(imgs, tx, ty), strict=True):
        assert (fast - ref).abs().max() < 1e-3  # float32 rounding apart, the same
    shift = np.zeros((40, 60, 2), np.float32)
    shift[..., 0] = 2.0  # whole pixels: exact, edge replicated
    tx, ty, _ = S.flow_coords(shift, (40, 60), torch.device("cpu"))
    (pulled,) = S._pull_cv2([img], tx, ty)
    torch.testing.assert_close(pulled[..., :-2], img[..., 2:])
    torch.testing.assert_close(pulled[..., -2:], img[..., -1:].expand(-1, -1, -1, 2))


def test_the_cpu_primitives_give_the_frames_device_result(pan, monkeypatch):
    x = _tensor(pan.frames)
    fast = _run(FlowStabilizer(Flicker()), x)
    monkeypatch.setattr(S, "_on_cpu", lambda t: False)  # the path CUDA frames take
    ref = _run(FlowStabilizer(Flicker()), x)
    assert (fast - ref).abs().mean() < 1e-4 and (fast - ref).abs().max() < 0.01


def _torch_path(monkeypatch) -> None:
    monkeypatch.setattr(S, "_on_cpu", lambda t: False)  # the path CUDA frames take


@pytest.mark.parametrize("size", [(36, 64), (37, 61), (20, 30)])
def test_the_cpu_flow_coordinates_are_the_aligned_bilinear_resize(size, monkeypatch):
    flow = _smooth_flow(18, 32, 4.0, 8)  # upsampled (2×, odd sizes) or, at (20, 30), cropped
    if size == (20, 30):
        flow = flow[:20, :30].copy()  # the flow's own size: no resize
    fast = S.flow_coords(flow, size, torch.device("cpu"))
    _torch_path(monkeypatch)
    ref = S.flow_coords(flow, size, torch.device("cpu"))
    for a, b in zip(fast[:2], ref[:2], strict=True):
        assert (a - b).abs().max() < 0.01  # OpenCV's 1/32-pixel steps apart
    assert (fast[2] != ref[2]).float().mean() < 0.01  # inside: only points on the edge flip
    assert fast[2].min() == 0 and fast[2].max() == 1


@pytest.mark.parametrize(
    ("size", "flow_size", "exact"),
    [((360, 640), 320, True), ((272, 480), 120, True), ((361, 641), 320, False),
     ((45, 71), 32, False), ((40, 60), 320, True)],
)  # fmt: skip
def test_the_cpu_gray_is_the_torch_gray(size, flow_size, exact, monkeypatch):
    g = torch.Generator().manual_seed(9)
    img = F.avg_pool2d(torch.rand(1, 3, *size, generator=g), 9, 1, 4, count_include_pad=False)
    stab = FlowStabilizer(torch.sqrt, flow_size=flow_size)
    fast = stab._gray(img)
    _torch_path(monkeypatch)
    ref = stab._gray(img)
    assert fast.dtype == np.uint8 and fast.shape == ref.shape
    diff = np.abs(fast.astype(int) - ref)
    if exact:  # whole-number factors (2, 4, 6, 12 for 640, 1280, 1920, 3840 px) or none
        assert diff.max() <= 1  # rounding
    else:  # OpenCV's area weights are fractional, PyTorch's bins whole pixels
        assert diff.mean() < 1.0


def test_the_channel_mean_is_mean_over_dim_one():
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(10))
    torch.testing.assert_close(S._channel_mean(x), x.mean(1, keepdim=True))
    one = x[:, :1]
    assert S._channel_mean(one) is one
