"""``python stylize.py --model MODEL --input IN [IN …] --output OUT [options]``

Stylise photos, folders (recursive) and globs with a trained model; see ``--help``. The engine
is ``fast_style.infer.stylizer.Stylizer``; this module only parses arguments, finds the files, maps
them to output paths and reports progress.

Rules:

* Folders are searched recursively and symlinked sub-folders are followed; a folder reached
  twice (a link loop, two links to one folder) is searched once, with a note on stderr.
* ``--output`` with an extension is a file (one input), and the extension must be one of
  ``OUTPUT_EXTENSIONS`` (GIF, video or unknown extensions are usage errors); without one, or when
  it is an existing folder, it is a folder that mirrors the inputs' names.
* Every output is planned before the model loads: an output that is an input (same path, or the
  same file through a hard or symbolic link) or one output for two differently named inputs
  (``photo.gif`` and ``photo.png`` both → ``photo.png``) is a usage error and nothing is written.
  The same name from two folders (``a/x.jpg``, ``b/x.jpg`` into one folder) becomes ``x.jpg`` and
  ``x-2.jpg``, with a note.
* ``--max-pixels N`` (default 200 MP) is the only pixel limit (Pillow's own is lifted); a larger
  image fails with a message naming the limit.
* ``--mask`` must have each image's aspect ratio within 2 % (any resolution): otherwise that
  image fails (reported, counted as failed), never stretched. ``--style-mask`` likewise.
* Styles (``fast_style.infer.styles``): ``--model`` is a file or a name; a name with no file of
  its own is looked up among the styles of multi-style files (``model_io.find_style``), and
  selects that style. ``--style`` names one style, a mix (``a=0.7,b=0.3``) or, with
  ``--style-mask``, two styles to paint (white: the first, black: the second). The spec, the
  model's styles and the style mask are checked before the model loads.

Exit status: 0 all images written; 1 some images failed (each reported on one line, the others
are still written); 2 a usage error (bad option, model or output plan), reported on one line.
Outputs are written crash-safely: a killed run never leaves a half-written image.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from PIL import Image
from tqdm import tqdm

from fast_style.core.imaging import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    MaskSizeError,
    check_mask_size,
    list_images,
    open_image,
    save_image,
)
from fast_style.core.model_io import (
    ModelFileError,
    find_models,
    find_style,
    read_checkpoint,
    read_metadata,
    read_safetensors,
    style_names,
)
from fast_style.core.resources import default_photo, model_dirs
from fast_style.infer.allocator import tune_malloc
from fast_style.infer.backends import BACKENDS
from fast_style.infer.clip_jobs import (
    INSTALL_HINT,
    VIDEO_OUTPUT_EXTENSIONS,
    ClipOptions,
    ClipStylizer,
    clip_output,
    is_clip,
    video_files,
    video_missing,
)
from fast_style.infer.styles import DEFAULT_STYLE, StyleChoice, StyleSpecError, parse_style_spec
from fast_style.infer.stylizer import Stylizer

# Built-in defaults: `python stylize.py` alone stylizes a shipped photo with a shipped model
# (the web page's default style too).
DEFAULT_MODEL = DEFAULT_STYLE
DEFAULT_INPUT = default_photo()
DEFAULT_OUTPUT = Path("outputs") / "stylized" / "kodim23.jpg"

OUTPUT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
MAX_PIXELS_HINT = "raise it with --max-pixels"


class PlanError(ValueError):
    """An output plan that would destroy or lose an image; nothing is written."""


@dataclass(frozen=True)
class Job:
    """One input file and where its result goes."""

    src: Path
    dst: Path
    clip: bool = False  # a video (fast_style.infer.clip_jobs)


@dataclass(frozen=True)
class ModelChoice:
    """The model file, its metadata and the style weights to run it with (None: a
    single-style model, run as it always was)."""

    path: Path
    meta: dict
    style: StyleChoice | None

    @property
    def label(self) -> str:
        """How the summary line names the style(s)."""
        if self.style is None:
            return repr(str(self.meta.get("style", "unnamed")))
        return f"{self.style.label!r} of {self.path.name}"


@dataclass
class Plan:
    """What ``_plan`` checked before the model loads."""

    jobs: list[Job]
    input_errors: int
    mask: Image.Image | None
    style_mask: Image.Image | None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stylize.py",
        description="Stylise photos, folders and huge images with a trained fast_style model.",
        epilog="Every output is planned before the model loads: an output that is an input (the "
        "same path, or the same file through a hard or symbolic link), or one output for two "
        "inputs (photo.gif and photo.png both → photo.png), is refused and nothing is written. "
        "The same name from two folders becomes x.jpg and x-2.jpg, with a note. Symlinked "
        "sub-folders are followed, each real folder once. Exit status: 0 all images written, "
        "1 some images failed (each reported), 2 a usage error.",
    )
    _add_io_options(p)
    _add_look_options(p)
    _add_size_options(p)
    _add_execution_options(p)
    return p


def _add_io_options(p: argparse.ArgumentParser) -> None:
    """Model, inputs, outputs."""
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="a .ckpt, a .safetensors, or a name in checkpoints/: a model's, or else a style of "
        f"a multi-style model, which it selects (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--style",
        metavar="SPEC",
        help="the style(s) of a multi-style model: NAME, a mix NAME=W,NAME=W (weights "
        "normalised), or NAME_A,NAME_B with --style-mask (default: the one --model names, "
        "else its first)",
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
        help=f"an image file (one input; extension {', '.join(OUTPUT_EXTENSIONS)}) or a folder "
        f"(no extension, or an existing folder); never an input (default {DEFAULT_OUTPUT})",
    )
    p.add_argument("--list-models", action="store_true", help="list available models and exit")
    p.add_argument(
        "--models-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="extra folder searched for style names (repeatable)",
    )


def _add_look_options(p: argparse.ArgumentParser) -> None:
    """Strength, colour, mask."""
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
    g.add_argument(
        "--mask",
        metavar="FILE",
        help="greyscale mask: white = styled, black = photo; any resolution, but each image's "
        "aspect ratio (within 2%%): an image it does not fit fails",
    )
    g.add_argument(
        "--style-mask",
        metavar="FILE",
        help="with --style A,B: greyscale mask, white = style A, black = style B, grey between "
        "(soft edges); the same size rule as --mask; both masks may be given",
    )


def _add_size_options(p: argparse.ArgumentParser) -> None:
    """Downscaling, tiling and the pixel limit."""
    g = p.add_argument_group("size")
    g.add_argument("--max-size", type=int, metavar="N", help="downscale the long side to N first")
    g.add_argument("--tile", type=int, metavar="N", help="stylise in N×N tiles (huge images)")
    g.add_argument("--overlap", type=int, default=32, metavar="P", help="tile overlap (default 32)")
    g.add_argument(
        "--max-pixels",
        type=_pixel_count,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="refuse images of more than N pixels, before decoding (default "
        f"{DEFAULT_MAX_PIXELS} = {DEFAULT_MAX_PIXELS / 1e6:g} MP; 2e8 works); the only pixel "
        "limit: Pillow's own is lifted",
    )


def _add_execution_options(p: argparse.ArgumentParser) -> None:
    """Output format, device, backend, precision, batching."""
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
        "ONNX Runtime, else PyTorch; on GPU PyTorch. ort-int8 (opt-in, CPU): ONNX Runtime with "
        "int8 convolutions, quantised once per model and cached (docs/int8.md); auto uses it "
        "only for a model whose metadata records int8_psnr_db >= 38",
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
    _add_video_options(p)


def _add_video_options(p: argparse.ArgumentParser) -> None:
    """Clips: codec, quality, temporal smoothing."""
    g = p.add_argument_group("video (mp4, mov, m4v, mkv, webm, avi, animated gif)")
    g.add_argument(
        "--codec",
        help="h264 | vp9 | gif (default: from the output's extension: mp4/mov/mkv/avi H.264, "
        "webm VP9, gif a palette GIF)",
    )
    g.add_argument(
        "--crf", type=int, help="quality, lower is better (default 18 for H.264, 31 for VP9)"
    )
    g.add_argument(
        "--temporal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="against flicker: blend each output with the previous one along the motion "
        "(and with --momentum smooth the instance-norm statistics too; default on)",
    )
    g.add_argument(
        "--momentum",
        type=float,
        metavar="M",
        help="with --temporal: also smooth the instance-norm statistics across frames, this "
        "weight for the previous frames', in [0, 1) (default 0: not smoothed; e.g. 0.8)",
    )
    g.add_argument(
        "--blend",
        type=float,
        metavar="A",
        help="with --temporal: weight of the previous output warped along the motion, in "
        "[0, 1) (default 0.55; 0: only the statistics are smoothed)",
    )


def _pixel_count(text: str) -> int:
    """``200000000``, ``200_000_000`` or ``2e8`` → an int (argparse type)."""
    try:
        return int(text) if text.replace("_", "").isdigit() else int(float(text))
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"not a pixel count: {text!r}") from None


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
    if a.max_pixels < 1:
        p.error("--max-pixels must be at least 1")
    if a.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if not 1 <= a.quality <= 100:
        p.error("--quality must be between 1 and 100")
    if a.momentum is not None and not 0.0 <= a.momentum < 1.0:
        p.error(f"--momentum must be in [0, 1), got {a.momentum}")
    if a.blend is not None and not 0.0 <= a.blend < 1.0:
        p.error(f"--blend must be in [0, 1), got {a.blend}")
    if a.crf is not None and not 0 <= a.crf <= 63:
        p.error(f"--crf must be between 0 and 63, got {a.crf}")


# ---------------------------------------------------------------------------------------------
# Inputs and outputs.


def expand_inputs(
    specs: Iterable[str], notes: list[str] | None = None
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Files, folders and globs → ``(file, name relative to its folder)`` pairs, and errors.

    Folders are searched recursively (following symlinked sub-folders, each real folder once;
    ``notes`` gets a line per folder skipped) and keep their sub-folder structure; globs and
    files give the bare file name. Duplicates (one file by two paths) are dropped."""
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
            images = list_images(path, notes=notes) + video_files(path)
            if not images:
                errors.append(f"{spec}: no images or videos in this folder")
            for f in sorted(images):
                add(f, f.relative_to(path))
        elif path.is_file():
            add(path, Path(path.name))
        elif glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            exts = (*IMAGE_EXTENSIONS, *VIDEO_OUTPUT_EXTENSIONS)
            files = [m for m in matches if m.is_file() and m.suffix.lower() in exts]
            for d in (m for m in matches if m.is_dir()):
                files += list_images(d, notes=notes)
            if not files:
                errors.append(f"{spec}: no images match")
            for f in files:
                add(f, Path(f.name))
        else:
            errors.append(f"{spec}: no such file or folder")
    return found, errors


