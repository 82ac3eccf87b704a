"""Package data marker: the Hydra config tree, installed as ``fast_style._conf``
(see fast_style/core/resources.py)."""
