"""DDP with two CPU processes (gloo), on the synthetic layer: what it checks is the strategy, not
the photos or the loss network's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import DataSource, run_train


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tmp_path: Path, synthetic_source: DataSource):
    run = tmp_path / "ddp"
    args = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    proc = run_train(synthetic_source.train_args(run, *args))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6
    trainer = ckpt["fast_style"]["training"]["trainer"]
    assert trainer["strategy"] == "ddp" and trainer["devices"] == 2
    assert (run / "starry_night.safetensors").is_file()
    assert (run / "train_ddp_process_1.log").is_file()  # the second rank really ran
    out = proc.stdout + proc.stderr
    assert "All distributed processes registered. Starting with 2 processes" in out, out[-3000:]