def _file_output(out: Path, spec: str, clip: bool = False) -> bool:
    """True when ``--output`` names a file: it has an extension and is not an existing folder.
    A file name must have a writable image extension, or a video one for a ``clip`` (usage
    error otherwise)."""
    if not out.suffix or out.is_dir():
        return False
    if out.suffix.lower() in (VIDEO_OUTPUT_EXTENSIONS if clip else OUTPUT_EXTENSIONS):
        return True
    if clip:
        raise PlanError(
            f"--output {spec}: {out.suffix} is not a video format stylize.py writes; use "
            f"{', '.join(VIDEO_OUTPUT_EXTENSIONS)}"
        )
    # Without this, "o.xyz" or "o.gif" silently became a folder named like a file.
    why = " (GIF inputs are written as PNG)" if out.suffix.lower() == ".gif" else ""
    raise PlanError(
        f"--output {spec}: {out.suffix} is not an image format stylize.py writes{why}; use "
        f"{', '.join(OUTPUT_EXTENSIONS)}, or a folder name without an extension"
    )


def plan_outputs(
    inputs: list[tuple[Path, Path]], output: str, ext: str | None, notes: list[str] | None = None
) -> list[Job]:
    """Map every input to its output path and check the whole plan before anything is written.

    ``output`` is a file when it has an image extension and is not an existing folder (then
    exactly one input is allowed), otherwise a folder. Raises ``PlanError`` (one line) for an
    output that is an input or one output for two inputs; see ``_folder_jobs``."""
    out = Path(output).expanduser()
    clips = {src for src, _ in inputs if is_clip(src)}
    if _file_output(out, output, clip=len(inputs) == 1 and inputs[0][0] in clips):
        if len(inputs) != 1:
            raise PlanError(
                f"--output {output} is a file but {len(inputs)} images were given; give a folder"
            )
        jobs = [Job(inputs[0][0], out, inputs[0][0] in clips)]
    elif out.exists() and not out.is_dir():
        raise PlanError(f"--output {output} exists and is not a folder")
    else:
        jobs = _folder_jobs(inputs, out, ext, notes, clips)
    check_no_overwrite(jobs, [src for src, _ in inputs])
    return jobs


