"""SIGKILL harness: kill training at random moments (many during checkpoint saves), resume each
time, and check that every resume starts from the newest complete checkpoint.

    python scripts/kill_harness.py --kills 20 --seed 0

Each trial starts ``train.py`` (the first one fresh, the others with
``ckpt_path=<run>/checkpoints/last.ckpt``), waits until that process has written a checkpoint
of its own (so the resume demonstrably worked), then kills it with SIGKILL at a random moment:
in every other trial the moment a checkpoint save is in flight (a temporary file of
``fast_style.core.fileio.atomic_write`` appears), otherwise after a random delay. After each kill:

* every checkpoint under its final name must load and verify (digest, shapes);
* the next resume must start at a step no earlier than the newest of them;
* orphaned temporary files must be gone once the next run has started.

``$TMPDIR`` of the training processes is put on another filesystem than the run directory
(``/dev/shm`` by default), the case where Lightning's own save turned into copy-then-delete.
A final run resumes once more and finishes normally. Training is the smoke experiment with a
random-weight loss network on synthetic photos (no download, no ../shared), saving a
checkpoint at every step. Prints a table and exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fast_style.core.fileio import is_temp_file  # noqa: E402
from fast_style.core.model_io import ModelFileError  # noqa: E402
from fast_style.train.checkpointing import checkpoint_step  # noqa: E402

RESUME_RE = re.compile(r"resuming from (.+) at step (\d+)")


@dataclass
class Trial:
    index: int
    mode: str  # "save" (killed during a save) or "random"
    resumed_step: int | None  # None: the first, fresh run
    newest_before: int  # newest complete checkpoint when this run started
    killed_at: float  # seconds after start
    during_save: bool
    newest_after: int
    corrupt: list[str]
    ok: bool
    note: str = ""


def synthetic_photos(folder: Path, n: int = 16, size: int = 80, seed: int = 0) -> Path:
    """Smooth random colour images, enough for the smoke experiment."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        chans = [np.sin(rng.uniform(2, 9) * xx + rng.uniform(2, 9) * yy + rng.uniform(0, 6))]
        chans += [np.cos(rng.uniform(2, 9) * xx - rng.uniform(2, 9) * yy) for _ in range(2)]
        arr = 0.5 + 0.45 * np.stack(chans, -1) + rng.normal(0, 0.03, (size, size, 3))
        Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:03d}.jpg")
    return folder


def complete_checkpoints(folder: Path) -> tuple[int, list[str]]:
    """(newest step among final-named checkpoints, names of final-named ones that fail)."""
    newest, corrupt = -1, []
    for p in sorted(folder.glob("*.ckpt")):
        try:
            newest = max(newest, checkpoint_step(p))
        except ModelFileError as e:
            corrupt.append(f"{p.name}: {e}")
    return newest, corrupt


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if is_temp_file(p)] if folder.is_dir() else []


def train_args(run: Path, data: Path, weights: str, resume: bool) -> list[str]:
    args = [
        "style=starry_night",
        "experiment=smoke",
        f"data.root={data}",
        f"loss.weights={weights}",
        f"hydra.run.dir={run}",
        "trainer.max_steps=1000000",
        "trainer.enable_progress_bar=false",
        "train.checkpoint_every_n_steps=1",
        "train.image_every_n_steps=0",
    ]
    if resume:
        args.append(f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    return args


def wait_for_own_checkpoint(
    proc: subprocess.Popen, folder: Path, after: int, timeout: float
) -> bool:
    """Until the process has saved a checkpoint with a step above ``after``."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        last = folder / "last.ckpt"
        if last.is_file():
            try:
                if checkpoint_step(last) > after:
                    return True
            except ModelFileError:
                pass  # being replaced right now
        time.sleep(0.05)
    return False


def kill_during_save(
    proc: subprocess.Popen, folder: Path, timeout: float, rng: random.Random
) -> bool:
    """SIGKILL a few milliseconds (random) after a save's temporary file appears; True when
    the kill landed inside the save (its temporary file was left behind, not renamed)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if temp_files(folder):
            time.sleep(rng.uniform(0, 0.004))  # somewhere inside the write, not only its start
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return bool(temp_files(folder))
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    return False


def run_trial(i: int, mode: str, ctx: argparse.Namespace, rng: random.Random) -> Trial:
    folder = ctx.run / "checkpoints"
    newest_before, _ = complete_checkpoints(folder) if folder.is_dir() else (-1, [])
    resume = newest_before >= 0
    log = ctx.work / f"trial_{i:02d}.log"
    t0 = time.time()
    with open(log, "w") as err:
        args = train_args(ctx.run, ctx.data, ctx.weights, resume)
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *args],
            cwd=REPO, env=ctx.env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        own = wait_for_own_checkpoint(proc, folder, max(newest_before, 0) if resume else -1, 300)
        during = False
        if own and mode == "save":
            during = kill_during_save(proc, folder, 60, rng)
        else:
            time.sleep(rng.uniform(0, ctx.max_delay))
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = time.time() - t0
    text = log.read_text()
    m = RESUME_RE.search(text)
    resumed = int(m.group(2)) if m else None
    newest_after, corrupt = complete_checkpoints(folder)
    resumed_ok = not resume or (resumed is not None and resumed >= newest_before)
    ok = own and not corrupt and resumed_ok
    note = "" if own else "no checkpoint of its own before the kill: " + text[-300:].strip()
    return Trial(
        i, mode, resumed, newest_before, killed_at, during, newest_after, corrupt, ok, note
    )


