"""``python train.py style=starry_night [group=option …] [key=value …]``: train a style network.

The Hydra entry point: composes the config tree shipped in the package
(``fast_style.core.resources.config_dir``), validates it and runs ``fast_style.train.run.train``.
Configuration and input mistakes are one ``error: …`` line and exit status 2.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fast_style.core.imaging import ImageReadError
from fast_style.core.model_io import ModelFileError
from fast_style.core.resources import config_dir
from fast_style.loss.vgg import LossNetworkWeightsError
from fast_style.train.config import ConfigError, validate
from fast_style.train.run import train


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        settings = validate(cfg)
        train(settings, Path(HydraConfig.get().runtime.output_dir))
    except (
        ConfigError,
        LossNetworkWeightsError,
        ImageReadError,
        FileNotFoundError,
        ModelFileError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def _argv(argv: list[str] | None) -> Iterator[None]:
    saved = sys.argv
    if argv is not None:
        sys.argv = [saved[0] if saved else "train.py", *argv]
    try:
        yield
    finally:
        sys.argv = saved


def main(argv: list[str] | None = None) -> None:
    """Entry point; ``argv`` are Hydra overrides (default: ``sys.argv[1:]``)."""
    with _argv(argv):
        _hydra_main()


if __name__ == "__main__":
    main()
