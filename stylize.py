"""Thin entry point: ``python stylize.py --model M --input IN --output OUT``."""

from fast_style.stylize import main

if __name__ == "__main__":
    main()
