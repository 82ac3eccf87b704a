"""``python stylize.py --model MODEL --input IN [IN …] --output OUT [options]``

Stylise photos, folders (recursive) and globs with a trained model; see ``--help``. The engine
is ``fast_style.inference.Stylizer``; this module only parses arguments, finds the files, maps
them to output paths and reports progress.

Exit status: 0 all images written; 1 some images failed (each reported on one line, the others
are still written); 2 a usage error (bad option, model or output), reported on one line.
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from fast_style.config import PROJECT_ROOT
from fast_style.imaging import IMAGE_EXTENSIONS, ImageReadError, list_images, open_image, save_image
from fast_style.inference import BACKENDS, DEFAULT_MODEL_DIRS, Stylizer
from fast_style.model_io import ModelFileError, find_models, read_checkpoint, read_safetensors

# Built-in defaults: `python stylize.py` alone stylizes a shipped photo with a shipped model.
DEFAULT_MODEL = "starry_night"
DEFAULT_INPUT = PROJECT_ROOT / "assets" / "photos" / "kodim23.jpg"
DEFAULT_OUTPUT = Path("outputs") / "stylized" / "kodim23.jpg"

OUTPUT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Job:
    """One input file and where its result goes."""

    src: Path
    dst: Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stylize.py",
        description="Stylise photos, folders and huge images with a trained fast_style model.",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a .ckpt, a .safetensors, or a style name in checkpoints/ (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--input",
        nargs="+",
        metavar="IN",
        default=[str(DEFAULT_INPUT)],
        help="files, folders (recursive), globs (default: the shipped Kodak photo)",
    )
    p.add_argument(
        "--output",
        metavar="OUT",
        default=str(DEFAULT_OUTPUT),
        help=f"an image file (one input) or a folder (default {DEFAULT_OUTPUT})",
    )
    p.add_argument("--list-models", action="store_true", help="list available models and exit")
    p.add_argument(
        "--models-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="extra folder searched for style names (repeatable)",
    )
    g = p.add_argument_group("look")
    g.add_argument(
        "--strength",
        type=float,
        default=1.0,
        help="0 = the photo, 1 = full style (blend in Oklab); default 1",
    )
    g.add_argument(
        "--preserve-color",
        action="store_true",
        help="keep the photo's colours (luminance-only transfer)",
    )
    g.add_argument(
        "--match-histogram",
        action="store_true",
        help="with --preserve-color: match the luminance histogram; alone: map the "
        "result's colour histogram (mean, covariance) onto the photo's",
    )
    g.add_argument("--mask", metavar="FILE", help="greyscale mask: white = styled, black = photo")
    g = p.add_argument_group("size")
    g.add_argument("--max-size", type=int, metavar="N", help="downscale the long side to N first")
    g.add_argument("--tile", type=int, metavar="N", help="stylise in N×N tiles (huge images)")
    g.add_argument("--overlap", type=int, default=32, metavar="P", help="tile overlap (default 32)")
    g = p.add_argument_group("output")
    g.add_argument(
        "--ext",
        choices=[e.lstrip(".") for e in OUTPUT_EXTENSIONS],
        help="output format for folder outputs (default: the input's)",
    )
    g.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    g = p.add_argument_group("execution")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: on CPU the fused kernels (built with the C compiler at first use), else "
        "ONNX Runtime, else PyTorch; on GPU PyTorch",
    )
    g.add_argument(
        "--half",
        nargs="?",
        const="fp16",
        choices=["fp16", "bf16"],
        help="half precision on GPU (fp16 default, or bf16)",
    )
    g.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep PyTorch's default NCHW memory format",
    )
    g.add_argument("--batch-size", type=int, default=4, help="images per batch (same size only)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.list_models:
        return
    missing = [f"--{n}" for n in ("model", "input", "output") if not getattr(a, n)]
    if missing:
        p.error(f"missing {', '.join(missing)}")
    if not 0.0 <= a.strength <= 1.0:
        p.error(f"--strength must be between 0 and 1, got {a.strength}")
    if a.max_size is not None and a.max_size < 8:
        p.error("--max-size must be at least 8")
    if a.tile is not None and (a.tile < 64 or a.tile % 4):
        p.error("--tile must be a multiple of 4 and at least 64")
    if a.tile is not None and not 0 <= a.overlap <= a.tile // 4:
        p.error(f"--overlap must be between 0 and tile/4 = {a.tile // 4}")
    if a.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if not 1 <= a.quality <= 100:
        p.error("--quality must be between 1 and 100")


# ---------------------------------------------------------------------------------------------
# Inputs and outputs.


def expand_inputs(specs: Iterable[str]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Files, folders and globs → ``(file, name relative to its folder)`` pairs, and errors.

    Folders are searched recursively and keep their sub-folder structure; globs and files give
    the bare file name. Duplicates are dropped."""
    found: list[tuple[Path, Path]] = []
    errors: list[str] = []
    seen: set[Path] = set()

    def add(path: Path, rel: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append((path, rel))

    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            images = list_images(path)
            if not images:
                errors.append(f"{spec}: no images in this folder")
            for f in images:
                add(f, f.relative_to(path))
        elif path.is_file():
            add(path, Path(path.name))
        elif glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_EXTENSIONS]
            for d in (m for m in matches if m.is_dir()):
                files += list_images(d)
            if not files:
                errors.append(f"{spec}: no images match")
            for f in files:
                add(f, Path(f.name))
        else:
            errors.append(f"{spec}: no such file or folder")
    return found, errors


