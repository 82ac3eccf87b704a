"""Download and unpack COCO 2014 train (83k photos, 13 GB), the training set of Johnson et al.

    python scripts/download_coco.py [--dest data/coco]
    python train.py data.root=data/coco/train2014

Needs internet. The download resumes if interrupted (HTTP range requests) and is verified
against its size before unpacking; nothing is deleted on failure.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
import zipfile
from pathlib import Path

URL = "http://images.cocodataset.org/zips/train2014.zip"
SIZE = 13_510_573_713  # bytes of train2014.zip
CHUNK = 1 << 20


def download(url: str, dest: Path, expected: int | None) -> Path:
    """Fetch ``url`` to ``dest``, resuming a partial ``dest.part``; print progress."""
    part = dest.with_suffix(dest.suffix + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=60) as resp, open(part, "ab" if have else "wb") as out:
        if have and resp.status != 206:  # server ignored the range: start over
            out.truncate(0)
            have = 0
        total = expected or (have + int(resp.headers.get("Content-Length", 0)))
        while chunk := resp.read(CHUNK):
            out.write(chunk)
            have += len(chunk)
            print(
                f"\r{dest.name}: {have / 1e9:.2f} / {total / 1e9:.2f} GB", end="", file=sys.stderr
            )
    print(file=sys.stderr)
    if expected and part.stat().st_size != expected:
        raise RuntimeError(
            f"{part}: size {part.stat().st_size} != expected {expected}; run again to resume"
        )
    part.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dest", type=Path, default=Path("data/coco"), help="target folder (default data/coco)"
    )
    ap.add_argument("--url", default=URL)
    ap.add_argument("--keep-zip", action="store_true", help="keep train2014.zip after unpacking")
    args = ap.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    target = args.dest / "train2014"
    if target.is_dir() and any(target.iterdir()):
        print(f"{target} already exists; nothing to do")
        return 0
    zpath = args.dest / "train2014.zip"
    try:
        if not zpath.exists():
            download(args.url, zpath, SIZE if args.url == URL else None)
        print(f"unpacking {zpath} …", file=sys.stderr)
        with zipfile.ZipFile(zpath) as z:
            z.extractall(args.dest)
    except (OSError, RuntimeError, zipfile.BadZipFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.keep_zip:
        zpath.unlink()
    print(f"done: python train.py data.root={target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
