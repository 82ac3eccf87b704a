"""``fast-style <subcommand> [args]``: one command for every tool.

Each subcommand is its module's ``main(argv)``, imported only when it runs (stylizing never
imports the training stack):

    fast-style train style=starry_night          # = python train.py …
    fast-style stylize --input photo.jpg …       # = python stylize.py …
    fast-style export --model M --output m.onnx
    fast-style gatys --content C --style S --output O
    fast-style evaluate --model M --content DIR
    fast-style serve [--port 8000]
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from fast_style import __version__

# subcommand → (module with main(argv), one line of help, extra that it needs)
COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "train": ("fast_style.train.cli", "train a style network (Hydra overrides)", "train"),
    "stylize": ("fast_style.infer.cli", "stylize photos, folders and huge images", None),
    "export": ("fast_style.infer.export", "export to ONNX, TorchScript or mobile runtimes", None),
    "gatys": ("fast_style.baseline.gatys", "the Gatys et al. optimisation baseline", "train"),
    "evaluate": ("fast_style.evaluate", "evaluate a network against Gatys", "train"),
    "serve": ("fast_style.serve.cli", "the web page and JSON API", "serve"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: fast-style <command> [args]   (fast_style {__version__})", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_, _) in COMMANDS.items()]
    lines += ["", "fast-style <command> --help shows a command's options."]
    return "\n".join(lines)


def _load(command: str):
    module, _, extra = COMMANDS[command]
    try:
        return importlib.import_module(module).main
    except ImportError as e:
        if extra is None or not getattr(e, "name", None) or "fast_style" in (e.name or ""):
            raise
        print(
            f"error: fast-style {command} needs {e.name}: pip install 'fast_style[{extra}]'",
            file=sys.stderr,
        )
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand; returns its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"fast_style {__version__}")
        return 0
    if args[0] not in COMMANDS:
        print(f"error: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    saved, sys.argv = sys.argv, [f"fast-style {args[0]}", *args[1:]]  # prog for Hydra, argparse
    try:
        status = _load(args[0])(args[1:])
    finally:
        sys.argv = saved
    return int(status or 0)


def _run(command: str) -> int:
    return main([command, *sys.argv[1:]])


# The console scripts fast-style-<command>: the same dispatch, so a missing extra is one line.
def train() -> int:
    return _run("train")


def stylize() -> int:
    return _run("stylize")


def export() -> int:
    return _run("export")


def gatys() -> int:
    return _run("gatys")


def evaluate() -> int:
    return _run("evaluate")


def serve() -> int:
    return _run("serve")


if __name__ == "__main__":
    sys.exit(main())
