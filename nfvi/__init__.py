"""nfvi: variational inference with normalizing flows, as an experiment runner."""

__version__ = "0.1.0"
