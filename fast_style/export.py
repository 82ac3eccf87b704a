"""``python -m fast_style.export …``: the same as ``fast-style export …``
(``fast_style.infer.export``): ONNX, TorchScript, ExecuTorch, TFLite and CoreML exports."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fast_style.infer.export import main as export_main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the export command line; returns the exit status."""
    return export_main(argv)


if __name__ == "__main__":
    sys.exit(main())
