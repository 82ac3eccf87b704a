"""Training: Hydra config schemas, data, the Lightning system, callbacks, crash-safe checkpoints.

Needs the ``train`` extra (Lightning, Hydra, TensorBoard). Importing this package imports
nothing heavy; ``fast_style.train.cli.main`` is the ``train.py`` entry point.
"""