def plan_outputs(inputs: list[tuple[Path, Path]], output: str, ext: str | None) -> list[Job]:
    """Map inputs to output paths. ``output`` is a file when it has an image extension and is
    not an existing folder (then exactly one input is allowed), otherwise a folder."""
    out = Path(output).expanduser()
    if out.suffix.lower() in OUTPUT_EXTENSIONS and not out.is_dir():
        if len(inputs) != 1:
            raise ValueError(
                f"--output {output} is a file but {len(inputs)} images were given; give a folder"
            )
        return [Job(inputs[0][0], out)]
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {output} exists and is not a folder")
    jobs, taken = [], set()
    for src, rel in inputs:
        dst = out / rel
        if ext or dst.suffix.lower() not in OUTPUT_EXTENSIONS:
            dst = dst.with_suffix("." + (ext or "png"))  # gif, ppm, … become png
        base, n = dst, 2
        while dst in taken:  # a.jpg from two folders given as globs
            dst = base.with_name(f"{base.stem}-{n}{base.suffix}")
            n += 1
        taken.add(dst)
        jobs.append(Job(src, dst))
    return jobs


def write_result(img: Image.Image, job: Job, quality: int) -> None:
    """Save, never over the input; alpha is kept where the format carries it."""
    if job.dst.resolve() == job.src.resolve():
        raise ValueError(f"{job.dst}: refusing to overwrite the input image")
    alpha = img.getchannel("A") if img.mode == "RGBA" else None
    save_image(img.convert("RGB"), job.dst, alpha=alpha, quality=quality)


# ---------------------------------------------------------------------------------------------
# Listing models.


