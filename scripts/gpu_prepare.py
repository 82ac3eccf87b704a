"""Prepare what ``scripts/gpu_run.py`` needs on the GPU machine, which sees only the checkout.

    python scripts/gpu_prepare.py [--shared ../shared] [--limit-mib 64] [--no-wheels]

The device machine gets a copy of the working tree (tracked and untracked-not-ignored files)
plus the git-ignored folders named in its ``carry``, 64 MiB in all, and nothing else: not
``../shared``, no internet. This fills two ignored folders (``.gitignore``) to fit that limit:

* ``.carry/vgg16-relu4_3-fp16.safetensors``: the ImageNet VGG16 convolutions up to relu4_3, the
  deepest layer the losses use, float16 (15 MB instead of 29);
* ``.carry/val/`` (held-out photos for the judge and the validation grid), ``.carry/kodak/``
  (12 Kodak photos for the 512 px grids and ``evaluate``), ``.carry/train/``: as many training
  photos, re-encoded as JPEG quality 75 (about 14 KB for 256×256), as the space left allows;
* ``.whl/``: the wheels the GPU image lacks (hydra-core, omegaconf, antlr4; Python 3.12),
  downloaded from the package registry.

``.carry/manifest.json`` records what went in and the byte count against the limit. The
command that uses them is in DEVELOPERS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
CARRY, WHEELS = REPO / ".carry", REPO / ".whl"
# What the GPU image lacks (its package list: the device tool's KINDS.md), at the versions
# installed here (the ones the tests ran with). All pure Python; antlr4 4.9 (hydra-core 1.3
# pins it) is published as a source archive only, so ``pip wheel`` builds the wheel.
WHEEL_PACKAGES = ("hydra-core", "omegaconf", "antlr4-python3-runtime")
VGG_SOURCE = "vgg16-imagenet-features-fp16.pth"  # in ../shared/weights
VGG_LAYERS = 22  # torchvision's features.0-21: conv1_1 … conv4_3 (relu4_3 is index 22, no weights)
MARGIN = 1 << 20  # bytes kept free under the limit (manifest, rounding)


def tree_bytes() -> int:
    """Bytes of what travels without ``carry``: tracked and untracked-not-ignored files."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    files = [REPO / p for p in out.decode().split("\0") if p]
    return sum(f.stat().st_size for f in files if f.is_file())


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_vgg(src: Path, dst: Path) -> int:
    """The conv layers up to conv4_3 of ``src`` (a torchvision-layout state_dict), float16."""
    sd = torch.load(src, map_location="cpu", weights_only=True)
    keep = {}
    for k, v in sd.items():
        head = k.removeprefix("features.").split(".", 1)[0]
        if head.isdigit() and int(head) < VGG_LAYERS:
            keep[k] = v.to(torch.float16).contiguous()
    save_file(keep, str(dst))
    return dst.stat().st_size


def jpeg(src: Path, quality: int) -> bytes:
    """``src`` re-encoded as an RGB JPEG of ``quality``."""
    buf = io.BytesIO()
    with Image.open(src) as im:
        im.convert("RGB").save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def copy_photos(
    photos: Sequence[Path], dst: Path, quality: int, budget: int | None = None
) -> tuple[int, int]:
    """Re-encode ``photos`` into ``dst`` in order until ``budget`` bytes (None: all);
    (photos written, bytes)."""
    dst.mkdir(parents=True, exist_ok=True)
    n = used = 0
    for p in photos:
        data = jpeg(p, quality)
        if budget is not None and used + len(data) > budget:
            break
        (dst / f"{p.stem}.jpg").write_bytes(data)
        n, used = n + 1, used + len(data)
    return n, used


def download_wheels(dst: Path) -> int:
    """Wheels of ``WHEEL_PACKAGES`` at the installed versions, from the package registry."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    pins = [f"{name}=={metadata.version(name)}" for name in WHEEL_PACKAGES]
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dst), *pins]
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    return folder_bytes(dst)


def fill(carry: Path, shared: Path, limit: int, wheels: int, args: argparse.Namespace) -> dict:
    """Write the VGG weights and the photos into ``carry``, the training photos up to what
    ``limit`` bytes leave; the manifest (counts and bytes)."""
    shutil.rmtree(carry, ignore_errors=True)
    carry.mkdir(parents=True)
    vgg = write_vgg(shared / "weights" / VGG_SOURCE, carry / "vgg16-relu4_3-fp16.safetensors")
    rng = random.Random(args.seed)
    val = sorted((shared / "data" / "val").glob("*.jpg"))
    kodak = sorted((shared / "data" / "eval" / "kodak24").glob("*.jpg"))
    nv, val_bytes = copy_photos(rng.sample(val, min(args.val, len(val))), carry / "val", 90)
    nk, kodak_bytes = copy_photos(kodak[: args.kodak], carry / "kodak", 90)
    train = sorted((shared / "data" / "train").glob("*.jpg"))
    rng.shuffle(train)
    left = limit - MARGIN - tree_bytes() - wheels - vgg - val_bytes - kodak_bytes
    nt, train_bytes = copy_photos(train, carry / "train", args.quality, max(left, 0))
    sizes = {"tree": tree_bytes(), "wheels": wheels, "vgg": vgg, "val": val_bytes}
    sizes |= {"kodak": kodak_bytes, "train": train_bytes, "limit": limit}
    sizes["total"] = sizes["tree"] + folder_bytes(carry) + wheels
    counts = {"train_photos": nt, "val_photos": nv, "kodak_photos": nk}
    return {**counts, "train_quality": args.quality, "bytes": sizes}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    p.add_argument("--limit-mib", type=float, default=64.0)
    p.add_argument("--val", type=int, default=40, help="held-out photos (data/val)")
    p.add_argument("--kodak", type=int, default=12, help="Kodak photos (data/eval/kodak24)")
    p.add_argument("--quality", type=int, default=75, help="JPEG quality of the training photos")
    p.add_argument("--no-wheels", action="store_true", help="keep --wheels as it is (offline)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--carry", type=Path, default=CARRY, help="output folder (default .carry)")
    p.add_argument("--wheels", type=Path, default=WHEELS, help="wheel folder (default .whl)")
    args = p.parse_args(argv)
    if not (args.shared / "weights" / VGG_SOURCE).is_file():
        print(
            f"error: {args.shared / 'weights' / VGG_SOURCE} not found (--shared)", file=sys.stderr
        )
        return 2
    if not args.no_wheels:
        download_wheels(args.wheels)
    wheels = folder_bytes(args.wheels) if args.wheels.is_dir() else 0  # they travel too
    limit = int(args.limit_mib * (1 << 20))
    manifest = fill(args.carry, args.shared, limit, wheels, args)
    (args.carry / "manifest.json").write_text(json.dumps(manifest, indent=2))
    b = manifest["bytes"]
    print(
        f"{manifest['train_photos']} training photos ({b['train'] / 1e6:.1f} MB), "
        f"{manifest['val_photos']} held-out, {manifest['kodak_photos']} Kodak, "
        f"VGG {b['vgg'] / 1e6:.1f} MB, wheels {wheels / 1e6:.2f} MB: "
        f"{b['total'] / (1 << 20):.1f} of {args.limit_mib:g} MiB"
    )
    return 0 if b["total"] <= limit else 1


if __name__ == "__main__":
    raise SystemExit(main())
