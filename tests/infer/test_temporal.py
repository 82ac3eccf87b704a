"""Temporal stabilisation at inference: smoothed instance-norm statistics across frames."""

from __future__ import annotations

import pytest
import torch

from fast_style.core.network import TransformerNet
from fast_style.infer.stylizer import Stylizer
from fast_style.infer.temporal import TemporalStylizer


def _net(num_styles: int = 1, seed: int = 0) -> TransformerNet:
    torch.manual_seed(seed)
    net = TransformerNet(channels=(8, 16, 32), num_residual=2, num_styles=num_styles).eval()
    with torch.no_grad():  # non-trivial affine parameters, so a wrong style would show
        for name, p in net.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return net


@pytest.mark.parametrize("backend", ["eager", "fused", "onnxruntime"])
def test_no_momentum_full_statistics_is_per_frame(backend: str) -> None:
    """momentum 0 with statistics of the whole frame is per-frame stylisation, per backend."""
    st = Stylizer(_net(), device="cpu", backend=backend)
    frames = torch.rand(3, 3, 29, 37)
    got = TemporalStylizer(st, momentum=0.0)(frames)
    want = st.forward(frames)
    assert got.shape == frames.shape
    torch.testing.assert_close(got, want, atol=2e-4, rtol=0)


def test_multi_style_frozen_pass_follows_the_style() -> None:
    st = Stylizer(_net(num_styles=2), device="cpu", backend="eager")
    frames = torch.rand(2, 3, 24, 24)
    for w in ([1.0, 0.0], [0.0, 1.0], [0.3, 0.7]):
        got = TemporalStylizer(st, momentum=0.0, style=torch.tensor(w))(frames)
        torch.testing.assert_close(got, st.forward(frames, torch.tensor(w)), atol=2e-4, rtol=0)
    a = TemporalStylizer(st, 0.0, torch.tensor([1.0, 0.0]))(frames)
    b = TemporalStylizer(st, 0.0, torch.tensor([0.0, 1.0]))(frames)
    assert (a - b).abs().max() > 1e-2


def test_state_carries_across_calls_and_resets() -> None:
    """The second frame of a clip is pulled towards the first frame's statistics; after
    ``reset`` a clip starts afresh, so one frame gives the same output as at the start."""
    st = Stylizer(_net(), device="cpu", backend="eager")
    dark, bright = torch.rand(1, 3, 32, 32) * 0.2, 0.8 + torch.rand(1, 3, 32, 32) * 0.2
    ts = TemporalStylizer(st, momentum=0.9)
    first = ts(bright)
    ts(dark)
    carried = ts(bright)
    assert (carried - first).abs().max() > 1e-3  # the dark frame's statistics carried over
    ts.reset()
    torch.testing.assert_close(ts(bright), first)


def test_bad_arguments_are_one_line_errors() -> None:
    st = Stylizer(_net(num_styles=2), device="cpu", backend="eager")
    with pytest.raises(ValueError, match="momentum"):
        TemporalStylizer(st, momentum=1.0)
    with pytest.raises(ValueError, match="2 weights per row"):
        TemporalStylizer(st, style=torch.tensor([1.0, 0.0, 0.0]))
