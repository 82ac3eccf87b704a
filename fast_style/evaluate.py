"""``python -m fast_style.evaluate [video] …``: the evaluation reports
(``fast_style.baseline.evaluate``; ``video``: the warping-error report,
``fast_style.baseline.video_eval``), also ``fast-style evaluate``."""

import sys

from fast_style.baseline.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
