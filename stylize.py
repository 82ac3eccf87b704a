"""Thin entry point: ``python stylize.py --model M --input IN --output OUT``
(see fast_style/infer/cli.py)."""

import sys

from fast_style.infer.cli import main

if __name__ == "__main__":
    sys.exit(main())
