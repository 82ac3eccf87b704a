"""Training checkpoints that survive a kill at any moment; a resume that finds the last good one.

Lightning's own save goes through fsspec: with ``$TMPDIR`` on another filesystem (a tmpfs
``/tmp`` is common) it becomes copy-then-delete into the final name, and a SIGKILL during the
rewrite of ``last.ckpt`` leaves it truncated. ``AtomicCheckpointIO`` instead writes each
checkpoint next to its final name (``fileio.atomic_write``: same directory, fsync, then
``os.replace``) and stores a content digest in it (``model_io.add_checkpoint_digest``).

On resume, ``resolve_resume`` checks the requested checkpoint before anything is built; a
corrupt ``last.ckpt`` falls back to the newest valid checkpoint of its folder, with a one-line
notice.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from fast_style.core.fileio import atomic_write, clean_temp_files
from fast_style.core.model_io import ModelFileError, add_checkpoint_digest, read_checkpoint

log = logging.getLogger("fast_style.train")
LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, fsync, rename; with a digest."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        with atomic_write(Path(path)) as tmp:
            torch.save(add_checkpoint_digest(dict(checkpoint)), tmp)


def checkpoint_step(path: Path) -> int:
    """The global step of a valid checkpoint; raises ``ModelFileError`` for a corrupt one."""
    _, meta = read_checkpoint(path)
    return int(meta.get("global_step", -1))


def newest_valid(folder: Path, exclude: Path | None = None) -> tuple[Path, int] | None:
    """The valid checkpoint with the highest step in ``folder`` (None if there is none)."""
    best: tuple[Path, int] | None = None
    for p in sorted(folder.glob("*.ckpt")):
        if exclude is not None and p.resolve() == exclude.resolve():
            continue
        try:
            step = checkpoint_step(p)
        except ModelFileError:
            continue
        if best is None or step > best[1]:
            best = (p, step)
    return best


def resolve_resume(ckpt: Path) -> tuple[Path, int]:
    """The checkpoint to resume from and its step.

    ``last.ckpt`` means "the newest": a kill between the periodic save and the rewrite of
    ``last.ckpt`` leaves a newer ``step_*.ckpt`` beside it, and a corrupt ``last.ckpt`` must not
    stop a resume; either way the newest valid checkpoint of the folder is taken, with a
    one-line notice. Any other corrupt file is an error (``ModelFileError``)."""
    if not ckpt.is_file():
        newest = newest_valid(ckpt.parent) if ckpt.name == LAST and ckpt.parent.is_dir() else None
        if newest is None:
            raise FileNotFoundError(f"ckpt_path: no such checkpoint: {ckpt}")
        print(f"notice: no {LAST}; resuming from {newest[0].name} (step {newest[1]})",
              file=sys.stderr)  # fmt: skip
        return newest
    if ckpt.name != LAST:
        return ckpt, checkpoint_step(ckpt)
    try:
        step, problem = checkpoint_step(ckpt), None
    except ModelFileError as e:
        step, problem = -1, e
    newer = newest_valid(ckpt.parent, exclude=ckpt)
    if newer is None or newer[1] <= step:
        if problem is not None:
            raise ModelFileError(f"{problem}; no other valid checkpoint in {ckpt.parent}")
        return ckpt, step
    why = str(problem) if problem is not None else f"{newer[0].name} is newer than {LAST}"
    print(f"notice: {why}; resuming from {newer[0].name} (step {newer[1]})", file=sys.stderr)
    return newer


def clean_checkpoint_dir(folder: Path) -> None:
    """Remove the temporary files that a killed save left in ``folder`` (next start)."""
    for p in clean_temp_files(folder):
        log.info("removed %s, left by an interrupted save", p)