def final_run(ctx: argparse.Namespace) -> tuple[bool, str]:
    """Resume once more and finish normally (two more steps)."""
    folder = ctx.run / "checkpoints"
    newest, _ = complete_checkpoints(folder)
    args = train_args(ctx.run, ctx.data, ctx.weights, True)
    args = [a for a in args if not a.startswith("trainer.max_steps")] + [
        f"trainer.max_steps={newest + 2}"
    ]
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO, env=ctx.env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    m = RESUME_RE.search(proc.stderr)
    ok = proc.returncode == 0 and m is not None and int(m.group(2)) >= newest
    orphans = temp_files(folder)
    ok = ok and not orphans
    return ok, f"exit {proc.returncode}, resumed at {m.group(2) if m else '?'} (newest {newest})"


def different_fs_tmpdir(work: Path, requested: str | None) -> Path:
    base = Path(requested or "/dev/shm")
    tmp = Path(tempfile.mkdtemp(prefix="fast_style_kill_", dir=base))
    if os.stat(tmp).st_dev == os.stat(work).st_dev:
        print(f"warning: TMPDIR {tmp} is on the same filesystem as {work}", file=sys.stderr)
    return tmp


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="number of SIGKILLs (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, help="run directory (default: a new one under outputs/)")
    p.add_argument("--tmpdir", help="TMPDIR of the trainings (default: under /dev/shm)")
    p.add_argument("--data", type=Path, help="photo folder (default: synthetic photos)")
    p.add_argument("--weights", default="random", help="loss.weights (default: random)")
    p.add_argument("--max-delay", type=float, default=3.0, help="random-kill delay bound (s)")
    return p


def main(argv: list[str] | None = None) -> int:
    ctx = build_parser().parse_args(argv)
    ctx.work = ctx.work or REPO / "outputs" / "kill_harness" / time.strftime("%Y%m%d_%H%M%S")
    ctx.work = ctx.work.resolve()
    ctx.work.mkdir(parents=True, exist_ok=True)
    ctx.run = ctx.work / "run"
    ctx.data = (ctx.data or synthetic_photos(ctx.work / "photos")).resolve()
    tmpdir = different_fs_tmpdir(ctx.work, ctx.tmpdir)
    ctx.env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    rng = random.Random(ctx.seed)
    trials = []
    for i in range(ctx.kills):
        trials.append(run_trial(i, "save" if i % 2 else "random", ctx, rng))
        t = trials[-1]
        print(
            f"{t.index:>3} {t.mode:<6} resumed={t.resumed_step!s:>5} newest_before="
            f"{t.newest_before:>4} killed_at={t.killed_at:6.1f}s during_save={t.during_save!s:<5} "
            f"newest_after={t.newest_after:>4} {'ok' if t.ok else 'FAIL ' + t.note}"
            + "".join(f"\n      corrupt: {c}" for c in t.corrupt),
            flush=True,
        )
    final_ok, final_note = final_run(ctx)
    leftovers = sorted(p.name for p in tmpdir.rglob("*"))
    shutil.rmtree(tmpdir, ignore_errors=True)
    resumes = [t for t in trials if t.resumed_step is not None] + [None]  # the final run
    passed = sum(t.ok for t in trials if t.resumed_step is not None) + final_ok
    saves = sum(t.during_save for t in trials)
    print(
        f"\nkills: {len(trials)} ({saves} during a save); resumes: {passed} of {len(resumes)} "
        f"succeeded from a step >= the newest complete checkpoint; final run: {final_note}; "
        f"corrupt final-named checkpoints: {sum(len(t.corrupt) for t in trials)}; files left "
        f"in TMPDIR ({tmpdir}, another filesystem): {len(leftovers)}"
    )
    ok = all(t.ok for t in trials) and final_ok and not leftovers
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
