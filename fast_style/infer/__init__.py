"""Inference: the stylizer, tiling, post-processing, the deploy form, backends and export.

Imports neither Lightning nor Hydra (a test checks ``sys.modules``).
"""
