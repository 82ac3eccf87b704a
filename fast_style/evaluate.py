"""``fast-style evaluate …`` / ``python -m fast_style.evaluate …``: the network against Gatys
et al. on photos (``fast_style.baseline.evaluate``); ``evaluate video …``: the warping-error
(flicker) report on a clip (``fast_style.baseline.video_eval``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fast_style.baseline.evaluate import main as photo_main  # needs the train extra


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch on the first argument; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["video"]:
        from fast_style.baseline.video_eval import main as video_main

        return video_main(args[1:])
    return photo_main(args)


if __name__ == "__main__":
    sys.exit(main())
