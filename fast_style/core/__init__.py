"""Core: images and colour, the transform network, model files, package resources, devices.

Imports nothing from the other sub-packages, and neither Lightning nor Hydra.
"""
