"""The issue's smoke command, run as a user runs it (a subprocess), then resumed and interrupted."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fast_style.core.model_io import load_model
from tests.conftest import REPO, run_train, smoke_args

SCALARS = ("train/content", "train/style", "train/tv", "train/total")


def _events(run_dir):
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def _step(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


def test_smoke_run_writes_checkpoints_and_model(smoke_run):
    assert (smoke_run / "checkpoints" / "last.ckpt").is_file()
    assert (smoke_run / "checkpoints" / "step_000003.ckpt").is_file()  # periodic
    assert _step(smoke_run / "checkpoints" / "last.ckpt") == 6
    assert (smoke_run / ".hydra" / "config.yaml").is_file()  # everything under the run dir
    exported = smoke_run / "starry_night.safetensors"
    with safe_open(str(exported), framework="pt") as f:
        meta = json.loads(f.metadata()["fast_style"])
    assert meta["style"] == "starry_night" and meta["width"] == "slim"
    assert meta["architecture"] == "johnson2016" and meta["channels"] == [16, 32, 64]
    assert meta["format_version"] == 1 and meta["global_step"] == 6
    assert meta["training"]["optim"]["lr"] == 1e-3 and meta["training"]["data"]["image_size"] == 64
    assert meta["weights_source"].endswith("vgg16-imagenet-features-fp16.pth")
    net, _ = load_model(exported)
    out = net(torch.rand(1, 3, 37, 51))
    assert out.shape == (1, 3, 37, 51)


def test_tensorboard_has_the_four_scalars_and_an_image(smoke_run):
    acc = _events(smoke_run)
    tags = acc.Tags()
    assert set(SCALARS) <= set(tags["scalars"])
    assert {"val/total", "val/content"} <= set(tags["scalars"])
    assert "val/stylized" in tags["images"]
    image = acc.Images("val/stylized")[0]
    assert image.width > image.height > 64  # style | images on top, style | stylised below
    losses = [e.value for e in acc.Scalars("train/total")]
    assert len(losses) == 6 and all(v > 0 for v in losses)


def test_resume_continues_step_optimizer_and_schedule(smoke_run, tmp_path):
    last = smoke_run / "checkpoints" / "last.ckpt"
    before = torch.load(last, map_location="cpu", weights_only=True)
    run2 = tmp_path / "resumed"
    proc = run_train(smoke_args(run2, f"ckpt_path={last}", "trainer.max_steps=9"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = torch.load(run2 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert after["global_step"] == 9
    assert after["lr_schedulers"][0]["last_epoch"] == before["lr_schedulers"][0]["last_epoch"] + 3
    adam_before = before["optimizer_states"][0]["state"][0]["step"]
    assert after["optimizer_states"][0]["state"][0]["step"] == adam_before + 3
    steps = [e.step for e in _events(run2).Scalars("train/total")]
    assert min(steps) > 6 - 1 and max(steps) >= 8  # logging continues the step count


@pytest.mark.slow
def test_interrupt_saves_last_checkpoint_and_says_how_to_resume(tmp_path, vgg_weights, train_dir):
    run = tmp_path / "interrupted"
    args = smoke_args(
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
    assert "interrupted at step" in err and "ckpt_path=" in err
    assert _step(run / "checkpoints" / "last.ckpt") >= 2


class _Payload:
    """Unpickling this would create ``path``: the code a hostile checkpoint would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path, vgg_weights, train_dir):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {}, "global_step": 3, "payload": _Payload(marker)}, bad)
    proc = run_train(smoke_args(tmp_path / "run", f"ckpt_path={bad}"), timeout=300)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "refused to load" in last
    assert not marker.exists()
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained


def test_resume_from_a_missing_checkpoint_is_one_clear_error(tmp_path, vgg_weights, train_dir):
    proc = run_train(smoke_args(tmp_path / "run", f"ckpt_path={tmp_path / 'nope.ckpt'}"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ckpt_path: no such checkpoint")
