"""Packaging: the wheel is complete and an installed copy works from anywhere.

The wheel is built once per module from a copy of the checkout, installed with ``--no-deps``
into a temporary ``site/`` folder, and every command runs with ``PYTHONPATH=site`` from a fresh
temporary working directory, with the checkout on no path. A probe (a ``sitecustomize`` on
``PYTHONPATH``) records, for each process: the file of every loaded ``fast_style`` module, what
``fast_style.core.resources`` resolves, and every file it opened, listed or spawned (audit
hooks). Each run asserts that all of it lies in ``site/`` and none of it in the checkout.

The probe can also hide every installed distribution that the base install (the
``[project].dependencies``) does not bring in: ``stylize`` must work with only those, and a
command that needs an extra must name it.

Reproduce: ``python -m pytest tests/test_packaging.py``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION_FILE = REPO / "fast_style" / "__init__.py"
# What the build reads, all that is copied (not run outputs, datasets or caches in the clone).
BUILD_INPUTS = sorted(
    {"pyproject.toml", PYPROJECT["project"]["readme"], *PYPROJECT["project"]["license-files"]}
    | {p.split(".")[0] for p in PYPROJECT["tool"]["setuptools"]["packages"]}
    | set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
)
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
# The top-level folders mapped into the package at build time ([tool.setuptools.package-dir]).
MAPPED = {"fast_style._conf": "conf", "fast_style._checkpoints": "checkpoints"}
PAINTINGS = {
    "composition_vii",
    "great_wave",
    "shipwreck_of_the_minotaur",
    "starry_night",
    "the_scream",
    "udnie",
    "water_lilies",
    "woman_with_hat",
}
WEB_FILES = {"index.html", "app.js", "ondevice.js", "style.css", "docs.html", "docs.js", "docs.css"}
# The browser runtime (scripts/build_web_runtime.py, git-ignored) ships when it was built.
VENDOR = Path("fast_style/serve/web/vendor/onnxruntime-web")
# Distributions that a fresh venv has without asking (python -m venv); never hidden.
VENV_BASELINE = {"pip", "setuptools", "wheel"}

PROBE = r'''
"""Test probe (tests/test_packaging.py): where fast_style and everything it read came from."""
import atexit
import importlib.machinery
import json
import os
import re
import sys

_REPORTS = os.environ["FAST_STYLE_PROBE_REPORTS"]
_HIDDEN = frozenset(filter(None, os.environ.get("FAST_STYLE_PROBE_HIDE", "").split(",")))
_HIDDEN_DISTS = frozenset(os.environ.get("FAST_STYLE_PROBE_HIDE_DISTS", "").split(",")) - {""}
_EVENTS = frozenset({"open", "os.listdir", "os.scandir", "glob.glob", "shutil.copyfile"})
_touched = set()


class _HidingPathFinder(importlib.machinery.PathFinder):
    """sys.meta_path's PathFinder without the hidden modules and distributions: to imports,
    importlib.util.find_spec and importlib.metadata they are simply not installed."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in _HIDDEN:
            return None
        return super().find_spec(name, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        for d in super().find_distributions(*args, **kwargs):
            name = re.sub(r"[-_.]+", "-", d.metadata["Name"] or "").lower()
            if name not in _HIDDEN_DISTS:
                yield d


if _HIDDEN:
    sys.meta_path[:] = [
        _HidingPathFinder if f is importlib.machinery.PathFinder else f for f in sys.meta_path
    ]
    assert _HidingPathFinder in sys.meta_path


def _path(value):
    if value is None or isinstance(value, int):
        return None
    return os.path.abspath(os.fsdecode(os.fspath(value)))


def _audit(event, args):
    try:
        if event in _EVENTS:
            p = _path(args[0]) if args else _path(".")
            if p:
                _touched.add(p)
        elif event == "subprocess.Popen":
            for a in args[1] or ():
                if isinstance(a, (str, bytes, os.PathLike)) and os.sep in os.fsdecode(a):
                    _touched.add(_path(a))
    except Exception:  # an audit hook must never make the operation fail
        pass


sys.addaudithook(_audit)


@atexit.register
def _report():
    mods = {
        n: getattr(m, "__file__", None)
        for n, m in list(sys.modules.items())
        if n == "fast_style" or n.startswith("fast_style.")
    }
    out = {"pid": os.getpid(), "argv": sys.argv, "sys_path": sys.path, "modules": mods}
    if "fast_style" in sys.modules:
        from fast_style.core import resources as r

        out.update(
            fast_style=sys.modules["fast_style"].__file__,
            config_dir=str(r.config_dir()),
            models_dir=str(r.shipped_models_dir()),
            paintings_dir=str(r.paintings_dir()),
            default_photo=str(r.default_photo()),
        )
    out["touched"] = sorted(_touched)
    with open(os.path.join(_REPORTS, f"{os.getpid()}.json"), "w") as f:
        json.dump(out, f)
'''


def _under(path: str | os.PathLike, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def _rel(names: Iterable[str], prefix: str) -> set[str]:
    return {n[len(prefix) :] for n in names if n.startswith(prefix)}


# ---------------------------------------------------------------------------------------------
# The package list (fast: no build)
# ---------------------------------------------------------------------------------------------


def _packages_in_tree() -> set[str]:
    """Every folder under fast_style/ with an ``__init__.py``, plus the mapped folders."""
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "fast_style").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    return found | set(MAPPED)


def test_every_package_is_listed() -> None:
    """A new sub-package missing from [tool.setuptools].packages would be left out of the wheel
    (a listed one that no longer exists fails the build)."""
    listed = PYPROJECT["tool"]["setuptools"]["packages"]
    assert len(listed) == len(set(listed)), "a package is listed twice"
    assert set(listed) == _packages_in_tree()
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == MAPPED
    for folder in MAPPED.values():
        assert (REPO / folder / "__init__.py").is_file(), f"{folder}/ lacks its __init__.py"
        # their sub-folders are data, not packages
        assert [p.parent for p in (REPO / folder).glob("*/**/__init__.py")] == []


def test_license_and_one_version() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 The fast_style developers\n")
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text
    # one version string: fast_style.__version__, which pyproject reads (dynamic)
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "fast_style.__version__"
    }
    assigned = [
        str(p.relative_to(REPO))
        for p in (REPO / "fast_style").rglob("*.py")
        if "__version__ =" in p.read_text(encoding="utf-8")
    ]
    assert assigned == ["fast_style/__init__.py"]


def _version() -> str:
    tree = ast.parse(VERSION_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__version__":
            return ast.literal_eval(node.value)
    raise AssertionError("no __version__ in fast_style/__init__.py")


# ---------------------------------------------------------------------------------------------
# Build, install
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    wheel: Path
    source: Path  # the copy of the checkout it was built from
    seconds: float


def _isolation_needed() -> bool:
    """Build without isolation (fast, offline) when this environment's setuptools satisfies
    [build-system].requires; else let pip fetch it into an isolated build environment."""
    for spec in PYPROJECT["build-system"]["requires"]:
        req = Requirement(spec)
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            return True
        if not req.specifier.contains(have, prereleases=True):
            return True
    return False


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The wheel, built once from a copy of the checkout's build inputs (building in place
    would leave a ``build/`` folder whose stale files could end up in later wheels)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    t0 = time.perf_counter()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=COPY_IGNORE)
        else:
            shutil.copy2(REPO / name, source / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(root / "dist"), "."]
    if not _isolation_needed():
        cmd.insert(4, "--no-build-isolation")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run(cmd, cwd=source, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = list((root / "dist").glob("*.whl"))
    assert len(wheels) == 1, wheels
    return Built(wheels[0], source, time.perf_counter() - t0)


@pytest.fixture(scope="module")
def site(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed with ``--no-deps`` into a folder of its own."""
    target = tmp_path_factory.mktemp("installed") / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target"]
    cmd += [str(target), str(built.wheel)]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (target / "fast_style" / "__init__.py").is_file()
    return target


def _base_closure() -> set[str]:
    """The distributions that ``pip install fast_style`` (no extra) brings in, read off this
    environment's metadata: [project].dependencies and, recursively, what they require."""
    todo = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        name = canonicalize_name(todo.pop().name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for r in map(Requirement, requires):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r)
    return seen


@dataclass(frozen=True)
class Hidden:
    """What a base install lacks: top-level modules and distribution names."""

    modules: tuple[str, ...]
    dists: tuple[str, ...]


@pytest.fixture(scope="module")
def not_in_base() -> Hidden:
    """Every installed distribution (and its top-level modules) that the base install lacks."""
    keep = _base_closure() | VENV_BASELINE | {"fast-style"}
    modules, dists = set(), set()
    for module, owners in importlib.metadata.packages_distributions().items():
        names = {canonicalize_name(d) for d in owners}
        if module in sys.stdlib_module_names or module.startswith("__editable__") or names & keep:
            continue
        modules.add(module)
        dists |= names
    # the test would prove nothing if these were importable (or if torch were hidden)
    assert {"pytorch_lightning", "hydra", "omegaconf", "tensorboard", "fastapi"} <= modules
    assert {"onnxruntime", "matplotlib", "uvicorn", "torchmetrics"} <= modules
    assert not {"torch", "torchvision", "PIL", "numpy", "safetensors", "tqdm"} & modules
    assert {"pytorch-lightning", "hydra-core", "tensorboard", "onnx"} <= dists
    return Hidden(tuple(sorted(modules)), tuple(sorted(dists)))


# ---------------------------------------------------------------------------------------------
# Running the installed copy
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    cwd: Path
    touched: set[str]  # every path any of its processes opened, listed or spawned


def _clean_env(site: Path, probe: Path, reports: Path, cache: Path, hide: Hidden | None) -> dict:
    """This environment without the checkout on any path, fast_style's own variables or
    PYTHONPATH; then PYTHONPATH = the installed copy and the probe."""
    env = {}
    for key, value in os.environ.items():
        if key.startswith("FAST_STYLE_") or key in ("PYTHONPATH", "PYTHONHOME", "PWD", "OLDPWD"):
            continue
        if str(REPO) in value:
            parts = [p for p in value.split(os.pathsep) if str(REPO) not in p]
            if not parts:
                continue
            value = os.pathsep.join(parts)
        env[key] = value
    env.update(
        PYTHONPATH=os.pathsep.join([str(site), str(probe)]),
        PYTHONNOUSERSITE="1",
        PYTHONUNBUFFERED="1",
        HYDRA_FULL_ERROR="1",
        FAST_STYLE_CACHE=str(cache),  # the fused kernels are built from the installed C file
        FAST_STYLE_PROBE_REPORTS=str(reports),
        FAST_STYLE_PROBE_HIDE=",".join(hide.modules if hide else ()),
        FAST_STYLE_PROBE_HIDE_DISTS=",".join(hide.dists if hide else ()),
    )
    return env


@pytest.fixture(scope="module")
def run_installed(site: Path, tmp_path_factory: pytest.TempPathFactory):
    """``run(name, argv, hide=None, prepare=None)``: argv (``python`` is this interpreter,
    ``bin/X`` an installed console script) from a fresh working directory (``prepare(cwd)``
    fills it first), checked to have run the installed copy only."""
    root = tmp_path_factory.mktemp("runs")
    probe = root / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE)
    cache = root / "cache"

    def run(
        name: str,
        argv: Sequence[str],
        hide: Hidden | None = None,
        prepare: Callable[[Path], object] | None = None,
        timeout: int = 600,
    ) -> Run:
        cwd, reports = root / name, root / f"{name}.reports"
        cwd.mkdir()
        reports.mkdir()
        if prepare is not None:
            prepare(cwd)
        argv = [
            sys.executable if a == "python" else str(site / a) if a.startswith("bin/") else a
            for a in argv
        ]
        env = _clean_env(site, probe, reports, cache, hide)
        proc = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        touched = _check_installed_only(reports, site, proc)
        return Run(proc, cwd, touched)

    return run


def _check_installed_only(reports: Path, site: Path, proc: subprocess.CompletedProcess) -> set:
    """Every process of a run: fast_style, its modules and its resources came from ``site``,
    and nothing it touched, nor its sys.path, is in the checkout."""
    found = [json.loads(p.read_text()) for p in sorted(reports.glob("*.json"))]
    why = f"\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert found, "the probe wrote no report (was the process killed?)" + why
    assert any("fast_style" in r for r in found), "no process imported fast_style" + why
    touched: set[str] = set()
    for r in found:
        assert not [p for p in r["sys_path"] if p and _under(p, REPO)], r["sys_path"]
        if "fast_style" in r:
            assert _under(r["fast_style"], site), r["fast_style"]
            for key in ("config_dir", "models_dir", "paintings_dir", "default_photo"):
                assert _under(r[key], site), (key, r[key])
            elsewhere = {n: f for n, f in r["modules"].items() if f and not _under(f, site)}
            assert not elsewhere, f"fast_style modules not from the installed copy: {elsewhere}"
        from_checkout = [p for p in r["touched"] if _under(p, REPO)]
        assert not from_checkout, f"{r['argv']} used the checkout: {from_checkout[:20]}"
        touched.update(os.path.realpath(p) for p in r["touched"])
    return touched


def _site_file(site: Path, *parts: str) -> str:
    return os.path.realpath(site.joinpath(*parts))


def _photos(folder: Path, n: int, size: tuple[int, int] = (96, 80)) -> Path:
    """``n`` synthetic photos (smooth gradients plus noise; no two alike)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        base = np.stack([xx * (i + 1) % 256, yy * 3 % 256, (xx + yy + 40 * i) % 256], -1)
        img = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"photo_{i:02d}.jpg", quality=90)
    return folder


# ---------------------------------------------------------------------------------------------
# The wheel
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_is_complete(built: Built) -> None:
    """Exactly the package's files: code, Hydra config tree, paintings, photos, models, C source,
    web page; plus the licence and metadata with the one version."""
    version = _version()
    assert built.wheel.name == f"fast_style-{version}-py3-none-any.whl"
    with zipfile.ZipFile(built.wheel) as z:
        names = set(z.namelist())
        metadata = z.read(f"fast_style-{version}.dist-info/METADATA").decode()
        license_text = z.read(f"fast_style-{version}.dist-info/licenses/LICENSE").decode()
    src = built.source

    # the named essentials, spelled out
    conf = _rel(names, "fast_style/_conf/")
    assert "train.yaml" in conf
    groups = {p.name for p in (src / "conf").iterdir() if p.is_dir()}
    assert groups == {"data", "experiment", "loss", "model", "optim", "style", "trainer"}
    for g in groups:
        want = {f"{g}/{p.name}" for p in (src / "conf" / g).glob("*.yaml")}
        assert want and want <= conf, g
    assert _rel(names, "fast_style/assets/styles/") == {f"{p}.jpg" for p in PAINTINGS}
    assert "fast_style/assets/photos/kodim23.jpg" in names
    assert "fast_style/assets/CREDITS.md" in names
    models = _rel(names, "fast_style/_checkpoints/") - {"__init__.py"}
    shipped = PAINTINGS | {"starry_night_cpu_demo", "multi", "starry_night_nano"}
    assert models == {f"{p}.safetensors" for p in shipped}
    assert "fast_style/infer/backends/csrc/fused_glue.c" in names
    vendor = {f"vendor/onnxruntime-web/{p.name}" for p in (src / VENDOR).glob("*") if p.is_file()}
    assert _rel(names, "fast_style/serve/web/") == WEB_FILES | vendor
    assert "fast_style/py.typed" in names
    for pkg in PYPROJECT["tool"]["setuptools"]["packages"]:
        assert f"{pkg.replace('.', '/')}/__init__.py" in names, pkg

    # and nothing more or less than the source tree's package files
    expected = {
        f"fast_style/{p.relative_to(src / 'fast_style').as_posix()}"
        for p in (src / "fast_style").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    for package, folder in MAPPED.items():
        prefix = package.replace(".", "/")
        expected |= {
            f"{prefix}/{p.relative_to(src / folder).as_posix()}"
            for p in (src / folder).rglob("*")
            if p.is_file() and (p.suffix in (".yaml", ".safetensors") or p.name == "__init__.py")
        }
    dist_info = {n for n in names if n.startswith(f"fast_style-{version}.dist-info/")}
    assert names - dist_info == expected
    assert {n.rsplit("/", 1)[1] for n in dist_info} == {
        "METADATA",
        "WHEEL",
        "RECORD",
        "entry_points.txt",
        "top_level.txt",
        "LICENSE",
    }

    assert license_text == (src / "LICENSE").read_text()
    assert f"\nVersion: {version}\n" in metadata
    assert "\nLicense-Expression: MIT\n" in metadata and "\nLicense-File: LICENSE\n" in metadata
    for extra in PYPROJECT["project"]["optional-dependencies"]:
        assert f"\nProvides-Extra: {extra}\n" in metadata
    print(
        f"\nwheel: {len(names)} files, {built.wheel.stat().st_size / 2**20:.1f} MiB, built in "
        f"{built.seconds:.1f} s"
    )


# ---------------------------------------------------------------------------------------------
# The installed copy, from anywhere
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_installed_stylize_defaults_with_base_deps_only(
    run_installed, site: Path, not_in_base: Hidden
) -> None:
    """``fast-style stylize`` with no arguments but the output: the shipped model on the
    shipped photo, importing nothing that the base install lacks (no Lightning, Hydra, …)."""
    r = run_installed(
        "stylize",
        ["python", "-m", "fast_style", "stylize", "--output", "out.jpg"],
        hide=not_in_base,
    )
    assert r.proc.returncode == 0, r.proc.stderr
    photo = _site_file(site, "fast_style", "assets", "photos", "kodim23.jpg")
    with Image.open(photo) as p, Image.open(r.cwd / "out.jpg") as out:
        assert out.size == p.size and out.mode == "RGB"
    assert photo in r.touched
    assert _site_file(site, "fast_style", "_checkpoints", "starry_night.safetensors") in r.touched


@pytest.mark.slow
def test_installed_list_models_console_script(run_installed, site: Path) -> None:
    """The generated ``fast-style-stylize`` script lists the shipped models, from ``site/``."""
    r = run_installed("list_models", ["bin/fast-style-stylize", "--list-models"])
    assert r.proc.returncode == 0, r.proc.stderr
    header, *rows = r.proc.stdout.strip().splitlines()
    assert header.split()[0] == "name" and header.split()[-1] == "path"
    listed = {row.split()[0]: row.split()[-1] for row in rows}
    assert set(listed) == PAINTINGS | {"starry_night_cpu_demo", "multi", "starry_night_nano"}
    for name, path in listed.items():
        assert path == str(site / "fast_style" / "_checkpoints" / f"{name}.safetensors")


@pytest.mark.slow
def test_installed_hydra_smoke_training(run_installed, site: Path) -> None:
    """Hydra composes the installed config tree; the painting is the installed one."""
    r = run_installed(
        "train",
        shlex.split(
            "python -m fast_style train style=starry_night experiment=smoke loss.weights=random "
            "data.root=photos hydra.run.dir=run trainer.max_steps=2"
        ),
        prepare=lambda cwd: _photos(cwd / "photos", 8),
    )
    assert r.proc.returncode == 0, r.proc.stderr[-4000:]
    run = r.cwd / "run"
    assert (run / "starry_night.safetensors").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    composed = (run / ".hydra" / "config.yaml").read_text()
    assert "name: starry_night" in composed and "weights: random" in composed
    for parts in (("_conf", "train.yaml"), ("_conf", "experiment", "smoke.yaml")):
        assert _site_file(site, "fast_style", *parts) in r.touched, parts
    assert _site_file(site, "fast_style", "assets", "styles", "starry_night.jpg") in r.touched


@pytest.mark.slow
def test_installed_gatys_with_a_style_name(run_installed, site: Path) -> None:
    r = run_installed(
        "gatys",
        shlex.split(
            "python -m fast_style gatys --content photo_00.jpg --style starry_night --output g.png "
            "--steps 2 --size 32 --style-scale 1 --vgg-weights random --device cpu --quiet"
        ),
        prepare=lambda cwd: _photos(cwd, 1, size=(48, 40)),
    )
    assert r.proc.returncode == 0, r.proc.stderr[-4000:]
    with Image.open(r.cwd / "g.png") as g:
        assert g.size == (32, 27)
    trace = json.loads((r.cwd / "g.json").read_text())
    assert trace["style"]["name"] == "starry_night" and trace["iterations"] == 2
    assert _site_file(site, "fast_style", "_conf", "style", "starry_night.yaml") in r.touched
    assert _site_file(site, "fast_style", "_conf", "loss", "vgg16.yaml") in r.touched
    assert _site_file(site, "fast_style", "assets", "styles", "starry_night.jpg") in r.touched


ENTRY_POINTS = r"""
import importlib.metadata, json, sys
dist = importlib.metadata.distribution("fast_style")
out = {"dist": str(dist.locate_file("")), "version": dist.version, "scripts": {}}
for ep in dist.entry_points.select(group="console_scripts"):
    fn = ep.load()
    out["scripts"][ep.name] = [ep.value, sys.modules[fn.__module__].__file__, callable(fn)]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_installed_console_scripts(run_installed, site: Path) -> None:
    """Every [project.scripts] entry point of the installed distribution loads from ``site/``,
    and its generated script runs."""
    scripts = PYPROJECT["project"]["scripts"]
    r = run_installed("entry_points", ["python", "-c", ENTRY_POINTS])
    assert r.proc.returncode == 0, r.proc.stderr[-4000:]
    got = json.loads(r.proc.stdout)
    assert os.path.realpath(got["dist"]) == os.path.realpath(site)
    assert got["version"] == _version()
    assert {name: value for name, (value, _, _) in got["scripts"].items()} == scripts
    for name, (_, module_file, is_callable) in got["scripts"].items():
        assert _under(module_file, site) and is_callable, name
        assert (site / "bin" / name).is_file(), name
    r = run_installed("version", ["bin/fast-style", "--version"])
    assert (r.proc.returncode, r.proc.stdout) == (0, f"fast_style {_version()}\n")


MISSING_EXTRAS = r"""
import contextlib, io, json, sys
from fast_style.cli import main
out = {}
for command in sys.argv[1:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            status = main([command])
        except SystemExit as e:
            status = e.code
        except Exception as e:  # reported, so that the assertion shows every command
            status = f"{type(e).__name__}: {e}"
    out[command] = [status, err.getvalue()]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_missing_extra_is_named(run_installed, not_in_base: Hidden) -> None:
    """With the base install only, a command that needs an extra says which, in one line
    (``fast_style.cli.main``, as ``fast-style COMMAND`` runs it)."""
    expected = {
        "train": ("hydra", "train"),
        "gatys": ("omegaconf", "train"),
        "evaluate": ("omegaconf", "train"),
        "serve": ("fastapi", "serve"),
    }
    r = run_installed("missing_extras", ["python", "-c", MISSING_EXTRAS, *expected], not_in_base)
    assert r.proc.returncode == 0, r.proc.stderr[-4000:]
    got = json.loads(r.proc.stdout)
    assert got == {
        command: [
            2,
            f"error: fast-style {command} needs {module}: pip install 'fast_style[{extra}]'\n",
        ]
        for command, (module, extra) in expected.items()
    }
