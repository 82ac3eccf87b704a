"""fast_style: fast neural style transfer (Johnson et al. 2016) with Gatys et al. as baseline."""

__version__ = "0.1.0"
