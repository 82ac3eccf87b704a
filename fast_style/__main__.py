"""``python -m fast_style <command>``: the same as ``fast-style <command>``."""

import sys

from fast_style.cli import main

sys.exit(main())
