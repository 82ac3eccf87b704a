"""Thin entry point: ``python train.py style=starry_night`` (see fast_style/train/cli.py)."""

from fast_style.train.cli import main

if __name__ == "__main__":
    main()