def list_models(dirs: Sequence[Path]) -> list[str]:
    """One line per model file in ``dirs``: name, style, widths, dtype, steps, size, path
    (columns as wide as their longest entry)."""
    rows: list[tuple[str, ...]] = []
    broken: list[tuple[str, str]] = []
    for path in find_models(list(dirs)):
        try:
            reader = read_safetensors if path.suffix == ".safetensors" else read_checkpoint
            _, meta = reader(path)
        except ModelFileError as e:
            broken.append((path.stem, str(e)))
            continue
        rows.append(
            (
                path.stem,
                str(meta.get("style", "?")),
                str(meta.get("width") or "-"),
                "/".join(str(c) for c in meta.get("channels", [])),
                str(meta.get("num_residual", "?")),
                str(meta.get("dtype", "float32")),
                str(meta.get("global_step", "-")),
                f"{path.stat().st_size / 1e6:.1f}",
                str(path),
            )
        )
    header = ("name", "style", "width", "channels", "res", "dtype", "steps", "MB", "path")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {4, 6, 7}  # numeric columns

    def fmt(row: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return " ".join(cells[:-1]) + "  " + row[-1]

    lines = [fmt(header), *(fmt(r) for r in rows)]
    lines += [f"{name.ljust(widths[0])} (unreadable: {err})" for name, err in broken]
    if not rows and not broken:
        lines.append(f"(no models in {', '.join(str(d) for d in dirs)})")
    return lines


# ---------------------------------------------------------------------------------------------
# Progress.


class _Progress:
    """tqdm when installed (it is optional), else a plain counter on stderr."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.bar = total, 0, None
        self.enabled = enabled and total > 1
        if self.enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            end = "\n" if self.done >= self.total else ""
            print(f"\r{self.done}/{self.total} images", end=end, file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(("\n" if self.enabled and self.done else "") + text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _batches(jobs: list[Job], size: int) -> Iterator[list[Job]]:
    for i in range(0, len(jobs), size):
        yield jobs[i : i + size]


def run_jobs(stylizer: Stylizer, jobs: list[Job], args: argparse.Namespace) -> tuple[int, int]:
    """Stylise and write every job; a failing image is reported and skipped. Returns
    ``(written, failed)``."""
    mask = open_image(args.mask) if args.mask else None
    opts = {
        "strength": args.strength,
        "preserve_color": args.preserve_color,
        "match_histogram": args.match_histogram,
        "max_size": args.max_size,
        "tile": args.tile,
        "overlap": args.overlap,
        "mask": mask,
    }
    progress = _Progress(len(jobs), not args.quiet)
    written = failed = 0
    try:
        for batch in _batches(jobs, args.batch_size):
            loaded: list[tuple[Job, Image.Image]] = []
            for job in batch:
                try:
                    loaded.append((job, open_image(job.src)))
                except ImageReadError as e:
                    progress.message(f"error: {e}")
                    failed += 1
                    progress.update()
            try:
                results = stylizer.stylize_images([im for _, im in loaded], **opts)
            except (RuntimeError, ValueError):  # e.g. out of memory: isolate per image
                results = [None] * len(loaded)
            for (job, im), out in zip(loaded, results, strict=True):
                try:
                    img = out if out is not None else stylizer.stylize_image(im, **opts)
                    write_result(img, job, args.quality)
                    written += 1
                except (RuntimeError, ValueError, OSError) as e:
                    progress.message(f"error: {job.src}: {str(e).splitlines()[0]}")
                    failed += 1
                progress.update()
    finally:
        progress.close()
    return written, failed


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point. Returns 0; exits with status 1 (some images failed) or 2 (usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    dirs = [Path(d) for d in args.models_dir] + DEFAULT_MODEL_DIRS
    if args.list_models:
        print("\n".join(list_models(dirs)))
        return 0
    inputs, errors = expand_inputs(args.input)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if not inputs:
        parser.exit(2, "error: no input images found\n")
    try:
        jobs = plan_outputs(inputs, args.output, args.ext)
        if args.mask:
            open_image(args.mask)  # fail early on a bad mask
        stylizer = Stylizer(
            args.model,
            device=args.device,
            half=args.half or False,
            channels_last=args.channels_last,
            search_dirs=args.models_dir,
            backend=args.backend,
        )
    except (ModelFileError, ImageReadError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    if args.half and stylizer.device.type == "cpu":
        print("note: --half is ignored on CPU (fp32 is faster there)", file=sys.stderr)
    start = time.perf_counter()
    written, failed = run_jobs(stylizer, jobs, args)
    failed += len(errors)
    dt = time.perf_counter() - start
    rate = written / dt if dt > 0 else 0.0
    where = jobs[0].dst if len(jobs) == 1 else Path(args.output)
    summary = (
        f"stylized {written} image{'s' * (written != 1)} in {dt:.2f} s "
        f"({rate:.2f} images/s) with {stylizer.style!r} on {stylizer.device} "
        f"[{stylizer.backend}] → {where}"
    )
    print(summary + (f"; {failed} failed" if failed else ""))
    if failed:
        sys.exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
