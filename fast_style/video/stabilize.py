"""Flicker removed at inference, no retraining: the output blended along the input's motion.

A feed-forward style network answers a small change of its input (a sub-pixel pan, sensor
noise, a codec's blocks) with a different brush pattern, so even with the instance-norm
statistics smoothed (``fast_style.infer.temporal``) its textures shimmer from frame to frame.
``FlowStabilizer`` wraps any frame function and, frame by frame, pulls the previous *output*
onto the current frame along the optical flow of the *input* and blends it in: a causal
recursive filter along motion trajectories (the idea of Bonneel et al. 2015, "Blind Video
Temporal Consistency", in its simplest form):

    B_t = S_t + α · c_t · (warp(O_{t-1}) − S_t),    c_t = exp(−d_t / τ²) · inside_t

with S_t the network's output for frame t, warp(·) bicubic along the DIS flow from input frame t
to input frame t−1, d_t the squared RGB difference between input frame t and input frame t−1
warped the same way, averaged over a 3×3 neighbourhood and the channels (large where the flow is
wrong, at occlusions, cuts and lighting changes, so that there the new frame shows through), and
``inside_t`` zero where the flow leaves the frame. A frame k steps back weighs α^k at most, so
nothing lingers for long, and a scene cut (c ≈ 0) restarts the filter.

Averaging two brush patterns flattens them (the average of uncorrelated textures has less
contrast), which raises the style loss. So the blend's local contrast is restored to the
network's: O_t = μ_B + k (B_t − μ_B), with μ the 3×3 local mean and k = σ_S / σ_B ≥ 1 the ratio of
the local standard deviations (mean over the channels, so colours keep their relations), at most
``K_MAX``. Where S_t and the warped output agree, σ_B = σ_S and nothing changes.

The flow is computed on a grey copy of the input at most ``flow_size`` pixels on its long side
(OpenCV's DIS, preset MEDIUM: classical, no weights, about 3 ms for 320×180 on one core) and
scaled up to the frame; the blends run in PyTorch on the frames' device. On the CPU the two
costly primitives, the bicubic warp and the 3×3 local means, are OpenCV's (``cv2.remap``,
``cv2.blur``: several times faster there than ``grid_sample`` and shifted-slice sums, the same
results to float32 rounding), and so are the grey copy's resize and the flow's upsampling.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

FrameFn = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) float [0, 1] → the same
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R BT.601, OpenCV's weights

# Chosen on the first 40 frames of the real clip and synthetic paths over two validation photos
# (docs/video.md): α trades the flicker left against the style loss.
DEFAULT_BLEND = 0.55
DEFAULT_TOLERANCE = 0.03  # τ: RMS input difference (RGB in [0, 1]) at which c falls to 1/e
FLOW_SIZE = 320  # long side of the frames the flow is computed on (as measured: docs/video.md)
# OpenCV's DIS presets; MEDIUM aligns better than FAST (lower exact-flow E_warp at the same
# style loss on the synthetic paths) for about 3 ms more per 320×180 frame.
DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}
CONTRAST_RADIUS = 1  # the local mean and deviation of the contrast restoration: 3×3
K_MAX = 2.0  # the most the contrast restoration amplifies


def _require_cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise ImportError(
            "the flow stabiliser needs OpenCV: pip install 'fast_style[video]'"
        ) from None
    return cv2


@dataclass
class _Previous:
    gray: np.ndarray  # (h, w) uint8 at the flow size
    frame: torch.Tensor  # (1, 3, H, W) input in [0, 1]
    output: torch.Tensor  # (1, 3, H, W) blended output in [0, 1]


class FlowStabilizer:
    """A clip's frame function: ``fn``'s output for (B, 3, H, W) consecutive frames in [0, 1],
    each blended with the previous output warped along the input's motion (module docstring).
    Stateful: feed one clip's frames in order; ``reset()`` between clips (a change of frame
    size restarts it too). ``blend`` (α) in [0, 1): 0 returns ``fn``'s output unchanged."""

    def __init__(
        self,
        fn: FrameFn,
        blend: float = DEFAULT_BLEND,
        tolerance: float = DEFAULT_TOLERANCE,
        flow_size: int = FLOW_SIZE,
        restore: bool = True,
        preset: str = "medium",
    ):
        if not 0.0 <= blend < 1.0:
            raise ValueError(f"blend must be in [0, 1), got {blend}")
        if tolerance <= 0 or flow_size < 16:
            raise ValueError("tolerance must be > 0 and flow_size at least 16")
        cv2 = _require_cv2()
        self.fn, self.blend, self.tolerance, self.flow_size = fn, blend, tolerance, flow_size
        self.restore = restore
        if preset not in DIS_PRESETS:
            raise ValueError(f"preset must be one of {', '.join(DIS_PRESETS)}, not {preset!r}")
        self.dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
        self.prev: _Previous | None = None

    def reset(self) -> None:
        self.prev = None
        reset = getattr(self.fn, "reset", None)
        if callable(reset):
            reset()

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.stabilize(frames, self.fn(frames))

    @torch.inference_mode()
    def stabilize(self, frames: torch.Tensor, styled: torch.Tensor) -> torch.Tensor:
        """The blend alone: (B, 3, H, W) consecutive input frames and ``fn``'s output for them,
        both in [0, 1] → the blended output. Calls must follow the clip's frame order."""
        styled = styled.to(frames.device, torch.float32)
        out = [self._step(x, y) for x, y in zip(frames.split(1), styled.split(1), strict=True)]
        return torch.cat(out)

    def _gray(self, frame: torch.Tensor) -> np.ndarray:
        """(1, 3, H, W) in [0, 1] → (h, w) uint8 luma (BT.601, as OpenCV's RGB2GRAY), long side
        at most ``flow_size``."""
        h, w = frame.shape[-2:]
        s = min(1.0, self.flow_size / max(h, w))
        if _on_cpu(frame):
            return _gray_cv2(frame, (int(w * s), int(h * s)))  # F.interpolate's size: floor
        luma = (frame * _LUMA.to(frame)).sum(1, keepdim=True)
        if s < 1.0:
            luma = F.interpolate(luma, scale_factor=s, mode="area")
        return (luma[0, 0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One frame: input x and network output y, (1, 3, H, W) → the blended output."""
        x = x.to(y.device, torch.float32)
        gray, prev = self._gray(x), self.prev
        if self.blend > 0 and prev is not None and prev.frame.shape == x.shape:
            flow = self.dis.calc(gray, prev.gray, None)  # gray(p) ≈ prev.gray(p + flow(p))
            tx, ty, inside = flow_coords(flow, x.shape[-2:], x.device)
            px, po = _pull([prev.frame, prev.output], tx, ty)
            # In place and with lerp: the blend's elementwise steps are most of its time.
            d = _box(_channel_mean(px.sub_(x).square_()), 1)
            c = d.mul_(-1.0 / self.tolerance**2).exp_().mul_(inside)
            b = torch.lerp(y, po, c.mul_(self.blend))  # y + α c (po − y)
            out = restore_contrast(b, y) if self.restore else b.clamp_(0, 1)
        else:
            out = y
        self.prev = _Previous(gray, x, out)
        return out


@functools.lru_cache(maxsize=4)
def _pixel_grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y of every pixel, (h, w) float32 each (one clip asks for the same size again)."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return xs, ys


def flow_coords(
    flow: np.ndarray, size: tuple[int, int] | torch.Size, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A flow (h, w, 2) in pixels of an (h, w) frame, scaled to an (H, W) frame → the pixel
    coordinates p + flow(p) that each pixel pulls from, x and y (H, W) float32 each, and
    (1, 1, H, W) float, 1 where that point lies inside the frame, else 0."""
    out_h, out_w = int(size[0]), int(size[1])
    h, w = flow.shape[:2]
    xs, ys = _pixel_grid(out_h, out_w, device)
    if _on_cpu(xs):
        fx, fy = _upsample_flow_cv2(flow, (out_h, out_w))
    else:
        f = torch.from_numpy(flow).to(device).permute(2, 0, 1).unsqueeze(0)
        if (h, w) != (out_h, out_w):
            f = F.interpolate(f, size=(out_h, out_w), mode="bilinear", align_corners=True)
        fx, fy = f[0, 0], f[0, 1]
    tx, ty = torch.add(xs, fx, alpha=out_w / w), torch.add(ys, fy, alpha=out_h / h)
    inside = tx.ge(0)
    inside &= tx.le(out_w - 1)
    inside &= ty.ge(0)
    inside &= ty.le(out_h - 1)
    return tx, ty, inside.view(1, 1, out_h, out_w).to(tx.dtype)


def _upsample_flow_cv2(flow: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """(h, w, 2) → its x and y planes bilinearly resized to (H, W), corners aligned (as
    ``F.interpolate(..., align_corners=True)``, to OpenCV's 1/32-pixel interpolation steps),
    each (H, W) float32; values still in pixels of the (h, w) frame."""
    cv2, (out_h, out_w), (h, w) = _require_cv2(), size, flow.shape[:2]
    if (h, w) == (out_h, out_w):
        return torch.from_numpy(flow[..., 0].copy()), torch.from_numpy(flow[..., 1].copy())
    # warpAffine with this output → input map is align_corners' bilinear resize: one pass per
    # plane, several times faster than F.interpolate on the CPU.
    m = np.array([[(w - 1) / max(out_w - 1, 1), 0, 0], [0, (h - 1) / max(out_h - 1, 1), 0]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return tuple(
        torch.from_numpy(cv2.warpAffine(np.ascontiguousarray(flow[..., c]), m, (out_w, out_h),
                                        flags=flags, borderMode=cv2.BORDER_REPLICATE))
        for c in range(2)
    )  # fmt: skip


def _gray_cv2(frame: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(1, 3, H, W) float32 in [0, 1] on the CPU → (h, w) uint8 luma, ``size`` = (w, h): each
    plane area-resized first (the luma is linear), then weighted, rounded and saturated."""
    cv2, planes = _require_cv2(), frame[0].contiguous().numpy()
    acc: np.ndarray | None = None
    for plane, weight in zip(planes, _LUMA.flatten().tolist(), strict=True):
        resize = size != plane.shape[::-1]
        small = cv2.resize(plane, size, interpolation=cv2.INTER_AREA) if resize else plane
        acc = small * weight if acc is None else cv2.scaleAdd(small, weight, acc)
    return cv2.convertScaleAbs(acc, alpha=255.0)  # round to nearest, saturate to [0, 255]


def to_grid(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates x, y (H, W) → the grid (1, H, W, 2) of ``grid_sample``
    (align_corners=True) that pulls them."""
    h, w = tx.shape
    return torch.stack([tx * 2 / max(w - 1, 1) - 1, ty * 2 / max(h - 1, 1) - 1], -1)[None]


def _on_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float32


def _pull(imgs: list[torch.Tensor], tx: torch.Tensor, ty: torch.Tensor) -> list[torch.Tensor]:
    """Each of ``imgs`` (1, 3, H, W) sampled bicubically at the pixel coordinates ``tx``,
    ``ty`` (H, W), borders replicated (outside points take the nearest edge pixel)."""
    return (_pull_cv2 if _on_cpu(imgs[0]) else _pull_torch)(imgs, tx, ty)


def _pull_torch(imgs: list[torch.Tensor], tx: torch.Tensor, ty: torch.Tensor) -> list[torch.Tensor]:
    """One ``grid_sample`` for all of them (stacked along the channels)."""
    pulled = F.grid_sample(
        torch.cat(imgs, 1), to_grid(tx, ty), mode="bicubic", padding_mode="border",
        align_corners=True,
    )  # fmt: skip
    return list(pulled.split([i.shape[1] for i in imgs], 1))


def _pull_cv2(imgs: list[torch.Tensor], tx: torch.Tensor, ty: torch.Tensor) -> list[torch.Tensor]:
    """``cv2.remap`` plane by plane, into NCHW tensors: faster than remapping HWC copies, and
    what follows runs on contiguous planes (docs/video.md, Speed)."""
    cv2, mx, my = _require_cv2(), tx.numpy(), ty.numpy()
    out = []
    for img in imgs:
        src = img.contiguous()
        dst = torch.empty_like(src)
        planes, pulled = src.numpy(), dst.numpy()
        for c in range(src.shape[1]):
            cv2.remap(planes[0, c], mx, my, cv2.INTER_CUBIC, dst=pulled[0, c],
                      borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        out.append(dst)
    return out


def _shift_sum(t: torch.Tensor, n: int, length: int, dim: int) -> torch.Tensor:
    """The sum of the ``n`` slices ``t.narrow(dim, i, length)``, i = 0 … n−1."""
    out = t.narrow(dim, 0, length).clone()
    for i in range(1, n):
        out += t.narrow(dim, i, length)
    return out


def _box(x: torch.Tensor | list[torch.Tensor], r: int) -> torch.Tensor:
    """The (2r+1)² local mean of (B, C, H, W), or of such tensors concatenated along the
    channels (on the CPU without the copy), borders replicated."""
    parts = [x] if isinstance(x, torch.Tensor) else x
    if all(_on_cpu(p) for p in parts):  # plane by plane: any channel count
        return _box_cv2(parts, r)
    return _box_torch(torch.cat(parts, 1), r)


def _box_torch(x: torch.Tensor, r: int) -> torch.Tensor:
    """Separable sums of shifted slices (faster than ``avg_pool2d``)."""
    n = 2 * r + 1
    p = F.pad(x, (r, r, r, r), mode="replicate")
    rows = _shift_sum(p, n, x.shape[-1], -1)
    return _shift_sum(rows, n, x.shape[-2], -2) / n**2


def _box_cv2(parts: list[torch.Tensor], r: int) -> torch.Tensor:
    # Plane by plane: cv2.blur on contiguous (H, W) planes, written straight into one NCHW
    # tensor, is about twice as fast as one multi-channel blur of an HWC copy, and what
    # follows runs on contiguous planes (docs/video.md, Speed).
    cv2, n = _require_cv2(), 2 * r + 1
    b, _, h, w = parts[0].shape
    out = torch.empty(b, sum(p.shape[1] for p in parts), h, w)
    dst, k = out.numpy(), 0
    for part in parts:
        planes = part.contiguous().numpy()
        for c in range(part.shape[1]):
            for i in range(b):
                cv2.blur(planes[i, c], (n, n), dst=dst[i, k], borderType=cv2.BORDER_REPLICATE)
            k += 1
    return out


def restore_contrast(
    blend: torch.Tensor, ref: torch.Tensor, r: int = CONTRAST_RADIUS, k_max: float = K_MAX
) -> torch.Tensor:
    """``blend`` (B, 3, H, W) in [0, 1] with its local contrast raised to ``ref``'s: μ + k (blend
    − μ), μ the local mean of ``blend``, k = σ_ref / σ_blend in [1, k_max] (local deviations,
    mean over the channels). Clamped to [0, 1]."""
    c = blend.shape[1]
    # The channel mean of the local variances, mean_c(box(v²)) − mean_c(box(v)²), takes the
    # squares' channel mean first (box is linear): 2c + 2 channels in one pass, not 4c.
    sq = [_channel_mean(v.square()) for v in (blend, ref)]
    mu_b, mu_r, sq_b, sq_r = _box([blend, ref, *sq], r).split([c, c, 1, 1], 1)
    var_b = sq_b.sub_(_channel_mean(mu_b.square())).clamp_min_(0).add_(1e-5)
    var_r = sq_r.sub_(_channel_mean(mu_r.square())).clamp_min_(0).add_(1e-5)
    k = var_r.div_(var_b).sqrt_().clamp_(1.0, k_max)  # the 1e-5: flat areas stay
    return torch.lerp(mu_b, blend, k).clamp_(0, 1)  # μ + k (blend − μ)


def _channel_mean(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, 1, H, W), the mean over the channels; for a few channels the sum of
    the planes, which on the CPU is about twice as fast as ``mean(1)``. May return ``x``."""
    if x.shape[1] == 1:
        return x
    out = x[:, :1].clone()
    for i in range(1, x.shape[1]):
        out += x[:, i : i + 1]
    return out.div_(x.shape[1])
