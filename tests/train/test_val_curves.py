"""scripts/val_curves.py: held-out curves read back from real TensorBoard logs."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location("val_curves", REPO / "scripts" / "val_curves.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_run(path, batch: int, points: dict[int, float]) -> None:
    """A Hydra run folder with a TensorBoard log as Lightning writes it (0-based steps)."""
    from torch.utils.tensorboard import SummaryWriter

    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(f"data:\n  batch_size: {batch}\n")
    writer = SummaryWriter(str(path / "tensorboard"))
    first = min(points) - 1
    writer.add_scalar("train/total", 9.0, first, walltime=1000.0)
    for step, value in points.items():
        writer.add_scalar("val/total", value, step - 1, walltime=1000.0 + 6 * (step - first))
    writer.close()


def test_read_and_join_resumed_run(tmp_path):
    vc = _script()
    _fake_run(tmp_path / "a", 4, {10: 3.0, 20: 2.5, 30: 2.4})
    # resumed from the step-20 checkpoint: its step-30 point supersedes the first part's
    _fake_run(tmp_path / "b", 4, {30: 2.3, 40: 2.2})
    parts = [vc.read_run(tmp_path / "a"), vc.read_run(tmp_path / "b")]
    assert parts[0]["steps"] == [10, 20, 30]
    assert parts[0]["images"] == [40, 80, 120]
    assert parts[0]["values"] == pytest.approx([3.0, 2.5, 2.4])
    assert parts[0]["minutes"] == pytest.approx([0.1, 1.1, 2.1])  # 6 s per step after t0
    run = vc.join_parts(parts)
    assert run["steps"] == [10, 20, 30, 40]
    assert run["values"] == pytest.approx([3.0, 2.5, 2.3, 2.2])
    minutes = run["minutes"]
    assert minutes == sorted(minutes) and minutes[2] > parts[0]["minutes"][1]


def test_main_reports_gap_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot needs the eval extra (matplotlib)")
    vc = _script()
    _fake_run(tmp_path / "fast", 16, {5: 2.4, 10: 2.1})
    _fake_run(tmp_path / "ref", 4, {20: 2.5, 40: 2.0})
    png = tmp_path / "curves.png"
    args = [f"fast={tmp_path / 'fast'}", f"ref={tmp_path / 'ref'}", "--out", str(png)]
    assert vc.main(args) == 0
    out = capsys.readouterr().out
    assert "final val/total = 2.1000 (+5.00% vs ref)" in out
    assert png.stat().st_size > 1000


def test_missing_tag_is_one_clear_error(tmp_path):
    vc = _script()
    from torch.utils.tensorboard import SummaryWriter

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("data:\n  batch_size: 4\n")
    writer = SummaryWriter(str(tmp_path / "tensorboard"))
    writer.add_scalar("train/total", 1.0, 0)
    writer.close()
    with pytest.raises(SystemExit, match="no 'val/total'"):
        vc.read_run(tmp_path)
