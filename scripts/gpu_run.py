"""The whole GPU plan in one command, each step on a time budget (issue 16; DEVELOPERS.md).

    python scripts/gpu_prepare.py                     # here: fills .carry/ and .whl/
    python scripts/gpu_run.py OUT [--budget-s 560]    # there: everything lands in OUT
    python scripts/gpu_run.py OUT --dry-run           # here: the same steps on the CPU, toy size

A GPU session gets about 15 minutes of one H200, start-up included, and 10 minutes a command,
so the plan is one command of about nine minutes. Steps run in order of priority; each gets a
budget in seconds and is skipped when it no longer fits in what is left (``--budget-s``). Every
step runs the project's own commands in a subprocess, with a timeout, its log in OUT/logs:

1. ``env``: GPU, driver, torch and package versions (``env.json``), shown next to every figure.
2. ``multi``: one conditional-instance-norm network (``model=multi``) of all eight shipped
   styles, each painting twice, at two style weights (``SCALES``, times the weight of its
   ``conf/style/<name>.yaml``): the tuning of issue 16's first section done inside one run.
   ``experiment=gpu_fast`` (bf16, photos held in GPU memory), ``train.time_budget_min``.
3. ``judge``: issue 16's independent measures (``scripts/judge_styles.py``: Gram-distance
   reduction, content kept) of every row on the held-out photos; per painting the row with the
   higher min(reduction, content kept) is kept (``select_styles``) in ``multi8.safetensors``,
   which is judged again on the Kodak photos with the 12-photo grids at 512 px, beside the
   shipped single-style models.
4. ``single``: a single-style network of the first painting trained on as many images as each
   style of the multi-style run saw, scored beside it (``scripts/eval_styles.py``, issue 14).
5. ``train_speed``: ``scripts/bench_train.py``, naive eager fp32 against bf16 and channels_last
   (the step-time table of issue 16, section 3).
6. ``infer_speed``: ``scripts/bench_stylize.py``: 1920×1080 and 512² at batch 1, 1280×720 and
   1920×1080 batched, 3840×2160 whole and tiled with its peak memory.
7. ``pack`` (always, also after an error or Ctrl-C): ``summary.md``, ``results.tar`` (logs,
   tables, configs) and ``grids.tar`` beside the model files: the device tool brings back at
   most 8 files of OUT.

``--dry-run`` runs the same steps on the CPU at toy sizes (tiny crops, a few steps, 2 paintings)
in a minute or two; ``tests/test_gpu_run.py`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PAINTINGS = (
    "starry_night",
    "great_wave",
    "the_scream",
    "composition_vii",
    "shipwreck_of_the_minotaur",
    "udnie",
    "water_lilies",
    "woman_with_hat",
)
VGG_FILE = "vgg16-relu4_3-fp16.safetensors"  # scripts/gpu_prepare.py writes it
# Two style-weight multipliers per painting (times its conf/style weight), bracketing where the
# judge should land (docs/quality.md, "Independent judge": 30 held-out photos). starry_night,
# trained alone at its weight for 81.5k images, keeps 0.58 of the content at a Gram reduction
# of 0.70; the seven others, trained at weight 5 and then fine-tuned at their conf weights
# (README, Shipped models), keep 0.40-0.50 at 0.67-0.79. A row here sees about a tenth of
# starry_night's images, which leaves it less stylised at the same weight: so the conf
# weight or a little above for starry_night, the conf weight and below for the others, lower
# still for the three that kept least or reduced most (water_lilies 0.40, the_scream 0.46,
# shipwreck_of_the_minotaur at 0.79). --style-scales sets one pair for all.
SCALES: dict[str, tuple[float, ...]] = {
    "starry_night": (0.85, 1.2),
    "shipwreck_of_the_minotaur": (0.45, 0.8),
    "the_scream": (0.45, 0.8),
    "water_lilies": (0.45, 0.8),
}
DEFAULT_SCALES = (0.6, 1.0)
DRY_STEP_S = 240.0  # seconds each step may take in the dry run
GRACE_S = 20.0  # seconds a step stopped at its timeout gets to save its checkpoint


@dataclass
class Run:
    """What the steps share: the output folder, the carried data, the clock."""

    out: Path
    carry: Path
    dry: bool
    deadline: float  # time.monotonic() at which the whole plan must have ended
    vgg: str
    style_scales: tuple[float, ...] | None  # one pair for all; None: SCALES per painting
    results: dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sh(self, name: str, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
        """``python args…`` from the repository root, output into logs/<name>.log. A run past
        ``timeout`` seconds gets SIGTERM (training then saves ``last.ckpt``), is killed
        ``GRACE_S`` later if still running, and is reported as rc 124 (its log kept)."""
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FAST_STYLE_VGG_WEIGHTS": self.vgg}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with log.open("w") as f:
            f.write(f"$ python {' '.join(args)}\n")
            f.flush()
            cmd = [sys.executable, *args]
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
            try:
                return subprocess.CompletedProcess(args, proc.wait(timeout=max(timeout, 1)))
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                f.write(f"\n[gpu_run] stopped after {timeout:.0f} s\n")
                return subprocess.CompletedProcess(args, 124)
            except BaseException:  # Ctrl-C of the whole run: stop the child too
                proc.kill()
                proc.wait()
                raise

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"


@dataclass
class Step:
    name: str
    budget: float  # seconds this step may take on the GPU
    need: float  # seconds that must be left to start it
    fn: Callable[[Run, float], dict[str, Any]]


# --- 1. environment -------------------------------------------------------------------------


def step_env(run: Run, budget: float) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpus": os.cpu_count(),
    }
    for name in ("pytorch-lightning", "hydra-core", "torchvision", "safetensors"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # the later steps will say what failed
            info[name] = None
    try:
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        info["nvidia_smi"] = smi.stdout.strip() if smi.returncode == 0 else None
    except OSError:  # no NVIDIA driver (the dry run)
        info["nvidia_smi"] = None
    manifest = run.carry / "manifest.json"
    info["carry"] = json.loads(manifest.read_text()) if manifest.is_file() else None
    (run.out / "env.json").write_text(json.dumps(info, indent=1))
    return info


# --- 2. the eight-style network ---------------------------------------------------------------


def variant_name(painting: str, scale: float) -> str:
    return f"{painting}__x{scale:g}"


def style_entries(run: Run, paintings: Sequence[str]) -> str:
    """The ``styles=[…]`` override: each painting at each style-weight scale, as a YAML file in
    OUT/styles (the painting's ``conf/style`` YAML, renamed, its style weight scaled)."""
    from omegaconf import OmegaConf

    from fast_style.core.resources import config_dir

    folder = run.out / "styles"
    folder.mkdir(exist_ok=True)
    files = []
    for p in paintings:
        base = OmegaConf.load(config_dir() / "style" / f"{p}.yaml")
        for s in run.style_scales or SCALES.get(p, DEFAULT_SCALES):
            cfg = OmegaConf.merge(base, {"name": variant_name(p, s)})
            cfg.style_weight = round(float(base.style_weight) * s, 4)
            if run.dry:
                cfg.size = 128
            path = folder / f"{cfg.name}.yaml"
            OmegaConf.save(cfg, path)
            files.append(str(path))
    return "styles=[" + ",".join(files) + "]"


def multi_overrides(run: Run, minutes: float) -> list[str]:
    """``train.py``'s overrides for the eight-style network (the dry run: two, at toy size)."""
    paintings = PAINTINGS[:2] if run.dry else PAINTINGS
    args = [
        "experiment=smoke" if run.dry else "experiment=gpu_fast",
        "model=multi_slim" if run.dry else "model=multi",
        style_entries(run, paintings),
        f"data.root={run.carry / 'train'}",
        f"data.val_root={run.carry / 'val'}",
        f"loss.weights={run.vgg}",
        f"train.time_budget_min={minutes:.3f}",
        "train.export_name=multi",
    ]
    if run.dry:
        return [*args, "trainer.max_steps=3", "data.batch_size=1"]
    # Every step runs the content batch once per row (16 rows): 4 photos a row make 64 images
    # a step, 4 times gpu_fast's 16, and the time budget sets the number of steps.
    return [
        *args,
        "data.batch_size=4",
        "trainer.max_steps=20000",
        "trainer.val_check_interval=1000",
    ]


def step_multi(run: Run, budget: float) -> dict[str, Any]:
    # Start-up, photos into GPU memory, Gram targets, the last validation and the export: a run
    # killed at its timeout leaves no model, so the margin is generous.
    overhead = 15 if run.dry else 75
    args = multi_overrides(run, max(budget - overhead, 10) / 60)
    proc = run.sh("multi", ["train.py", *args, f"hydra.run.dir={run.out / 'multi'}"], budget)
    model = run.out / "multi" / "multi.safetensors"
    rescued = not model.is_file() and rescue(run.out / "multi" / "checkpoints", model)
    return {
        "rc": proc.returncode,
        "model": str(model) if model.is_file() else None,
        **({"from_checkpoint": True} if rescued else {}),
    }


def rescue(ckpt_dir: Path, model: Path) -> bool:
    """A run stopped before its export: its ``last.ckpt`` (saved on SIGTERM), else its latest
    periodic checkpoint, exported as ``model`` (float16). Whether one was found."""
    from fast_style.core.model_io import load_model, save_safetensors

    found = sorted(ckpt_dir.glob("step_*.ckpt"))
    last = ckpt_dir / "last.ckpt"
    ckpt = last if last.is_file() else (found[-1] if found else None)
    if ckpt is None:
        return False
    net, meta = load_model(ckpt)
    save_safetensors(net, model, {**meta, "exported_from": ckpt.name}, dtype="float16")
    return True


# --- 3. the independent judge, one row per painting ------------------------------------------


def pick_rows(rows: Sequence[dict[str, Any]], paintings: Sequence[str]) -> dict[str, str]:
    """Per painting, the name of its row with the highest min(Gram reduction, content kept)
    on the held-out photos: the row nearest to meeting both goals at once."""
    picks = {}
    for p in paintings:
        mine = [r for r in rows if r["style"].split("__x")[0] == p]
        if mine:
            best = max(mine, key=lambda r: min(r["gram_reduction"], r["content_kept"]))
            picks[p] = best["style"]
    return picks


def judge_args(run: Run, models: Sequence[str], photos: Sequence[Path], json_out: Path) -> list:
    args = ["scripts/judge_styles.py", "--models", *models, "--vgg", run.vgg]
    for folder in photos:
        args += ["--photos", str(folder)]
    size = "64" if run.dry else "512"
    return [*args, "--size", size, "--device", run.device, "--json", str(json_out)]


def step_judge(run: Run, budget: float) -> dict[str, Any]:
    """Judge every row on the held-out photos, keep the best row per painting in
    ``multi8.safetensors``, judge that and the shipped models on both photo sets, with grids."""
    from fast_style.core.model_io import load_model, save_safetensors
    from fast_style.train.multi import select_styles

    end = time.monotonic() + budget
    trained = run.out / "multi" / "multi.safetensors"
    rows_json = run.out / "judge_rows.json"
    proc = run.sh("judge_rows", judge_args(run, [str(trained)], [run.carry / "val"], rows_json),
                  0.5 * budget)  # fmt: skip
    if proc.returncode != 0 or not rows_json.is_file():
        return {"rc": proc.returncode, "error": "judging the trained rows failed (logs)"}
    rows = json.loads(rows_json.read_text())["results"]
    picks = pick_rows(rows, PAINTINGS)
    net, meta = load_model(trained)
    small, small_meta = select_styles(net, meta, picks)
    chosen = save_safetensors(small, run.out / "multi8.safetensors", small_meta, dtype="float16")
    final_json = run.out / "judge_final.json"
    # Beside the shipped single-style models (on the GPU: a few seconds; not in the dry run).
    models = [str(chosen)] if run.dry else [str(chosen), "shipped"]
    args = judge_args(run, models, [run.carry / "val", run.carry / "kodak"], final_json)
    args += ["--grid", str(run.out / GRIDS)]
    proc = run.sh("judge_final", args, max(end - time.monotonic(), 10))
    for f in (run.out / GRIDS).glob("*.jpg"):  # the shipped models: judged on the CPU already
        if not f.name.startswith(f"{chosen.stem}__"):
            f.unlink()
    final = json.loads(final_json.read_text())["results"] if final_json.is_file() else []
    keys = ("model", "style", "photos", "gram_reduction", "content_kept", "goal_met")
    brief = [{k: r[k] for k in keys} for r in final]
    return {"rc": proc.returncode, "picks": picks, "final": brief}


# --- 3b. the multi-style network against a single-style one (issue 14's quality target) ---------


def single_overrides(run: Run, row: str, seen: dict[str, Any], budget: float) -> list[str]:
    """``train.py``'s overrides for one single-style network of the multi-style run's ``row``
    (its YAML in OUT/styles), as many steps of the same batch as that run made."""
    args = [
        "experiment=smoke" if run.dry else "experiment=gpu_fast",
        f"styles=[{run.out / 'styles' / (row + '.yaml')}]",  # one: a single-style network
        f"data.root={run.carry / 'train'}",
        f"data.val_root={run.carry / 'val'}",
        f"loss.weights={run.vgg}",
        f"data.batch_size={seen['batch_size']}",
        f"trainer.max_steps={seen['steps']}",
    ]
    if not run.dry:
        args.append(f"train.time_budget_min={max(budget - 35, 10) / 60:.3f}")
    return args


def step_single(run: Run, budget: float) -> dict[str, Any]:
    """One single-style network of the first painting, at its picked row's weights, trained
    on as many images as each style of the multi-style run saw (its steps × its batch), and
    both scored with that style's own criterion on the held-out photos."""
    picks = run.results.get("judge", {}).get("picks") or {}
    thru = run.out / "multi" / "throughput.json"
    if not picks or not thru.is_file():
        return {"skipped": "no multi-style run to compare with"}
    painting, row = next(iter(picks.items()))
    seen = json.loads(thru.read_text())
    args = ["train.py", *single_overrides(run, row, seen, budget)]
    args.append(f"hydra.run.dir={run.out / 'single'}")
    proc = run.sh("single", args, 0.75 * budget)
    single = run.out / "single" / f"{row}.safetensors"
    if proc.returncode != 0 or not single.is_file():
        return {"rc": proc.returncode, "error": "the single-style run failed (logs)"}
    size = "64" if run.dry else "256"
    cmp = ["scripts/eval_styles.py", "--model", str(run.out / "multi8.safetensors"), "--photos"]
    cmp += [str(run.carry / "val"), "--size", size, "--limit", "40", "--vgg", run.vgg]
    cmp += ["--device", run.device, "--compare", f"{painting}={single}"]
    proc = run.sh("single_compare", cmp, max(0.25 * budget, 10))
    single.replace(run.out / "single.safetensors")
    return {"rc": proc.returncode, "style": painting, "row": row, "steps": seen["steps"]}


# --- 4. training speed --------------------------------------------------------------------


def step_train_speed(run: Run, budget: float) -> dict[str, Any]:
    """The step-time table: naive eager fp32 against bf16 and channels_last, batch 16 at 256²
    on the carried photos, then 20 profiled bf16 steps."""
    json_out = run.out / "bench_train.json"
    args = ["scripts/bench_train.py", "--device", run.device, "--json", str(json_out)]
    args += ["--photos", str(run.carry / "train")]
    if run.dry:
        args += ["--configs", "eager-fp32,bf16", "--batch", "1", "--size", "32", "--steps", "1"]
        args += ["--warmup", "0", f"loss.weights={run.vgg}", "model=slim"]
    else:
        args += ["--configs", "eager-fp32,bf16,bf16-cl", "--batch", "16", "--size", "256"]
        args += ["--steps", "20", "--warmup", "5", f"loss.weights={run.vgg}"]
    rows = _bench(run, "train_speed", args, json_out, budget)
    if not run.dry and run.left() > 40:
        prof = ["scripts/bench_train.py", "--device", "cuda", "--configs", "bf16", "--batch"]
        prof += ["16", "--steps", "5", "--warmup", "5", "--profile", "20"]
        prof += ["--json", str(run.out / "bench_train_profile.json"), f"loss.weights={run.vgg}"]
        run.sh("train_profile", prof, min(40, run.left() - 5))
    return rows


def _bench(run: Run, name: str, args: list[str], json_out: Path, timeout: float) -> dict:
    proc = run.sh(name, args, timeout)
    rows = json.loads(json_out.read_text()).get("rows") if json_out.is_file() else None
    return {"rc": proc.returncode, "rows": rows}


# --- 5. inference speed -------------------------------------------------------------------


def infer_jobs(dry: bool) -> list[tuple[str, list[str], float]]:
    """(name, bench_stylize.py arguments, share of the step's budget), in priority order:
    1920×1080 at batch 1 with CUDA graphs, batched video sizes, 512² for both widths, and
    3840×2160 whole and tiled with its peak memory."""
    if dry:
        tiny = ["--sizes", "256²", "--backends", "eager", "--repeats", "1"]
        return [("infer_b1", ["--widths", "slim", *tiny], 1.0)]
    return [
        ("infer_b1", ["--widths", "full", "--backends", "bf16w,graphs", "--sizes",
                      "1920×1080,512²", "--repeats", "30"], 0.4),
        ("infer_batched", ["--widths", "full", "--backends", "bf16w", "--batch", "8",
                           "--sizes", "1280×720,1920×1080", "--repeats", "10"], 0.2),
        ("infer_slim", ["--widths", "slim", "--backends", "bf16w", "--sizes",
                        "512²,1920×1080", "--repeats", "30"], 0.15),
        ("infer_4k", ["--widths", "full", "--backends", "bf16w", "--sizes", "3840×2160",
                      "--repeats", "5", "--memory"], 0.25),
    ]  # fmt: skip


def step_infer_speed(run: Run, budget: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    end = time.monotonic() + budget
    for name, extra, share in infer_jobs(run.dry):
        left = end - time.monotonic()
        if left < 10:
            out[name] = {"skipped": f"{left:.0f} s left"}
            continue
        json_out = run.out / f"bench_{name}.json"
        args = ["scripts/bench_stylize.py", "--device", run.device, *extra, "--json", str(json_out)]
        out[name] = _bench(run, name, args, json_out, max(share * budget, 10))
    return out


# --- 6. what comes back ---------------------------------------------------------------------

KEEP = (
    "summary.md",
    "results.json",
    "multi8.safetensors",
    "multi.safetensors",
    "single.safetensors",
)
GRIDS = "grids"  # packed apart: a grid per style at 512 px is a megabyte or two


RETURN_LIMIT = 16 << 20  # bytes: the largest file the device tool brings back


def _tar(out: Path, files: Sequence[Path], name: str) -> dict[str, Any]:
    """``files`` (under ``out``) into ``out/name``, then removed."""
    path = out / name
    with tarfile.open(path, "w") as tar:
        for f in files:
            tar.add(f, arcname=str(f.relative_to(out)))
    for f in files:
        f.unlink()
    size = path.stat().st_size
    return {"files": len(files), "bytes": size, "too_large": size > RETURN_LIMIT}


def pack(run: Run) -> dict[str, Any]:
    """OUT as at most six files, since the device tool brings back 8 at most: the kept files,
    ``grids.tar`` and ``results.tar`` (logs, tables, configs, TensorBoard). The training
    checkpoints (optimizer state: too large) are dropped; the exported models are kept."""
    out = run.out
    model = out / "multi" / "multi.safetensors"
    if model.is_file():
        model.replace(out / "multi.safetensors")
    for f in out.rglob("*.ckpt"):
        f.unlink()
    files = sorted(f for f in out.rglob("*") if f.is_file() and not f.name.endswith(".tar"))
    files = [f for f in files if str(f.relative_to(out)) not in KEEP]
    grids = [f for f in files if f.relative_to(out).parts[0] == GRIDS]
    res = {"grids": _tar(out, grids, "grids.tar")} if grids else {}
    res["results"] = _tar(out, [f for f in files if f not in grids], "results.tar")
    for d in sorted((d for d in out.rglob("*") if d.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    return res


TABLE_LOGS = ("judge_rows", "judge_final", "single_compare", "train_speed")


def write_summary(run: Run) -> None:
    """``summary.md``: the environment, the Markdown tables the steps printed, then each
    step's result as JSON."""
    env = run.results.get("env", {})
    lines = [f"# gpu_run {'(dry run) ' if run.dry else ''}summary\n"]
    lines.append(f"{env.get('device')}, torch {env.get('torch')}, CUDA {env.get('cuda')}\n")
    for name in TABLE_LOGS:
        log = run.out / "logs" / f"{name}.log"
        table = (
            [x for x in log.read_text().splitlines() if x.startswith("|")] if log.is_file() else []
        )
        if table:
            lines += [f"## {name}\n", *table, ""]
    for name, res in run.results.items():
        lines.append(f"## {name}\n\n```json\n{json.dumps(res, indent=1)[:4000]}\n```\n")
    (run.out / "summary.md").write_text("\n".join(lines))


def plan() -> list[Step]:
    """The steps in order of priority with (GPU budget, seconds needed to start them)."""
    return [
        Step("env", 10, 1, step_env),
        Step("multi", 300, 120, step_multi),
        Step("judge", 75, 20, step_judge),
        Step("single", 50, 30, step_single),
        Step("train_speed", 55, 25, step_train_speed),
        Step("infer_speed", 70, 30, step_infer_speed),
    ]


def run_plan(run: Run, steps: Sequence[Step], log: Callable[[str], None] = print) -> None:
    for step in steps:
        left = run.left()
        if left < step.need:
            run.results[step.name] = {"skipped": f"{left:.0f} s left, needs {step.need:.0f}"}
            log(f"[gpu_run] {step.name}: skipped ({left:.0f} s left)")
            continue
        # The dry run's steps are tiny, but a busy 2-core host can make any of them slow.
        budget = min(max(step.budget, DRY_STEP_S) if run.dry else step.budget, left)
        t0 = time.monotonic()
        log(f"[gpu_run] {step.name}: budget {budget:.0f} s ({left:.0f} s left)")
        try:
            res = step.fn(run, budget)
        except Exception as e:  # one failing step keeps the others
            res = {"error": f"{type(e).__name__}: {e}"}
        res["seconds"] = round(time.monotonic() - t0, 1)
        run.results[step.name] = res
        log(f"[gpu_run] {step.name}: {json.dumps(res)[:400]}")
        (run.out / "results.json").write_text(json.dumps(run.results, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (the device tool's $OUT)")
    p.add_argument(
        "--budget-s", type=float, default=None, help="the whole plan, seconds (560; dry: 1200)"
    )
    p.add_argument("--carry", type=Path, default=REPO / ".carry", help="gpu_prepare.py's folder")
    p.add_argument("--vgg", default=None, help="VGG16 weights (default: in --carry)")
    p.add_argument("--style-scales", default=None, help="style-weight multipliers (SCALES)")
    p.add_argument("--only", default=None, help="comma list of steps to run (default: all)")
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, seconds")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    run = Run(
        out=args.out,
        carry=args.carry,
        dry=args.dry_run,
        deadline=time.monotonic() + (args.budget_s or (1200.0 if args.dry_run else 560.0)),
        vgg=args.vgg or str(args.carry / VGG_FILE),
        style_scales=tuple(map(float, args.style_scales.split(","))) if args.style_scales else None,
    )
    steps = plan()
    if args.only:
        keep = set(args.only.split(","))
        steps = [s for s in steps if s.name in keep]
    try:
        run_plan(run, steps)
    finally:  # also after Ctrl-C: what ran comes back
        write_summary(run)
        run.results["pack"] = pack(run)
        (run.out / "results.json").write_text(json.dumps(run.results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
