"""The package's architecture, checked: which sub-package may import which, no import cycles,
inference without the training stack, functions short enough to read at once."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "fast_style"
# What each sub-package may import from fast_style (besides itself). The layers, bottom up:
# core → loss → train → baseline; core → video (clip I/O) → infer → serve; the entry points on
# top. Baselines measure everything, so they may import inference and video too.
ALLOWED = {
    "core": set(),
    "video": {"core"},
    "loss": {"core"},
    "infer": {"core", "video"},
    "train": {"core", "loss"},
    "baseline": {"core", "loss", "train", "infer", "video"},
    "serve": {"core", "infer"},
}
TRAINING_STACK = ("pytorch_lightning", "lightning", "hydra", "omegaconf", "tensorboard")
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The fast_style modules a file imports (at module level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("fast_style"):
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("fast_style"))
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def test_sub_packages_import_only_the_layers_below_them():
    wrong = []
    for module, deps in _graph().items():
        own = _subpackage(module)
        if own not in ALLOWED:
            continue  # the package root and the command dispatcher
        for dep in deps:
            other = _subpackage(dep)
            if other not in (own, None) and other not in ALLOWED[own]:
                wrong.append(f"{module} imports {dep}")
    assert wrong == []


def test_there_are_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_layer_check_can_see_a_wrong_import(tmp_path, monkeypatch):
    """The check itself: a core module that imports train must be reported."""
    bad = tmp_path / "fast_style" / "core" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from fast_style.train.config import validate\n")
    (tmp_path / "fast_style" / "train").mkdir()
    (tmp_path / "fast_style" / "train" / "config.py").write_text("validate = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "fast_style")
    with pytest.raises(AssertionError, match=r"fast_style\.core\.bad imports"):
        test_sub_packages_import_only_the_layers_below_them()


def test_stylizing_never_imports_the_training_stack(tmp_path):
    code = (
        "import sys\n"
        "from fast_style.infer.cli import main\n"
        f"main(['--output', {str(tmp_path / 'out.jpg')!r}, '-q'])\n"
        "import fast_style.infer.export, fast_style.infer.stylizer\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {TRAINING_STACK!r}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out.jpg").is_file()


def test_functions_are_short_enough_to_read_at_once():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []
