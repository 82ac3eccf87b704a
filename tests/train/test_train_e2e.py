"""The issue's smoke command, run as a user runs it (a subprocess), then resumed and interrupted.

The smoke run and TensorBoard checks run on both layers (synthetic photos with a random-weight
VGG16, and ../shared's real ones); resume, Ctrl-C and the refused checkpoints on the synthetic
layer only (they do not depend on what the photos or weights are)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fast_style.core.model_io import FORMAT_VERSION, load_model
from tests.conftest import REPO, DataSource, run_train

SCALARS = ("train/content", "train/style", "train/tv", "train/total")


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_smoke_run_writes_checkpoints_and_model(smoke_run: Path, data_source: DataSource):
    ckpts = smoke_run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "last.ckpt",
        "step_000003.ckpt",  # periodic, every 3 steps
        "step_000006.ckpt",
    ]
    assert _ckpt(ckpts / "last.ckpt")["global_step"] == 6
    assert _ckpt(ckpts / "step_000003.ckpt")["global_step"] == 3
    config = (smoke_run / ".hydra" / "config.yaml").read_text()  # everything under the run dir
    assert f"root: {data_source.data_root}" in config
    exported = smoke_run / "starry_night.safetensors"
    with safe_open(str(exported), framework="pt") as f:
        meta = json.loads(f.metadata()["fast_style"])
    assert meta["style"] == "starry_night" and meta["width"] == "slim"
    assert meta["architecture"] == "johnson2016" and meta["channels"] == [16, 32, 64]
    assert meta["format_version"] == FORMAT_VERSION and meta["global_step"] == 6  # today's
    assert meta["training"]["optim"]["lr"] == 1e-3 and meta["training"]["data"]["image_size"] == 64
    assert meta["weights_source"] == data_source.weights  # the loss network it was trained with
    net, _ = load_model(exported)
    with torch.no_grad():
        out = net(torch.rand(1, 3, 37, 51))
    assert out.shape == (1, 3, 37, 51)
    # the exported weights are the trained ones, not the initial ones
    state = _ckpt(ckpts / "last.ckpt")["state_dict"]
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, state[f"net.{key}"], msg=key)


def test_tensorboard_has_the_four_scalars_and_an_image(smoke_run: Path):
    acc = _events(smoke_run)
    tags = acc.Tags()
    assert set(SCALARS) <= set(tags["scalars"])
    assert {"val/total", "val/content"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("val/total")] == [2, 5]  # val_check_interval=3
    assert "val/stylized" in tags["images"]
    image = acc.Images("val/stylized")[0]
    assert image.width > image.height > 64  # style | images on top, style | stylised below
    for tag in SCALARS:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == list(range(6)), tag
        assert all(e.value > 0 for e in events), tag
    total = [e.value for e in acc.Scalars("train/total")]
    parts = [[e.value for e in acc.Scalars(t)] for t in SCALARS[:3]]
    assert total == pytest.approx([sum(p) for p in zip(*parts, strict=True)], rel=1e-4)


def test_resume_continues_step_optimizer_and_schedule(
    synthetic_smoke_run: Path, synthetic_source: DataSource, tmp_path: Path
):
    last = synthetic_smoke_run / "checkpoints" / "last.ckpt"
    before = _ckpt(last)
    run2 = tmp_path / "resumed"
    proc = run_train(synthetic_source.train_args(run2, f"ckpt_path={last}", "trainer.max_steps=9"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {last} at step 6" in proc.stderr
    after = _ckpt(run2 / "checkpoints" / "last.ckpt")
    assert after["global_step"] == 9
    assert after["lr_schedulers"][0]["last_epoch"] == before["lr_schedulers"][0]["last_epoch"] + 3
    adam_before = before["optimizer_states"][0]["state"][0]["step"]
    assert after["optimizer_states"][0]["state"][0]["step"] == adam_before + 3
    steps = [e.step for e in _events(run2).Scalars("train/total")]
    assert steps == [6, 7, 8]  # logging continues the step count (0-based, as Lightning logs)
    old, new = before["state_dict"], after["state_dict"]
    assert new.keys() == old.keys()
    assert any(not torch.equal(new[k], old[k]) for k in new)  # it trained on from the checkpoint


@pytest.mark.slow
def test_interrupt_saves_last_checkpoint_and_says_how_to_resume(
    tmp_path: Path, synthetic_source: DataSource
):
    run = tmp_path / "interrupted"
    args = synthetic_source.train_args(
        run,
        "trainer.max_steps=100000",
        "trainer.enable_progress_bar=false",
        "train.checkpoint_every_n_steps=2",
    )
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.time() + 180
    while not (run / "checkpoints" / "step_000002.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline, "training did not start"
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    last = run / "checkpoints" / "last.ckpt"
    found = re.search(r"interrupted at step (\d+); saved (\S+)", err)
    assert found, err[-3000:]
    assert found.group(2) == str(last)
    assert f"resume with: python train.py <same overrides> ckpt_path={last}" in err
    step = int(found.group(1))
    assert step >= 2 and _ckpt(last)["global_step"] == step  # saved where it stopped


class _Payload:
    """Unpickling this would create ``path``: the code a hostile checkpoint would run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_refuses_a_checkpoint_that_would_run_code(
    tmp_path: Path, synthetic_source: DataSource
):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {}, "global_step": 3, "payload": _Payload(marker)}, bad)
    proc = run_train(synthetic_source.train_args(tmp_path / "run", f"ckpt_path={bad}"), timeout=300)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {bad}: refused to load, not a plain-data checkpoint"), last
    assert not marker.exists()
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained


def test_resume_from_a_missing_checkpoint_is_one_clear_error(
    tmp_path: Path, synthetic_source: DataSource
):
    missing = tmp_path / "nope.ckpt"
    proc = run_train(synthetic_source.train_args(tmp_path / "run", f"ckpt_path={missing}"))
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"error: ckpt_path: no such checkpoint: {missing}", last
    assert not (tmp_path / "run" / "checkpoints").exists()
