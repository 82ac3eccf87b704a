"""Baselines and measurement: the Gatys et al. optimisation and the evaluation harness."""
