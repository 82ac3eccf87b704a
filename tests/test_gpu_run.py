"""The GPU plan (scripts/gpu_run.py) and what it carries (scripts/gpu_prepare.py), on the CPU:
the dry run goes through every step at toy size, as the GPU run will at full size."""

from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fast_style.core.model_io import read_metadata, style_names
from tests.conftest import photo

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_run():
    return _script("gpu_run")


def _photos(folder: Path, n: int, w: int = 64, h: int = 64, seed: int = 0) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        photo(w, h, seed=seed + i).save(folder / f"p{i}.jpg", quality=90)


@pytest.fixture(scope="module")
def carry(tmp_path_factory, random_vgg_file) -> Path:
    """A carry folder as gpu_prepare.py writes it, with tiny synthetic photos."""
    root = tmp_path_factory.mktemp("carry")
    _photos(root / "train", 6)
    _photos(root / "val", 3, seed=50)
    _photos(root / "kodak", 2, 96, 64, seed=80)
    (root / "vgg16-relu4_3-fp16.safetensors").write_bytes(b"")  # --vgg names the real one
    return root


@pytest.mark.slow
def test_dry_run_goes_through_every_step(gpu_run, carry, random_vgg_file, tmp_path, capsys):
    out = tmp_path / "out"
    rc = gpu_run.main([str(out), "--dry-run", "--carry", str(carry), "--vgg", str(random_vgg_file)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    for step in ("env", "multi", "judge", "single", "train_speed", "infer_speed"):
        assert "error" not in res[step] and "skipped" not in res[step], (step, res[step])
    assert res["multi"]["rc"] == 0 and res["judge"]["rc"] == 0
    # one row per painting, picked from its two style-weight rows, and judged again
    picks = res["judge"]["picks"]
    assert set(picks) == {"starry_night", "great_wave"}
    assert all(v.startswith(k + "__x") for k, v in picks.items())
    assert style_names(read_metadata(out / "multi8.safetensors")) == ["starry_night", "great_wave"]
    assert len(style_names(read_metadata(out / "multi.safetensors"))) == 4
    assert res["single"]["rc"] == 0 and (out / "single.safetensors").is_file()
    judged = {(r["style"], r["photos"]) for r in res["judge"]["final"]}
    assert len(judged) == 4  # 2 styles x (held-out, Kodak)
    assert [r["config"] for r in res["train_speed"]["rows"]] == ["eager-fp32", "bf16"]
    assert res["infer_speed"]["infer_b1"]["rows"][0]["images_per_s"] > 0
    # what comes back: at most 8 plain files, the logs and grids inside the two archives
    files = sorted(p.name for p in out.iterdir())
    assert all((out / f).is_file() for f in files) and len(files) <= 8, files
    with tarfile.open(out / "results.tar") as tar:
        names = tar.getnames()
    assert {"logs/multi.log", "logs/judge_final.log", "env.json", "bench_train.json"} <= set(names)
    assert "logs/single_compare.log" in names
    with tarfile.open(out / "grids.tar") as tar:
        assert len([n for n in tar.getnames() if n.endswith(".jpg")]) == 2
    assert "gpu_run (dry run) summary" in (out / "summary.md").read_text()


def test_a_step_that_no_longer_fits_is_skipped_and_a_failing_one_kept(gpu_run, tmp_path):
    run = gpu_run.Run(tmp_path, tmp_path, False, time.monotonic() + 30, "vgg", (1.0,))
    calls = []

    def ok(r, budget):
        calls.append(budget)
        return {"fine": True}

    def boom(r, budget):
        raise RuntimeError("broke")

    steps = [
        gpu_run.Step("a", 100, 1, ok),  # its budget is cut to what is left
        gpu_run.Step("b", 10, 1, boom),
        gpu_run.Step("c", 10, 60, ok),  # needs more than is left
    ]
    gpu_run.run_plan(run, steps, log=lambda s: None)
    assert calls and calls[0] <= 30
    assert run.results["b"]["error"] == "RuntimeError: broke"
    assert "skipped" in run.results["c"] and len(calls) == 1


def test_pick_rows_takes_the_most_balanced_row(gpu_run):
    rows = [
        {"style": "great_wave__x0.55", "gram_reduction": 0.50, "content_kept": 0.70},
        {"style": "great_wave__x0.85", "gram_reduction": 0.62, "content_kept": 0.58},
        {"style": "udnie__x0.55", "gram_reduction": 0.40, "content_kept": 0.80},
    ]
    assert gpu_run.pick_rows(rows, ["great_wave", "udnie", "starry_night"]) == {
        "great_wave": "great_wave__x0.85",
        "udnie": "udnie__x0.55",
    }


def test_prepare_fits_the_carry_into_the_limit(tmp_path, random_vgg_file):
    prep = _script("gpu_prepare")
    shared = tmp_path / "shared"
    (shared / "weights").mkdir(parents=True)
    state = {k: v.float() for k, v in torch.load(random_vgg_file, weights_only=True).items()}
    torch.save(state, shared / "weights" / prep.VGG_SOURCE)
    _photos(shared / "data" / "train", 30, 128, 128)
    _photos(shared / "data" / "val", 5, seed=40)
    _photos(shared / "data" / "eval" / "kodak24", 3, 96, 64, seed=60)
    carry, wheels = tmp_path / "carry", tmp_path / "whl"
    vgg_bytes = sum(v.numel() * 2 for k, v in state.items() if int(k.split(".")[1]) < 22)
    # room for the photos but only some of the training ones
    limit = prep.tree_bytes() + prep.MARGIN + vgg_bytes + 60_000
    args = ["--shared", str(shared), "--carry", str(carry), "--wheels", str(wheels)]
    args += ["--no-wheels", "--limit-mib", str(limit / (1 << 20)), "--val", "4", "--kodak", "2"]
    assert prep.main(args) == 0
    manifest = json.loads((carry / "manifest.json").read_text())
    assert manifest["val_photos"] == 4 and manifest["kodak_photos"] == 2
    assert 0 < manifest["train_photos"] < 30
    assert manifest["train_photos"] == len(list((carry / "train").glob("*.jpg")))
    assert manifest["bytes"]["total"] <= limit
    vgg = load_file(str(carry / "vgg16-relu4_3-fp16.safetensors"))
    assert {int(k.split(".")[1]) for k in vgg} == {0, 2, 5, 7, 10, 12, 14, 17, 19, 21}
    assert all(v.dtype == torch.float16 for v in vgg.values())
    assert prep.main([*args[:-4], "--shared", str(tmp_path / "none")]) == 2


def test_the_gpu_runs_training_config_composes_and_validates(gpu_run, tmp_path):
    """The real (not dry) overrides: a config mistake must show here, not on the GPU."""
    from hydra import compose, initialize_config_dir

    from fast_style.core.resources import config_dir
    from fast_style.train.config import validate

    run = gpu_run.Run(tmp_path, tmp_path / "carry", False, time.monotonic() + 600, "v.pth", None)
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", gpu_run.multi_overrides(run, 4.2))
    s = validate(cfg)
    assert s.conditional and list(s.model.channels) == [32, 64, 128]
    assert len(s.styles) == 16 and s.data.batch_size == 4 and s.trainer["precision"] == "bf16-mixed"
    by_name = {st.name: st for st in s.styles}
    # each painting at its two scales of its own style weight, its painting and metadata kept
    assert by_name["water_lilies__x0.45"].style_weight == pytest.approx(0.9)
    assert by_name["starry_night__x1.2"].style_weight == pytest.approx(3.0)
    assert by_name["great_wave__x1"].title == "The Great Wave off Kanagawa"
    assert s.train.time_budget_min == pytest.approx(4.2)


def test_the_single_style_comparison_composes_as_one_network(gpu_run, tmp_path):
    from hydra import compose, initialize_config_dir

    from fast_style.core.resources import config_dir
    from fast_style.train.config import validate

    run = gpu_run.Run(tmp_path, tmp_path / "carry", False, time.monotonic() + 600, "v.pth", None)
    gpu_run.style_entries(run, ["great_wave"])  # writes OUT/styles/great_wave__x*.yaml
    seen = {"steps": 1500, "batch_size": 4}
    args = gpu_run.single_overrides(run, "great_wave__x0.6", seen, 50)
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        s = validate(compose("train", args))
    assert not s.conditional and [st.name for st in s.styles] == ["great_wave__x0.6"]
    assert s.styles[0].style_weight == pytest.approx(1.2)
    assert s.trainer["max_steps"] == 1500 and s.data.batch_size == 4


def test_a_step_past_its_timeout_is_stopped_gracefully(gpu_run, tmp_path):
    """SIGTERM first (training saves last.ckpt on it), and the step is reported as rc 124."""
    run = gpu_run.Run(tmp_path, tmp_path, False, time.monotonic() + 60, "v.pth", None)
    flag = tmp_path / "terminated"
    code = (
        "import signal, sys, time, pathlib\n"
        f"def bye(*a): pathlib.Path({str(flag)!r}).write_text('yes'); sys.exit(3)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    script = tmp_path / "slow.py"
    script.write_text(code)
    t0 = time.monotonic()
    proc = run.sh("slow", [str(script)], 3)
    assert proc.returncode == 124 and time.monotonic() - t0 < 20
    assert flag.read_text() == "yes"
    assert "stopped after 3 s" in (tmp_path / "logs" / "slow.log").read_text()


def test_a_run_stopped_before_its_export_is_rescued_from_its_checkpoint(
    gpu_run, carry, random_vgg_file, tmp_path
):
    from fast_style.core.model_io import load_model, style_names

    run_dir = tmp_path / "run"
    args = ["experiment=smoke", "model=multi_slim", "styles=[starry_night,great_wave]"]
    args += [f"data.root={carry / 'train'}", f"loss.weights={random_vgg_file}"]
    args += ["trainer.max_steps=3", f"hydra.run.dir={run_dir}"]
    run = gpu_run.Run(tmp_path, carry, True, time.monotonic() + 300, str(random_vgg_file), None)
    assert run.sh("train", ["train.py", *args], 240).returncode == 0
    exported = run_dir / "multi.safetensors"
    assert not gpu_run.rescue(tmp_path / "none", tmp_path / "x.safetensors")  # no checkpoint
    assert gpu_run.rescue(run_dir / "checkpoints", tmp_path / "rescued.safetensors")
    want, _ = load_model(exported)
    got, meta = load_model(tmp_path / "rescued.safetensors")
    assert style_names(meta) == ["starry_night", "great_wave"]
    assert meta["exported_from"] == "last.ckpt"
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        for row in range(2):
            style = torch.eye(2)[[row]]
            # the rescue writes float16, the smoke run float32
            torch.testing.assert_close(got(x, style), want(x, style), atol=5e-3, rtol=0)
