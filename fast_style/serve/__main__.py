"""``python -m fast_style.serve``: the same as ``fast-style serve``."""

import sys

from fast_style.serve.cli import main

sys.exit(main())
