"""nfvi: variational inference with normalizing flows, as an experiment runner.

``nfvi.run("train", ["K=10"])`` runs a job from Python (see :mod:`nfvi.api`).
"""

__version__ = "0.1.0"


def run(command, overrides=()):
    """See :func:`nfvi.api.run` (imported on first use: ``import nfvi`` stays light)."""
    from nfvi.api import run as _run

    return _run(command, overrides)
