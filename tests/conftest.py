"""Shared fixtures, and the two layers of the training tests.

* The **synthetic** layer always runs, also in a fresh clone: photos made by a fixture
  (``synthetic_photos``) and a random-weight VGG16 saved like the real weights file
  (``random_vgg_file``). Every end-to-end training test (smoke run, TensorBoard, resume, Ctrl-C,
  DDP, fine-tuning, "Gatys computes exactly the training loss", …) runs on it.
* The **shared** layer adds the real VGG16 weights and training photos of ``../shared``
  (``$FAST_STYLE_SHARED``): the same checks on real data where that adds something, and the
  checks only real weights can pass (convergence, Caffe-scale invariance). Its tests carry the
  ``shared`` mark (directly, through the ``"shared"`` value of the ``data_source`` fixture, or
  by using a ../shared fixture such as ``vgg_weights``).
  Without ``../shared`` they are *deselected* at collection, and the header and the end of the
  run say how many and why; their synthetic twins still run. ``FAST_STYLE_REQUIRE_SHARED=1``
  (CI) turns a missing ``../shared`` into an error instead. ``-m shared`` runs the real layer
  alone, ``-m "not shared"`` the synthetic one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests._stylize_helpers import photo

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
SHARED = Path(os.environ.get("FAST_STYLE_SHARED", DEFAULT_SHARED))
VGG_FILE = SHARED / "weights" / "vgg16-imagenet-features-fp16.pth"
TRAIN_DIR = SHARED / "data" / "train"
HAVE_SHARED = SHARED.is_dir()
SHARED_MARK = "shared"
_DESELECTED = pytest.StashKey[list]()  # node ids of the shared tests deselected
SHARED_FIXTURES = {"shared_dir", "vgg_weights", "train_dir", "shared_source", "shared_smoke_run"}
# Built kernels and ONNX exports go to a throw-away cache, not the user's ~/.cache (some modules
# build the fused CPU kernels at collection time, before any fixture runs).
os.environ.setdefault("FAST_STYLE_CACHE", tempfile.mkdtemp(prefix="fast_style_test_cache_"))


# --- the shared layer: mark, deselection, report ------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{SHARED_MARK}: needs ../shared (real VGG16 weights, training photos); deselected with "
        "a note when it is absent",
    )
    if not HAVE_SHARED and os.environ.get("FAST_STYLE_REQUIRE_SHARED") == "1":
        raise pytest.UsageError(f"FAST_STYLE_REQUIRE_SHARED=1 but ../shared is not at {SHARED}")


def _absent_note() -> str:
    return (
        f"../shared not found at {SHARED}: the tests that need the real VGG16 weights and "
        "photos are deselected; the synthetic layer runs their checks on generated photos and "
        "a random-weight VGG16 (FAST_STYLE_SHARED=DIR points at another copy)"
    )


def pytest_report_header(config: pytest.Config) -> str:
    if HAVE_SHARED:
        return f"fast_style: ../shared at {SHARED}: synthetic and real-weights layers"
    return f"fast_style: {_absent_note()}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:  # a test that needs ../shared is in the real layer, marked or not
        if SHARED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(SHARED_MARK)
    if HAVE_SHARED:
        return
    keep = [item for item in items if item.get_closest_marker(SHARED_MARK) is None]
    gone = [item for item in items if item.get_closest_marker(SHARED_MARK) is not None]
    if gone:
        config.hook.pytest_deselected(items=gone)
        items[:] = keep
    config.stash[_DESELECTED] = [item.nodeid for item in gone]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    gone = config.stash.get(_DESELECTED, [])
    if gone:
        terminalreporter.write_sep("=", "real-weights layer not run", yellow=True)
        terminalreporter.write_line(f"{len(gone)} deselected: {_absent_note()}")
        for nodeid in gone:
            terminalreporter.write_line(f"  {nodeid}")


# --- general -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _default_sigint():
    """Each test starts with Python's Ctrl-C handler. Code run in-process by earlier tests
    (Lightning's KeyboardInterrupt shutdown sets SIGINT to SIG_IGN) can leave it ignored, and
    an ignored signal stays ignored in every child process: the Ctrl-C tests' subprocesses
    would then never see their SIGINT."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


# --- ../shared -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not HAVE_SHARED:
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


# --- synthetic stand-ins -------------------------------------------------------------------------

N_SYNTHETIC = 12


@pytest.fixture(scope="session")
def synthetic_photos(tmp_path_factory) -> Path:
    """A folder of 12 smooth, colourful 80×80 JPEG 'photos' (gradients plus noise)."""
    folder = tmp_path_factory.mktemp("synthetic_photos")
    for i in range(N_SYNTHETIC):
        photo(80, 80, seed=100 + i).save(folder / f"photo_{i:02d}.jpg", quality=90)
    return folder


def random_vgg16_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random-weight VGG16 ``features`` state_dict, laid out and typed like the real file
    (``features.<i>.weight``/``bias``, float16), with torchvision's VGG initialisation."""
    from torchvision.models import vgg as tv_vgg

    torch.manual_seed(seed)
    layers = tv_vgg.make_layers(tv_vgg.cfgs["D"])
    for m in layers:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    return {f"features.{k}": v.half() for k, v in layers.state_dict().items()}


@pytest.fixture(scope="session")
def random_vgg_file(tmp_path_factory) -> Path:
    """``random_vgg16_state()`` saved as ``vgg16-random-features-fp16.pth``: the synthetic
    layer's loss network. A file rather than ``loss.weights=random`` so that two networks built
    from it (the training criterion and the Gatys objective, a run and its resume) are the same
    network, and training loads it through the same path as the real weights."""
    path = tmp_path_factory.mktemp("random_vgg") / "vgg16-random-features-fp16.pth"
    torch.save(random_vgg16_state(), path)
    return path


# --- data sources: the two layers ----------------------------------------------------------------


@dataclass(frozen=True)
class DataSource:
    """Where a training run's photos and loss-network weights come from, as ``train.py``
    overrides (paths as a user types them)."""

    name: str  # "synthetic" or "shared"
    data_root: str
    weights: str

    @property
    def real(self) -> bool:
        """Real ImageNet VGG16 weights and real photos (the shared layer)."""
        return self.name == "shared"

    @property
    def weights_file(self) -> Path:
        """The loss-network weights file, absolute (for tests that build the loss in-process,
        whatever the working directory)."""
        path = Path(self.weights)
        return path if path.is_absolute() else (REPO / path).resolve()

    def train_args(self, run_dir: Path, *extra: str) -> list[str]:
        """The issue's smoke command on this source's data and weights."""
        return [
            "style=starry_night",
            "experiment=smoke",
            f"data.root={self.data_root}",
            f"loss.weights={self.weights}",
            f"hydra.run.dir={run_dir}",
            *extra,
        ]


@pytest.fixture(scope="session")
def synthetic_source(synthetic_photos: Path, random_vgg_file: Path) -> DataSource:
    return DataSource("synthetic", str(synthetic_photos), str(random_vgg_file))


@pytest.fixture(scope="session")
def shared_source(vgg_weights: Path, train_dir: Path) -> DataSource:
    if SHARED == DEFAULT_SHARED:  # the README's command, relative to the repo root
        rel = Path("..") / "shared"
        return DataSource(
            "shared", str(rel / "data" / "train"), str(rel / VGG_FILE.relative_to(SHARED))
        )
    return DataSource("shared", str(train_dir), str(vgg_weights))


@pytest.fixture(
    scope="session",
    params=["synthetic", pytest.param("shared", marks=pytest.mark.shared)],
)
def data_source(request: pytest.FixtureRequest) -> DataSource:
    """Each layer in turn: a test using it runs on synthetic data, and again on ../shared."""
    return request.getfixturevalue(f"{request.param}_source")


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


def _smoke(tmp_path_factory, source: DataSource) -> Path:
    run_dir = tmp_path_factory.mktemp(f"smoke_{source.name}") / "run"
    proc = run_train(source.train_args(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def synthetic_smoke_run(tmp_path_factory, synthetic_source: DataSource) -> Path:
    """One smoke training on the synthetic layer (a few seconds), shared by its tests."""
    return _smoke(tmp_path_factory, synthetic_source)


@pytest.fixture(scope="session")
def shared_smoke_run(tmp_path_factory, shared_source: DataSource) -> Path:
    """One smoke training with the real weights and photos of ../shared."""
    return _smoke(tmp_path_factory, shared_source)


@pytest.fixture(scope="session")
def smoke_run(data_source: DataSource, request: pytest.FixtureRequest) -> Path:
    """The smoke run of each layer in turn (``checkpoints/last.ckpt``,
    ``starry_night.safetensors``, ``tensorboard/``, ``.hydra/``); one training per layer."""
    return request.getfixturevalue(f"{data_source.name}_smoke_run")
