"""Crash-safe file writing: nothing half-written ever carries a final name.

``atomic_write(path)`` yields a temporary path *in the same directory* as ``path`` (so the final
rename never crosses a filesystem, unlike a temporary file in ``$TMPDIR``), then flushes and
fsyncs it and ``os.replace``s it onto ``path``. A crash or SIGKILL at any moment leaves either
the old file or the new one under the final name, plus at most an orphaned temporary file whose
name ``is_temp_file`` recognises and ``clean_temp_files`` removes at the next start.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

TEMP_TAG = ".fs-tmp"
# <name>.fs-tmp-<pid>-<thread>: the writer's pid tells a live writer's file from an orphan's.
_TEMP_RE = re.compile(rf"^\.?(?P<name>.+){re.escape(TEMP_TAG)}-(?P<pid>\d+)-\d+$")


def temp_path_for(path: Path) -> Path:
    """A temporary sibling of ``path``, unique per process and thread (hidden: dot-prefixed)."""
    return path.with_name(f".{path.name}{TEMP_TAG}-{os.getpid()}-{threading.get_ident()}")


def is_temp_file(path: Path) -> bool:
    """True for a temporary file written by ``atomic_write``."""
    return _TEMP_RE.match(path.name) is not None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory`` (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_write(p) as tmp: write(tmp)``: on success ``tmp`` is fsynced and renamed
    onto ``p``; on any exception it is removed and ``p`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove the orphaned temporary files of ``atomic_write`` in ``directory`` (those whose
    writer process is gone); returns what was removed."""
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TEMP_RE.match(p.name)
        if m and p.is_file() and not _pid_alive(int(m["pid"])):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed
