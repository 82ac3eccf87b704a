"""Package data from a checkout that is on sys.path but not installed (the GPU machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_checkout_that_is_not_installed_finds_its_config_and_models(tmp_path):
    # -S: no site-packages, so no editable install's mapping of fast_style._conf; the
    # resources must come from the checkout's conf/ and checkpoints/ folders.
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); "
        "import importlib.util as u; assert u.find_spec('fast_style._conf') is None; "
        "from fast_style.core import resources as r; "
        "print(r.config_dir()); print(r.shipped_models_dir())"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    conf, models = (Path(line) for line in out.stdout.split())
    assert conf == REPO / "conf" and (conf / "train.yaml").is_file()
    assert models == REPO / "checkpoints" and (models / "starry_night.safetensors").is_file()
