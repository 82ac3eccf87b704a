"""``fast-style evaluate video --model M --input clip.mp4 [--out DIR]``: flicker, measured.

Rows: ``input`` (the floor), ``per-frame`` (the network on each frame alone), ``temporal``
(instance-norm statistics smoothed across frames, ``fast_style.infer.temporal``; one row per
``--momentum``), ``flow`` (the output blended along the input's motion,
``fast_style.video.stabilize``; one row per ``--blend``) and both together, the default of
``stylize.py`` for clips (the first momentum and the first blend). For each: E_warp of Lai et
al. 2018 with the input clip's DIS flow (``fast_style.video.metrics``), frames/s, and the
frames' content and style losses under the loss the model was trained with (rebuilt from its
metadata, as ``fast-style evaluate`` does).
Then the synthetic benchmark: camera paths over the held-out Kodak photos with exact flow.
Writes ``results.json``, ``results.md`` and ``strip.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import torch

from fast_style.baseline.evaluate import training_configs
from fast_style.infer.stylizer import Stylizer
from fast_style.infer.temporal import DEFAULT_MOMENTUM, TemporalStylizer
from fast_style.loss.criterion import style_criterion
from fast_style.train.config import ConfigError
from fast_style.video.evaluate import (
    evaluate_rows,
    identity,
    markdown,
    synthetic_benchmark,
    write_report,
)
from fast_style.video.io import VideoError
from fast_style.video.stabilize import DEFAULT_BLEND, FlowStabilizer

LossesFn = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]


def _size(text: str) -> tuple[int, int]:
    """``WxH`` → (W, H), for argparse."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WxH, e.g. 256x144") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be at least 8")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fast-style evaluate video",
        description="Warping error (flicker) of a style network on a clip: the input, "
        "per-frame stylization and temporal stabilisation, with the image losses.",
    )
    p.add_argument("--model", required=True, help="model file or style name")
    p.add_argument("--input", required=True, help="the clip (mp4, mov, mkv, webm, …)")
    p.add_argument("--out", default="outputs/video_eval", help="folder for the results")
    p.add_argument("--max-frames", type=int, metavar="N", help="only the first N frames")
    p.add_argument("--size", type=int, metavar="N", help="downscale the long side to N first")
    p.add_argument("--batch", type=int, default=4, help="frames per network call")
    p.add_argument("--device", default="auto", help="cpu, cuda, … (default: auto)")
    p.add_argument("--backend", default="auto", help="as stylize.py's --backend")
    p.add_argument(
        "--momentum", type=float, nargs="*", default=[DEFAULT_MOMENTUM],
        help=f"temporal rows, one per momentum (default {DEFAULT_MOMENTUM}; none: no row)",
    )  # fmt: skip
    p.add_argument(
        "--blend", type=float, nargs="*", default=[DEFAULT_BLEND],
        help=f"flow rows, one per blend weight (default {DEFAULT_BLEND}; none: no row)",
    )  # fmt: skip
    p.add_argument("--vgg-weights", help="VGG16 state_dict for the losses (default: the model's)")
    p.add_argument("--no-losses", action="store_true", help="skip the image losses")
    p.add_argument(
        "--synthetic-frames",
        type=int,
        default=16,
        metavar="N",
        help="frames per synthetic camera path (0: skip the synthetic benchmark)",
    )
    p.add_argument("--synthetic-size", type=_size, default=(256, 144), metavar="WxH")
    return p  # fmt: skip


def model_losses(stylizer: Stylizer, vgg_weights: str | None) -> LossesFn:
    """``(frames_in, frames_out) -> {"content", "style"}``: the mean loss terms of the frames
    under the loss the model was trained with (its first style)."""
    style, loss = training_configs(stylizer.meta, vgg_weights)
    crit, _ = style_criterion(style, loss)
    crit = crit.to(stylizer.device)

    @torch.no_grad()
    def losses(frames_in: torch.Tensor, frames_out: torch.Tensor) -> dict[str, float]:
        x, y = frames_in.to(stylizer.device), frames_out.to(stylizer.device)
        terms = crit(y, content_feats=crit.content_targets(x))
        return {k: float(terms[k]) for k in ("content", "style")}

    return losses


def _rows(
    stylizer: Stylizer, momenta: Sequence[float], blends: Sequence[float]
) -> dict[str, Callable]:
    rows: dict[str, Callable] = {"input": identity, "per-frame": stylizer.stylize_tensor}
    for m in momenta:
        rows[f"temporal (m={m:g})"] = TemporalStylizer(stylizer, momentum=m)
    for a in blends:
        rows[f"flow (α={a:g})"] = FlowStabilizer(stylizer.stylize_tensor, blend=a)
    if momenta and blends:  # stylize.py's default for clips
        m, a = momenta[0], blends[0]
        both = FlowStabilizer(TemporalStylizer(stylizer, momentum=m), blend=a)
        rows[f"temporal (m={m:g}) + flow (α={a:g})"] = both
    return rows


def run(args: argparse.Namespace) -> dict:
    stylizer = Stylizer(args.model, device=args.device, backend=args.backend)
    losses = None if args.no_losses else model_losses(stylizer, args.vgg_weights)
    rows = _rows(stylizer, args.momentum, args.blend)
    results = evaluate_rows(
        args.input, rows, batch=args.batch, max_frames=args.max_frames, size=args.size,
        losses_fn=losses,
    )  # fmt: skip
    if args.synthetic_frames:
        for row in rows.values():
            reset = getattr(row, "reset", None)
            if callable(reset):
                reset()  # a new clip
        results["synthetic"] = synthetic_benchmark(
            rows, size=args.synthetic_size, frames=args.synthetic_frames, batch=args.batch,
            losses_fn=losses,
        )  # fmt: skip
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (errors are one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        results = run(args)
        paths = write_report(results, args.out)
    except (VideoError, ConfigError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(results), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
