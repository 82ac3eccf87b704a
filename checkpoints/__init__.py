"""Package data marker: the shipped models, installed as ``fast_style._checkpoints`` (see fast_style/core/resources.py)."""
