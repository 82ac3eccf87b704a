"""Thin entry point: ``python stylize.py --model MODEL --input IN --output OUT`` (see fast_style/stylize.py)."""

from fast_style.stylize import main

if __name__ == "__main__":
    main()