def _identity(path: Path) -> str:
    """A path as the filesystem sees it: links resolved, case folded where the OS folds it."""
    return os.path.normcase(os.path.realpath(path))


def _folder_jobs(
    inputs: list[tuple[Path, Path]],
    out: Path,
    ext: str | None,
    notes: list[str] | None,
    clips: set[Path] | frozenset[Path] = frozenset(),
) -> list[Job]:
    """Outputs under the folder ``out``. Inputs whose names differ but map to one output
    (``photo.gif`` and ``photo.png`` → ``photo.png``) are a ``PlanError``; the same name from
    two folders is renamed ``x-2.jpg``, … (no image is lost, and it keeps batches of flattened
    globs working), with a note."""
    natural = []
    for src, rel in inputs:
        dst = out / rel
        if src in clips:  # a video keeps its container (--ext is for images)
            dst = clip_output(dst)
        elif ext or dst.suffix.lower() not in OUTPUT_EXTENSIONS:
            dst = dst.with_suffix("." + (ext or "png"))  # gif, ppm, … become png
        natural.append((src, rel, dst))
    # An output that is an input is the worse mistake: report it before any name clash.
    check_no_overwrite([Job(src, dst) for src, _, dst in natural], [src for src, _ in inputs])
    owner: dict[str, tuple[Path, Path]] = {}  # output identity → (src, rel) of its first input
    for src, rel, dst in natural:
        first = owner.setdefault(_identity(dst), (src, rel))
        if os.path.normcase(first[1]) != os.path.normcase(rel):
            raise PlanError(f"{first[0]} and {src} would both be written to {dst}; nothing written")
    taken = set(owner) | {_identity(src) for src, _ in inputs}
    jobs, assigned = [], set()
    for src, _, base in natural:
        dst, n = base, 2
        while _identity(dst) in assigned or (dst != base and _identity(dst) in taken):
            dst = base.with_name(f"{base.stem}-{n}{base.suffix}")
            n += 1
        if dst != base and notes is not None:
            notes.append(f"{src} → {dst} ({base.name} is taken by another input of that name)")
        assigned.add(_identity(dst))
        jobs.append(Job(src, dst, src in clips))
    return jobs


