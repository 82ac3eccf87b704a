"""The warping error: the input is its own floor, flicker raises it, exact flow gives ~0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fast_style.video.clips import KINDS, render_camera_path
from fast_style.video.metrics import (
    dis_flow,
    evaluate_clip,
    evaluate_exact,
    pair_error,
    valid_mask,
    warp,
)

SIZE = (96, 64)


@pytest.fixture(scope="module", params=KINDS)
def path(request):
    return render_camera_path(None, SIZE, 8, request.param)


def _flicker(frames: np.ndarray, amount: float, seed: int = 0) -> list[np.ndarray]:
    """Each frame's brightness scaled by a random factor in 1 ± amount."""
    rng = np.random.default_rng(seed)
    return [np.clip(f / 255.0 * rng.uniform(1 - amount, 1 + amount), 0, 1) for f in frames]


def test_exact_flow_gives_the_input_a_warping_error_of_about_zero(path):
    r = evaluate_exact(path.frames, path.flows, path.masks)
    assert r["e_warp"] < 1e-4 and r["pairs"] == 7
    assert r["valid_fraction"] > 0.8  # only the border that leaves the frame is masked
    # ... and a flow off by one pixel does not: the metric sees misalignment.
    off = path.flows + np.float32(1.0)
    assert evaluate_exact(path.frames, off, path.masks)["e_warp"] > 10 * r["e_warp"]


def test_dis_flow_finds_the_camera_motion(path):
    gray = [f.mean(-1).astype(np.uint8) for f in path.frames[:2]]
    flow, exact, mask = dis_flow(*gray), path.flows[0], path.masks[0]
    assert np.median(np.abs(flow - exact)[mask]) < 0.25


def test_the_input_is_the_floor_and_flicker_raises_it(path):
    floor = evaluate_clip(path.frames, path.frames)["e_warp"]
    stable = evaluate_clip(path.frames, [np.sqrt(f / 255.0) for f in path.frames])["e_warp"]
    flicker = evaluate_clip(path.frames, _flicker(path.frames, 0.2))["e_warp"]
    assert floor < 1e-4 and stable < 3 * floor + 1e-4
    assert flicker > 20 * max(floor, stable)
    assert evaluate_clip(path.frames, _flicker(path.frames, 0.05))["e_warp"] < flicker


def test_frames_may_be_tensors_arrays_or_images(path):
    from PIL import Image

    as_arrays = evaluate_clip(path.frames, path.frames)["e_warp"]
    tensors = [torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in path.frames]
    images = [Image.fromarray(f) for f in path.frames]
    assert evaluate_clip(images, tensors)["e_warp"] == pytest.approx(as_arrays, rel=1e-4)


def test_the_forward_backward_check_masks_occlusions_and_the_border():
    h, w = 20, 30
    fw = np.zeros((h, w, 2), np.float32)
    fw[..., 0] = 2.0  # everything moves 2 px right ...
    bw = -fw.copy()
    bw[5:10, 12:17, 0] = 3.0  # ... but in frame t+1 this patch came from elsewhere: occluded
    mask = valid_mask(fw, bw)
    assert not mask[5:10, 10:15].any()  # the pixels that land on the patch
    assert not mask[:, -2:].any()  # leave the frame
    assert mask[15:, :20].all()  # the rest is kept
    moving = np.zeros((h, w, 2), np.float32)
    moving[:, 15:, 0] = 5.0  # a motion boundary between two regions
    assert not valid_mask(moving, -moving)[:, 14].any()


def test_warp_pulls_the_next_frame_back():
    img = np.random.default_rng(0).random((10, 12, 3)).astype(np.float32)
    flow = np.zeros((10, 12, 2), np.float32)
    flow[..., 1] = 1.0  # pixel (x, y) of frame t is at (x, y + 1) in frame t+1
    shifted = np.roll(img, 1, axis=0)
    assert np.allclose(warp(shifted, flow)[:-1], img[:-1])
    assert np.isnan(pair_error(img, img, flow, np.zeros((10, 12), bool)))
