"""Shared fixtures. Tests that need ../shared (real VGG16 weights, training photos) skip with a
clear reason when it is absent, as in a user's fresh clone; in CI and on developer machines it
is present and they run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FAST_STYLE_SHARED", REPO.parent / "shared"))
VGG_FILE = SHARED / "weights" / "vgg16-imagenet-features-fp16.pth"
TRAIN_DIR = SHARED / "data" / "train"
# Built kernels and ONNX exports go to a throw-away cache, not the user's ~/.cache (some modules
# build the fused CPU kernels at collection time, before any fixture runs).
os.environ.setdefault("FAST_STYLE_CACHE", tempfile.mkdtemp(prefix="fast_style_test_cache_"))


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests use tiny tensors; two threads avoid oversubscribing a 2-core CI machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED}: it holds the real VGG16 weights and photos")
    return SHARED


@pytest.fixture(scope="session")
def vgg_weights(shared_dir: Path) -> Path:
    if not VGG_FILE.is_file():
        pytest.skip(f"VGG16 weights not found at {VGG_FILE}")
    return VGG_FILE


@pytest.fixture(scope="session")
def train_dir(shared_dir: Path) -> Path:
    if not TRAIN_DIR.is_dir():
        pytest.skip(f"training photos not found at {TRAIN_DIR}")
    return TRAIN_DIR


def run_train(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` from the repo root, as a user runs it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def smoke_args(run_dir: Path, *extra: str) -> list[str]:
    """The issue's smoke command, with paths relative to the repo root as a user types them."""
    return [
        "style=starry_night",
        "experiment=smoke",
        "data.root=../shared/data/train",
        "loss.weights=../shared/weights/vgg16-imagenet-features-fp16.pth",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, vgg_weights: Path, train_dir: Path) -> Path:
    """One real smoke training run (≈10 s), shared by every test that needs a trained model.

    Returns the run directory (``checkpoints/last.ckpt``, ``starry_night.safetensors``, …).
    """
    if REPO.parent / "shared" != SHARED:
        pytest.skip("the smoke command uses ../shared relative to the repo")
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    proc = run_train(smoke_args(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir
