"""The warping error E_warp of Lai et al. 2018 ("Learning Blind Video Temporal Consistency").

For consecutive frames t, t+1: the optical flow F from input frame t to input frame t+1
(OpenCV's DIS flow, classical, no weights), the output frame t+1 warped back onto frame t,
``Ô_t(x) = O_{t+1}(x + F(x))``, and the mean squared RGB difference to ``O_t`` in [0, 1] over
the pixels that are not occluded. E_warp is the mean over the pairs. The flow comes from the
*input*, so a network is judged by whether its output moves with the scene; the input's own
E_warp (identity "stylization") is the floor that flow errors and lighting changes leave.

As in Lai et al.'s released evaluation code the mean runs over valid pixels *and* the three
channels. Two additions, stated: pixels whose flow leaves the frame are invalid too (a pan would
otherwise count its incoming border), and a pair with no valid pixel is skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

# Occlusion test of Ruder et al. 2016 ("Artistic style transfer for videos", Sec. 3.2, after
# Sundaram et al. 2010), the mask Lai et al. evaluate with: a pixel is occluded where the forward
# flow w and the backward flow ŵ at its target disagree, |w + ŵ|² > 0.01 (|w|² + |ŵ|²) + 0.5,
# and on a motion boundary where |∇u|² + |∇v|² > 0.01 |w|² + 0.002.
FB_REL, FB_ABS = 0.01, 0.5
MB_REL, MB_ABS = 0.01, 0.002
_local = threading.local()  # one DIS instance per thread (the object keeps state between calls)


def as_hwc(frame: torch.Tensor | np.ndarray | Image.Image) -> np.ndarray:
    """A frame as float32 (H, W, 3) in [0, 1]: from a tensor (3, H, W) in [0, 1], an array
    (H, W, 3) uint8 or float in [0, 1], or an RGB image."""
    if isinstance(frame, Image.Image):
        frame = np.asarray(frame.convert("RGB"))
    if isinstance(frame, torch.Tensor):
        return frame.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    if frame.dtype == np.uint8:
        return frame.astype(np.float32) / 255.0
    return np.clip(frame, 0, 1).astype(np.float32)


def _gray(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] → (H, W) uint8 luma, DIS's input."""
    return cv2.cvtColor((img * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def dis_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DIS optical flow (preset MEDIUM) between grey uint8 frames: (H, W, 2) float32 with
    ``a(x) ≈ b(x + flow(x))``."""
    dis = getattr(_local, "dis", None)
    if dis is None:
        preset = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
        dis = _local.dis = cv2.DISOpticalFlow_create(preset)  # type: ignore[attr-defined]
    return dis.calc(a, b, None)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``img(x + flow(x))``, bilinear: frame t+1 (or any (H, W, C) field) pulled back onto
    frame t by the flow from t to t+1."""
    xs, ys = _grid(*flow.shape[:2])
    return cv2.remap(
        img, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def _flow_gradient_sq(flow: np.ndarray) -> np.ndarray:
    """|∇u|² + |∇v|², forward differences (zero on the last row and column)."""
    d = np.zeros(flow.shape[:2], np.float32)
    dx = flow[:, :-1] - flow[:, 1:]
    dy = flow[:-1] - flow[1:]
    d[:, :-1] += (dx**2).sum(-1)
    d[:-1] += (dy**2).sum(-1)
    return d


def valid_mask(fw: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of frame t that frame t+1 shows, by the forward–backward check
    (``fw``: flow t → t+1, ``bw``: flow t+1 → t), off motion boundaries, inside the frame."""
    h, w = fw.shape[:2]
    bw_at = warp(bw, fw)  # ŵ, the backward flow at each pixel's target
    mag = (fw**2).sum(-1)
    occluded = ((fw + bw_at) ** 2).sum(-1) > FB_REL * (mag + (bw_at**2).sum(-1)) + FB_ABS
    boundary = _flow_gradient_sq(fw) > MB_REL * mag + MB_ABS
    xs, ys = _grid(h, w)
    tx, ty = xs + fw[..., 0], ys + fw[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return ~occluded & ~boundary & inside


def pair_error(out_t: np.ndarray, out_t1: np.ndarray, flow: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared difference between ``out_t`` and ``out_t1`` warped onto it, over the valid
    pixels and the channels; NaN without a valid pixel."""
    if not mask.any():
        return float("nan")
    diff = warp(out_t1, flow) - out_t
    return float((diff[mask] ** 2).mean())


class InputFlow:
    """Streams the input clip's flows: ``update(frame)`` returns (flow, mask) from the previous
    frame to this one (DIS both ways, ``valid_mask``), or None for the first frame."""

    def __init__(self) -> None:
        self._prev: np.ndarray | None = None

    def update(self, frame: Any) -> tuple[np.ndarray, np.ndarray] | None:
        g = _gray(as_hwc(frame))
        prev, self._prev = self._prev, g
        if prev is None or prev.shape != g.shape:
            return None
        fw, bw = dis_flow(prev, g), dis_flow(g, prev)
        return fw, valid_mask(fw, bw)


class WarpErrorMeter:
    """Streaming E_warp of one output clip: ``update(out_frame, pair)`` frame by frame, where
    ``pair`` = (flow, mask) from the previous frame to this one (None for the first)."""

    def __init__(self) -> None:
        self.errors: list[float] = []
        self.valid: list[float] = []
        self._prev: np.ndarray | None = None

    def update(self, frame: Any, pair: tuple[np.ndarray, np.ndarray] | None) -> None:
        out = as_hwc(frame)
        if pair is not None and self._prev is not None:
            flow, mask = pair
            err = pair_error(self._prev, out, flow, mask)
            if not np.isnan(err):
                self.errors.append(err)
            self.valid.append(float(mask.mean()))
        self._prev = out

    def result(self) -> dict[str, Any]:
        """``e_warp`` (mean over pairs), ``pairs``, ``valid_fraction`` (mean share of valid
        pixels), ``per_pair``."""
        return {
            "e_warp": float(np.mean(self.errors)) if self.errors else float("nan"),
            "pairs": len(self.errors),
            "valid_fraction": float(np.mean(self.valid)) if self.valid else 0.0,
            "per_pair": list(self.errors),
        }


def evaluate_clip(frames_in: Iterable[Any], frames_out: Iterable[Any]) -> dict[str, Any]:
    """E_warp of ``frames_out`` with the flow of ``frames_in`` (same length; each frame a
    tensor (3, H, W) in [0, 1], an (H, W, 3) array or an image): ``WarpErrorMeter.result``."""
    flows, meter = InputFlow(), WarpErrorMeter()
    for x, y in zip(frames_in, frames_out, strict=True):
        meter.update(y, flows.update(x))
    return meter.result()


def evaluate_exact(
    frames_out: Iterable[Any], flows: np.ndarray, masks: np.ndarray
) -> dict[str, Any]:
    """E_warp with exact flows (T-1, H, W, 2) and masks (T-1, H, W), e.g. of a synthetic
    camera path (``fast_style.video.clips``): no flow-estimation error enters."""
    meter = WarpErrorMeter()
    for t, y in enumerate(frames_out):
        meter.update(y, (flows[t - 1], masks[t - 1]) if t else None)
    return meter.result()