def _inode(path: Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file ``path`` leads to (through links), None if none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_no_overwrite(jobs: Sequence[Job], inputs: Sequence[Path]) -> None:
    """``PlanError`` naming the files when an output is one of ``inputs``: the same path (links
    resolved, case folded where the OS does) or, for an existing output, the same file (device
    and inode: a hard link, or a symlink to an input)."""
    by_path = {_identity(p): p for p in inputs}
    by_inode = {key: p for p in inputs if (key := _inode(p)) is not None}
    problems = []
    for job in jobs:
        victim = by_path.get(_identity(job.dst))
        if victim is None and (key := _inode(job.dst)) in by_inode:
            victim = by_inode[key]
        if victim is not None:
            # Name the link when the output is not literally the input's path.
            same = os.path.normcase(os.path.abspath(job.dst)) == os.path.normcase(
                os.path.abspath(victim)
            )
            via = "" if same else f" ({job.dst} is a link to it)"
            problems.append(
                f"refusing to overwrite the input {victim} with the result of {job.src}{via}"
            )
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise PlanError(f"{problems[0]}{more}; nothing written")


def write_result(img: Image.Image, job: Job, quality: int) -> None:
    """Save (crash-safely), never over the input; alpha is kept where the format carries it."""
    # The plan was checked; this re-check guards files that changed since (a new hard link).
    check_no_overwrite([job], [job.src])
    alpha = img.getchannel("A") if img.mode == "RGBA" else None
    save_image(img.convert("RGB"), job.dst, alpha=alpha, quality=quality)


# ---------------------------------------------------------------------------------------------
# Listing models.


def _model_rows(path: Path, meta: dict) -> list[tuple[str, ...]]:
    """The rows of one model file: one per style (a multi-style file has several)."""
    return [
        (
            path.stem,
            style,
            str(meta.get("width") or "-"),
            "/".join(str(c) for c in meta.get("channels", [])),
            str(meta.get("num_residual", "?")),
            str(meta.get("dtype", "float32")),
            str(meta.get("global_step", "-")),
            f"{path.stat().st_size / 1e6:.1f}",
            str(path),
        )
        for style in style_names(meta)
    ]


def list_models(dirs: Sequence[Path]) -> list[str]:
    """One line per style of each model file in ``dirs`` (a multi-style file: one per style,
    ``--model FILE --style STYLE``): name, style, widths, dtype, steps, size, path (columns as
    wide as their longest entry). Each file is read whole: one that would fail to load (bad
    shapes, digest, weights) is listed as unreadable."""
    rows: list[tuple[str, ...]] = []
    broken: list[tuple[str, str]] = []
    for path in find_models(list(dirs)):
        try:
            reader = read_safetensors if path.suffix == ".safetensors" else read_checkpoint
            rows += _model_rows(path, reader(path)[1])
        except ModelFileError as e:
            broken.append((path.stem, str(e)))
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
# The model and its styles, checked before the model loads.


def select_model(
    spec: str, style_spec: str | None, masked: bool, dirs: Sequence[Path]
) -> ModelChoice:
    """The model file ``spec`` names (``model_io.find_style``: a file, a model name, else a
    style of a multi-style model) and the style weights for ``style_spec`` (None: the style
    ``spec`` named, else the first). Raises ``ModelFileError`` or ``StyleSpecError``, one line
    each; ``masked``: ``--style-mask`` was given."""
    path, named = find_style(spec, dirs)
    meta = read_metadata(path)
    names = style_names(meta)
    if len(names) == 1:
        _check_single_style(path, names[0], style_spec, masked)
        return ModelChoice(path, meta, None)
    if style_spec is None and masked:
        raise StyleSpecError(
            f"--style-mask paints two styles: give them with --style A,B (white: A, black: B); "
            f"{path.name} has {', '.join(names)}"
        )
    text = style_spec if style_spec is not None else named or names[0]
    try:
        return ModelChoice(path, meta, parse_style_spec(text, names, masked=masked))
    except StyleSpecError as e:
        raise StyleSpecError(f"--style {text}: {e}") from None


def _check_single_style(path: Path, name: str, style_spec: str | None, masked: bool) -> None:
    """A single-style model takes ``--style`` only when it names its one style (then it is
    run as without it); anything else is a ``StyleSpecError`` that names that style."""
    holds = f"{path.name} holds one style, {name!r}"
    if masked:
        raise StyleSpecError(f"--style-mask needs a multi-style model: {holds}")
    if style_spec is None:
        return
    try:
        parse_style_spec(style_spec, [name])
    except StyleSpecError:
        raise StyleSpecError(
            f"--style {style_spec}: {holds} (multi-style models: --list-models)"
        ) from None


# ---------------------------------------------------------------------------------------------
# Progress.


class _Progress:
    """A tqdm bar of images on stderr (none for a single image or with ``--quiet``);
    messages are written above it."""

    def __init__(self, total: int, enabled: bool):
        self.bar = tqdm(
            total=total,
            unit="img",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=not enabled or total < 2,
        )

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def message(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _batches(jobs: list[Job], size: int) -> Iterator[list[Job]]:
    for i in range(0, len(jobs), size):
        yield jobs[i : i + size]


class _MaskMisfitError(ValueError):
    """A mask that does not fit one image: ``--mask FILE: mask is … aspect ratios differ``."""


def _load(job: Job, plan: Plan, args: argparse.Namespace) -> Image.Image:
    """Decode a job's image and check that the masks fit it (``ImageReadError``,
    ``_MaskMisfitError``); before stylising, so that one misfit does not fail a whole batch."""
    img = open_image(job.src, args.max_pixels, hint=MAX_PIXELS_HINT)
    for flag, file, mask in (
        ("--mask", args.mask, plan.mask),
        ("--style-mask", args.style_mask, plan.style_mask),
    ):
        if mask is not None:
            try:
                check_mask_size(mask.size, img.size)
            except MaskSizeError as e:
                raise _MaskMisfitError(f"{flag} {file}: {e}") from None
    return img


def _engine_options(args: argparse.Namespace, plan: Plan, model: ModelChoice) -> dict:
    """The keyword arguments of ``Stylizer.stylize_image(s)`` for this run; the style ones
    only for a multi-style model (a single-style one runs exactly as before styles existed)."""
    opts = {
        "strength": args.strength,
        "preserve_color": args.preserve_color,
        "match_histogram": args.match_histogram,
        "max_size": args.max_size,
        "tile": args.tile,
        "overlap": args.overlap,
        "mask": plan.mask,
    }
    if model.style is not None:
        opts["style"] = model.style.weights
        if plan.style_mask is not None:
            opts["style_mask"] = plan.style_mask
    return opts


def run_jobs(
    stylizer: Stylizer, plan: Plan, args: argparse.Namespace, model: ModelChoice
) -> tuple[int, int]:
    """Stylise and write every job; a failing image is reported and skipped. Returns
    ``(written, failed)``."""
    opts = _engine_options(args, plan, model)
    progress = _Progress(len(plan.jobs), not args.quiet)
    written = failed = 0
    try:
        for batch in _batches(plan.jobs, args.batch_size):
            loaded: list[tuple[Job, Image.Image]] = []
            for job in batch:
                try:
                    loaded.append((job, _load(job, plan, args)))
                except ImageReadError as e:
                    progress.message(f"error: {e}")
                    failed += 1
                    progress.update()
                except _MaskMisfitError as e:
                    progress.message(f"error: {job.src}: {e}")
                    failed += 1
                    progress.update()
            results: list[Image.Image | None]
            try:
                results = list(stylizer.stylize_images([im for _, im in loaded], **opts))
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


def _clip_options(args: argparse.Namespace, plan: Plan, model: ModelChoice) -> ClipOptions:
    style = None if model.style is None else model.style.weights
    return ClipOptions(
        style=style, strength=args.strength, preserve_color=args.preserve_color,
        match_histogram=args.match_histogram, mask=plan.mask, tile=args.tile,
        overlap=args.overlap, temporal=args.temporal, momentum=args.momentum, blend=args.blend,
    )  # fmt: skip


def run_clips(
    stylizer: Stylizer, plan: Plan, args: argparse.Namespace, model: ModelChoice
) -> tuple[int, int]:
    """Stylise and write every clip job (``fast_style.video.stylize_video``: a frame bar, a
    summary line each); a clip that fails is reported on one line and skipped. Returns
    ``(written, failed)``."""
    jobs = [j for j in plan.jobs if j.clip]
    if not jobs:
        return 0, 0
    why = INSTALL_HINT if video_missing() else None
    if plan.style_mask is not None:
        why = "--style-mask paints photos; for a video give one style or a mix"
    if why:
        for job in jobs:
            print(f"error: {job.src}: {why}", file=sys.stderr)
        return 0, len(jobs)
    from fast_style.video import VideoError, stylize_video

    written = failed = 0
    for job in jobs:
        fn = ClipStylizer(stylizer, _clip_options(args, plan, model))
        try:
            job.dst.parent.mkdir(parents=True, exist_ok=True)
            report = stylize_video(
                job.src, job.dst, fn, batch=args.batch_size, crf=args.crf, codec=args.codec,
                max_size=args.max_size, progress=not args.quiet,
            )  # fmt: skip
        except (VideoError, ValueError, RuntimeError, OSError) as e:
            line = str(e).splitlines()[0] if str(e) else type(e).__name__
            where = "" if line.startswith(str(job.src)) else f"{job.src}: "
            print(f"error: {where}{line}", file=sys.stderr)
            failed += 1
            continue
        written += 1
        failed += bool(report.frames_lost)  # what decoded is written; the loss is reported
    return written, failed


def _open_mask(file: str | None, max_pixels: int) -> Image.Image | None:
    return open_image(file, max_pixels, MAX_PIXELS_HINT) if file else None


def _plan(args: argparse.Namespace) -> Plan:
    """Inputs, the checked output plan and the masks, before the model loads. Exits with
    status 2 on a usage error."""
    notes: list[str] = []
    inputs, errors = expand_inputs(args.input, notes)
    if not inputs:  # one line: the reason, or the reasons joined
        _usage_exit("; ".join(errors) or "no input images found")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    try:
        jobs = plan_outputs(inputs, args.output, args.ext, notes)
        mask = _open_mask(args.mask, args.max_pixels)
        style_mask = _open_mask(args.style_mask, args.max_pixels)
    except (ImageReadError, ValueError) as e:
        _usage_exit(str(e))
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    # Grey levels are what counts (white: the first style): L, as --mask is read.
    grey = style_mask.convert("L") if style_mask is not None else None
    return Plan(jobs, len(errors), mask, grey)


def _usage_exit(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _load_stylizer(args: argparse.Namespace, model: ModelChoice) -> Stylizer:
    """The engine for ``model`` (usage exit on a model that fails to load)."""
    try:
        stylizer = Stylizer(
            model.path,
            device=args.device,
            half=args.half or False,
            channels_last=args.channels_last,
            search_dirs=args.models_dir,
            backend=args.backend,
        )
    except (ModelFileError, ValueError) as e:
        _usage_exit(str(e))
    if stylizer.device.type == "cpu":
        tune_malloc()  # reuse freed activations across images (fast_style.infer.allocator)
        if args.half:
            print("note: --half is ignored on CPU (fp32 is faster there)", file=sys.stderr)
    return stylizer


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point. Returns 0; exits with status 1 (some images failed) or 2 (usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    dirs = model_dirs(args.models_dir)
    if args.list_models:
        print("\n".join(list_models(dirs)))
        return 0
    plan = _plan(args)
    try:
        model = select_model(args.model, args.style, args.style_mask is not None, dirs)
    except (ModelFileError, StyleSpecError) as e:
        _usage_exit(str(e))
    stylizer = _load_stylizer(args, model)
    start = time.perf_counter()
    images = Plan([j for j in plan.jobs if not j.clip], 0, plan.mask, plan.style_mask)
    try:
        written, failed = run_jobs(stylizer, images, args, model) if images.jobs else (0, 0)
        clips_written, clips_failed = run_clips(stylizer, plan, args, model)
    except KeyboardInterrupt:
        print("interrupted: nothing half-written is left under an output name", file=sys.stderr)
        return 130
    failed += plan.input_errors + clips_failed
    dt = time.perf_counter() - start
    print(_summary(written, clips_written, failed, dt, model, stylizer, plan, args))
    if failed:
        sys.exit(1)
    return 0


def _summary(
    written: int,
    clips: int,
    failed: int,
    dt: float,
    model: ModelChoice,
    stylizer: Stylizer,
    plan: Plan,
    args: argparse.Namespace,
) -> str:
    """The run's last line."""
    rate = written / dt if dt > 0 else 0.0
    where = plan.jobs[0].dst if len(plan.jobs) == 1 else Path(args.output)
    what = f"{written} image{'s' * (written != 1)}"
    has_clips = any(j.clip for j in plan.jobs)
    if has_clips:
        videos = f"{clips} video{'s' * (clips != 1)}"
        what = f"{what} and {videos}" if written else videos
    else:
        what += f" in {dt:.2f} s ({rate:.2f} images/s)"
    line = f"stylized {what} with {model.label} on {stylizer.device} [{stylizer.backend}] → {where}"
    return line + (f"; {failed} failed" if failed else "")


if __name__ == "__main__":
    sys.exit(main())
